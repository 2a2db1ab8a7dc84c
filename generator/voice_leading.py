"""How each style's voices move and where they sing, learnt from its real pieces, and the sampling rule built
from them.

A small model writes the odd leap a style never makes: real Palestrina voices never leap a tritone, a sixth
down or a seventh, yet the shipped model's Palestrina openings did, in about one interval in twelve. And it
lets an instrument wander over its whole range where the style keeps it in a narrower one (a reel's flute never
goes below middle C). The data says which leaps a style's voices take and what register each instrument keeps
in that style (kept in the model card with the style's other defaults); sampling then never offers a voice a
pitch outside that register, nor one whose leap from its previous note that style's real voices (almost) never
make. Leaps are measured as `metrics.interval_histogram` measures them: each program is a voice, and its melody
is its highest note at each onset, so the notes of a chord are free among themselves. It also keeps each
instrument to the notes a style's real parts strike at once and in a bar (generator.density).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generator import metrics
from generator.decode import Note, decode, notes_array
from generator.density import DensityLimits, spent
from generator.instruments import DRUMS
from generator.memo import Memo
from generator.vocab import Vocab

MAX_LEAP = 24  # wider leaps count as this wide: two octaves either way
MIN_SHARE = 0.0005  # a leap rarer than one in 2,000 of a style's real intervals is not offered
MAX_PIECES = 400  # training pieces read per style, spread over the style: enough to meet every common leap
REGISTER_SHARE = 0.005  # an instrument's register in a style leaves out its lowest and highest 0.5 % of notes
MIN_REGISTER_NOTES = 200  # fewer notes of an instrument in a style say too little: its whole range is allowed


def learn_voices(dataset_dir: Path, vocab: Vocab) -> dict[str, dict[str, Any]]:
    """Per style: "leaps", the melodic leaps in semitones (clipped to ±MAX_LEAP) its real training voices take,
    and "registers", the lowest and highest pitch of each instrument (a program, as a string) in its pieces."""
    from generator.data import read_index  # training only: the data set's modules are no part of playing

    tokens = np.load(dataset_dir / "tokens.npy", mmap_mode="r")
    rows = [r for r in read_index(dataset_dir) if r["split"] == "train" and r["length"] > 0]
    out: dict[str, dict[str, Any]] = {}
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        counts = np.zeros(2 * MAX_LEAP + 1)
        pitches: dict[int, list[np.ndarray]] = {}
        for row in mine[:: max(1, len(mine) // MAX_PIECES)][:MAX_PIECES]:
            notes = notes_array(decode(vocab, tokens[row["offset"] : row["offset"] + row["length"]].tolist()))
            counts += metrics.interval_counts(notes, MAX_LEAP)
            for program in np.unique(notes[:, metrics.PROGRAM]):
                played = notes[notes[:, metrics.PROGRAM] == program, metrics.PITCH]
                pitches.setdefault(int(program), []).append(played)
        registers = {}
        for program, found in sorted(pitches.items()):
            played = np.concatenate(found)
            if program != DRUMS and len(played) >= MIN_REGISTER_NOTES:
                low, high = np.quantile(played, [REGISTER_SHARE, 1 - REGISTER_SHARE], method="nearest")
                registers[str(program)] = [int(low), int(high)]
        out[style] = {"registers": registers}
        if counts.sum() > 0:
            kept = np.flatnonzero(counts / counts.sum() >= MIN_SHARE)
            out[style]["leaps"] = [int(i) - MAX_LEAP for i in kept]
    return out


class VoiceLeading:
    """Follows each voice's melody while a piece is sampled and says which pitches it may take next.

    Args:
        leaps: the style's leaps (`learn_voices`), or None for no rule on leaps (a card from before they were
            learnt, or a request that turns the rule off).
        registers: per program, the lowest and highest pitch it plays in the style; a program not in it keeps
            its whole range.
        pitch_of: per token id, the MIDI pitch it stands for, or -1 for a token that is not a pitch.
        density: the most notes each program may strike at one onset and in a bar; None for no limit.
    """

    def __init__(
        self,
        leaps: Sequence[int] | None,
        registers: Mapping[int, tuple[int, int]],
        pitch_of: torch.Tensor,
        density: DensityLimits | None = None,
    ) -> None:
        self.pitch_of = pitch_of
        self.density = density
        self.not_pitch = pitch_of < 0
        # Built once: `allowed` runs before every pitch sampled.
        self.in_register = {
            program: self.not_pitch | ((pitch_of >= low) & (pitch_of <= high))
            for program, (low, high) in registers.items()
        }
        self.ok: torch.Tensor | None = None
        if leaps is not None:
            taken = set(leaps)
            self.ok = torch.tensor([max(-MAX_LEAP, min(MAX_LEAP, d)) in taken for d in range(-127, 128)])
        # program -> (latest onset, highest pitch there, highest pitch at the onset before)
        self.voices: dict[int, tuple[int, int, int | None]] = {}
        # program -> (latest onset, pitches it struck there): one key is not struck twice at once. The model,
        # left alone, could strike the same pitch on one instrument ten times at an onset, bar after bar (a
        # trumpet and piano piece at 154 BPM reached 358 notes in a bar, 155 of them one A).
        # Frozen sets: a critic's candidate forks this dict (sampling._forked), and must leave the original be.
        self.struck: dict[int, tuple[int, frozenset[int]]] = {}
        self.in_bar: dict[int, tuple[int, int]] = {}  # program -> (bar of its latest note, notes in that bar)
        self.memo = Memo()  # `allowed`'s masks by what they depend on

    def on_note(self, note: Note) -> None:
        at, pitches = self.struck.get(note.program, (-1, frozenset()))
        self.struck[note.program] = (note.start, (pitches if at == note.start else frozenset()) | {note.pitch})
        if self.density is not None:
            bar = note.start // self.density.bar
            index, played = self.in_bar.get(note.program, (-1, 0))
            self.in_bar[note.program] = (bar, played + 1 if index == bar else 1)
        onset, top, before = self.voices.get(note.program, (-1, -1, None))
        if note.start == onset:
            self.voices[note.program] = (onset, max(top, note.pitch), before)
        else:
            self.voices[note.program] = (note.start, note.pitch, top if onset >= 0 else None)

    def spent(self, time: int) -> list[int]:
        """Programs that may strike no more at `time`: their most notes at one onset, or their bar's share."""
        if self.density is None:
            return []
        at_onset = {p: (at, len(pitches)) for p, (at, pitches) in self.struck.items()}
        return spent(self.density, at_onset, self.in_bar, time)

    def allowed(self, program: int, time: int) -> torch.Tensor | None:
        """Token mask for the pitch of `program`'s next note, starting at `time`; None when anything goes."""
        at, pitches = self.struck.get(program, (-1, frozenset()))
        struck = pitches if at == time else None
        leap = None if program == DRUMS else self._leap_from(program, time)
        if struck is None and (program == DRUMS or (leap is None and program not in self.in_register)):
            return None
        return self.memo((program, struck, leap), lambda: self._allowed(program, struck, leap))

    def _allowed(
        self, program: int, struck: frozenset[int] | None, leap: tuple[int, int | None] | None
    ) -> torch.Tensor:
        """`allowed`'s mask, for a voice that struck `struck` at this onset (None: nothing yet) and leaps from
        `leap` (`_leap_from`); at least one of them, or a register, limits it."""
        parts = [] if program == DRUMS else [m for m in [self.in_register.get(program)] if m is not None]
        if struck is not None:
            parts.append(~torch.isin(self.pitch_of, torch.tensor(sorted(struck))))
        if leap is not None:
            parts.append(self.not_pitch | self._leap(*leap))
        return functools.reduce(operator.and_, parts)

    def _leap_from(self, program: int, time: int) -> tuple[int, int | None] | None:
        """What a note at `time` leaps from: (the voice's melody note, None) at a new onset, (the top so far,
        the melody note before) for another note at this onset; None where no leap is ruled."""
        if self.ok is None or program not in self.voices:
            return None
        onset, top, before = self.voices[program]
        if time != onset:
            return top, None
        return None if before is None else (top, before)

    def _leap(self, top: int, before: int | None) -> torch.Tensor:
        assert self.ok is not None
        if before is None:
            return self.ok[(self.pitch_of - top).clamp(-127, 127) + 127]
        # Another note at this onset: below the top it is harmony; above, it becomes the melody's new note.
        return (self.pitch_of <= top) | self.ok[(self.pitch_of - before).clamp(-127, 127) + 127]
