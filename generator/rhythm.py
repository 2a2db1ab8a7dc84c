"""How a style's lines move in time and step: voices that keep sounding, tunes that run by step.

Measured against the real pieces (issue 13, `concertbot eval` and the style classifier's features), the model's
pieces kept the real ones' note lengths and onset positions but not two things a listener hears at once:
- A chorale's four voices sound almost all the time (98.5 % of the parts at an onset, 97 % of onsets with three
  or more pitch classes); the model's rest between notes (83 % and 59 %), which is a madrigal's texture, and the
  classifier took its Bach for Monteverdi.
- Reels and jigs run by step (69 % of an Irish tune's moves are a semitone or a tone); the model's lines, pulled
  to the plan's chord tones, arpeggiate (51 %), which is nearer a Scottish air (55 %).

`learn_rhythm` learns both from a style's real pieces into its card (`"rhythm"` in its form profile), and
`RhythmFollower` turns them into a soft steer, as the plan's chord tones are: pure functions of the notes so
far, so a seed still gives one piece. A card without `"rhythm"` steers nothing (the sampler as before).
Note arrays as in generator.decode.notes_array: int [N, 4] of (start, pitch, duration, program) in steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from generator.memo import Memo

if TYPE_CHECKING:  # by name only: generator.plan learns rhythm, and steering imports plan
    from generator.steering import VocabTensors

# A style whose parts rest less than this share of the time between their notes keeps every voice sounding
# (Bach 5.6 %, counting its phrase-end breaths); Palestrina (16 %) and Monteverdi (24 %) are left to the model.
LEGATO_RESTS = 0.08
SILENT_BONUS = 3.0  # logits added to a voice that has fallen silent, so that it strikes before time moves on
STEP = 2  # semitones: a move of one or two is a step, as the classifier counts them
# Logits added to a step, times the log-odds of the style's own step share (learnt over whole training pieces):
# a style that steps as often as it leaps gets nothing, Irish (57 %) about 0.27, Bach (73 %) about 1.0. Where
# voices interleave, generator.steering's interval pull answers the piece's intervals so far and takes back
# what this lean pushes past the style's steps, so it stays: medieval voices leapt 5 % with the fixed prior and
# the lean, 12 % with the pull and no lean, 10 % with both, as in its training pieces (5 pieces, critic 2).
STEP_GAIN = 1.0
MIN_STEP_SHARE = 0.5


def learn_rhythm(pieces: Iterable[np.ndarray]) -> dict[str, float]:
    """A style's rhythm profile from its real pieces' pitched notes: "rests", the share of each part's time
    from its first onset to its last note's end spent silent, pooled over the parts; "steps", the share of
    each part's melodic moves (repeated notes left out) of at most STEP semitones. Empty without notes."""
    silent = spanned = 0
    steps = moves = 0
    for notes in pieces:
        for program in np.unique(notes[:, 3]):
            part = notes[notes[:, 3] == program]
            part = part[np.lexsort((-part[:, 1], part[:, 0]))]  # by onset, the top note first
            starts, ends = part[:, 0], part[:, 0] + part[:, 2]
            covered = np.maximum.accumulate(ends)
            silent += int(np.maximum(0, starts[1:] - covered[:-1]).sum())
            spanned += int(covered[-1] - starts[0])
            _, first = np.unique(starts, return_index=True)
            melody = np.diff(part[first, 1])  # the top line: the highest note at each onset
            melody = melody[melody != 0]
            steps += int(np.sum(np.abs(melody) <= STEP))
            moves += len(melody)
    if not spanned or not moves:
        return {}
    return {"rests": round(silent / spanned, 5), "steps": round(steps / moves, 5)}


class RhythmFollower:
    """Follows a piece's notes and steers the next token towards how the style's lines move.

    Args:
        profile: the style's rhythm profile (`learn_rhythm`), empty for a card without one.
        programs: the instruments asked for (drums, -1, are left alone).
        vt: the vocabulary's tensors.
    """

    def __init__(self, profile: dict[str, Any], programs: list[int], vt: VocabTensors) -> None:
        self.vt = vt
        self.voices = sorted(p for p in set(programs) if p >= 0)
        rests = profile.get("rests")
        self.legato = rests is not None and float(rests) < LEGATO_RESTS and len(self.voices) >= 2
        share = float(profile.get("steps") or 0.0)
        self.step_bonus = STEP_GAIN * float(np.log(share / (1 - share))) if MIN_STEP_SHARE < share < 1 else 0.0
        self.ends: dict[int, int] = {}  # program -> when its latest note ends
        self.last: dict[int, tuple[int, int]] = {}  # program -> (latest onset, highest pitch struck there)
        self.struck_at = -1
        self.struck: set[int] = set()
        self.memo = Memo()  # the masks and biases below, by what they depend on

    def boundary(
        self, mask: torch.Tensor, scores: torch.Tensor, time: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At a note boundary of a legato style: time moves on no further than the next moment a voice falls
        silent, and there a silent voice that has not struck is favoured to strike."""
        if not self.legato:
            return mask, scores
        vt = self.vt
        falling = [end for end in self.ends.values() if end > time]
        if falling:
            room = min(falling) - time
            capped = mask & self.memo(("room", room), lambda: ~(vt.is_timeshift & (vt.shift_of > room)))
            mask = capped if bool((capped & vt.is_timeshift).any()) else mask
        struck = self.struck if self.struck_at == time else set()
        silent = [p for p in self.voices if self.ends.get(p, 0) <= time and p not in struck]
        if silent:
            bonus = self.memo(
                ("silent", *silent), lambda: SILENT_BONUS * torch.isin(vt.program_of, torch.tensor(silent))
            )
            scores = scores + bonus
        return mask, scores

    def pitch_bias(self, scores: torch.Tensor, program: int, time: int) -> torch.Tensor:
        """A voice's next melody note leans to a step from its last one, as much as the style steps."""
        onset, top = self.last.get(program, (-1, -1))
        if not self.step_bonus or onset < 0 or onset == time:
            return scores
        return scores + self.memo(("step", top), lambda: self._steps_from(top))

    def _steps_from(self, top: int) -> torch.Tensor:
        moves = (self.vt.pitch_of - top).abs()
        return self.step_bonus * (self.vt.is_pitch & (moves >= 1) & (moves <= STEP))

    def on_note(self, start: int, pitch: int, duration: int, program: int) -> None:
        self.ends[program] = max(self.ends.get(program, 0), start + duration)
        if start != self.struck_at:
            self.struck_at, self.struck = start, set()
        self.struck.add(program)
        onset, top = self.last.get(program, (-1, -1))
        self.last[program] = (start, max(top, pitch) if onset == start else pitch)
