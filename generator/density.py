"""How many notes each instrument strikes at once and in a bar, learnt from a style's real pieces.

Left alone, the model can pile notes on one instrument far past anything written for it: a classical request
for trumpet and piano at 154 BPM wrote bars of over 300 notes, 250 of them the trumpet's, twelve at an onset,
and composed barely faster than it plays. Real music never does that. `learn_density` reads, per style and
instrument, the most notes it strikes at one onset and in one bar (a high percentile, so that one odd chord
in a thousand does not set the limit), kept in the model card with the style's form; `DensityLimits` says what
a requested instrument may strike, falling back to what the style's instruments of the same role do (a line,
a chordal instrument, drums) when the style's pieces never play it, and to fixed figures for a card that
learnt none. The sampler's voice leading (generator.voice_leading) keeps each instrument to them.

Note arrays as in generator.decode.notes_array: int [N, 4] of (start, pitch, duration, program) in steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from generator.instruments import DRUMS, PROGRAMS

STEPS_PER_BEAT = 8
QUANTILE = 0.99  # the limits leave out the busiest 1 % of a style's onsets and bars
MIN_ONSETS = 100  # fewer onsets of an instrument in a style say too little: its role's figures stand in
# Instruments that play chords in their own part (a keyboard's two staves are one instrument in the data).
CHORDAL = frozenset({0, 6, 19, 24, 46, 48})  # piano, harpsichord, organ, guitar, harp, string ensemble
# For a card without learnt figures, or a role the style never plays: (notes at one onset, notes per beat).
# A line plays a double stop at most and sixteenths; a chordal part four-note chords in eighths; a kit a
# kick, a snare and a hat or two in sixteenths.
FALLBACK = {"line": (2, 4.0), "chordal": (4, 8.0), "drums": (4, 8.0)}
TEXTURE = -2  # stands for all of a piece's pitched parts together while counting


def role(program: int) -> str:
    """What a program plays in a texture: "drums", "chordal" (chords in its own part) or "line"."""
    if program == DRUMS:
        return "drums"
    return "chordal" if program in CHORDAL else "line"


def _counts(notes: np.ndarray, bar: int, pickup: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per program: notes at each of its onsets, and notes per beat in each bar it plays in."""
    out = {}
    beats = bar / STEPS_PER_BEAT
    for program in np.unique(notes[:, 3]):
        starts = notes[notes[:, 3] == program, 0]
        _, at_onset = np.unique(starts, return_counts=True)
        _, in_bar = np.unique((starts - pickup) // bar, return_counts=True)
        out[int(program)] = (at_onset, in_bar / beats)
    return out


def learn_density(pieces: Iterable[tuple[np.ndarray, int, int]]) -> dict[str, Any]:
    """A style's density limits from its real pieces, each (note array, steps per bar, pickup steps).

    Returns plain data for the model card: "programs" ({program: {"onset": notes, "beat": notes}}: the
    QUANTILE of its notes at one of its onsets and of its notes per beat over the bars it plays in, for each
    program with MIN_ONSETS onsets or more), "roles" (the same pooled over the style's programs of each
    role, for an instrument the style's pieces do not play) and "texture" (the same for all its pitched parts
    together: what one chordal instrument may carry when it plays the whole texture, as a piano asked for
    alone must).
    """
    onsets: dict[int, list[np.ndarray]] = {}
    bars: dict[int, list[np.ndarray]] = {}
    for notes, bar, pickup in pieces:
        if len(notes) == 0:
            continue
        for program, (at_onset, per_beat) in _counts(notes, bar, pickup).items():
            onsets.setdefault(program, []).append(at_onset)
            bars.setdefault(program, []).append(per_beat)
        pitched = notes[notes[:, 3] != DRUMS].copy()
        pitched[:, 3] = TEXTURE
        for program, (at_onset, per_beat) in _counts(pitched, bar, pickup).items():
            onsets.setdefault(program, []).append(at_onset)
            bars.setdefault(program, []).append(per_beat)

    def limits(found: list[int]) -> dict[str, Any] | None:
        at_onset = np.concatenate([a for p in found for a in onsets[p]]) if found else np.zeros(0)
        if len(at_onset) < MIN_ONSETS:
            return None
        per_beat = np.concatenate([b for p in found for b in bars[p]])
        high = float(np.quantile(per_beat, QUANTILE))
        return {"onset": int(np.quantile(at_onset, QUANTILE, method="higher")), "beat": round(high, 2)}

    played = [p for p in sorted(onsets) if p != TEXTURE]
    programs = {str(p): lim for p in played if (lim := limits([p])) is not None}
    roles = {}
    for name in FALLBACK:
        lim = limits([p for p in played if role(p) == name])
        if lim is not None:
            roles[name] = lim
    return {"programs": programs, "roles": roles, "texture": limits([TEXTURE] if TEXTURE in onsets else [])}


def chordal_share(pieces: Iterable[tuple[np.ndarray, int, int]]) -> float | None:
    """The mean over a style's pieces of their chordal-onset share (form_metrics.chordal_onset_share, as eval
    measures it); None when no piece sounds three pitch classes at once."""
    from generator.form_metrics import chordal_onset_share

    shares = [chordal_onset_share(notes) for notes, _, _ in pieces if len(notes)]
    found = [x for x in shares if not math.isnan(x)]
    return round(float(np.mean(found)), 3) if found else None


@dataclass(frozen=True)
class DensityLimits:
    """Per program: the most notes it may strike at one onset and in one bar of `bar` steps.

    Args:
        learnt: a style's `learn_density` figures, or None for a card without them (the fallback for all).
        bar: steps per bar of the pieces sampled.
    """

    onset: Mapping[int, int]
    per_bar: Mapping[int, int]
    bar: int

    @classmethod
    def of(cls, learnt: Mapping[str, Any] | None, bar: int) -> DensityLimits:
        learnt = learnt or {}
        programs, roles = learnt.get("programs") or {}, learnt.get("roles") or {}
        texture = learnt.get("texture")
        onset, per_bar = {}, {}
        for program in PROGRAMS:
            found = programs.get(str(program)) or roles.get(role(program))
            most, beat = (found["onset"], found["beat"]) if found else FALLBACK[role(program)]
            if texture and role(program) == "chordal":
                # A keyboard, harp or guitar may carry the whole texture: a piano asked for alone plays all
                # the voices, even in a style whose pieces gave it one.
                most, beat = max(most, texture["onset"]), max(beat, texture["beat"])
            onset[program] = max(1, int(most))
            per_bar[program] = max(onset[program], math.ceil(float(beat) * bar / STEPS_PER_BEAT))
        return cls(onset, per_bar, bar)

    def share_by(self, program: int, time: int) -> int:
        """Notes `program` may have struck in the bar so far, counting one at `time`: its bar's limit spread
        over the bar half a bar ahead, so that a part that runs ahead rests later in the bar rather than
        spending the whole bar's notes in its first beat, while a quick run on the downbeat stays free."""
        ahead = min(self.bar, time % self.bar + self.bar // 2)
        return max(1, math.ceil(self.per_bar.get(program, 1) * ahead / self.bar))


def spent(
    limits: DensityLimits,
    at_onset: Mapping[int, tuple[int, int]],
    in_bar: Mapping[int, tuple[int, int]],
    time: int,
) -> list[int]:
    """Programs that have struck their share: as many notes at `time` as they may at one onset, or as many in
    its bar as `DensityLimits.share_by` allows so far.

    Args:
        at_onset: per program, (its latest onset, notes it struck there).
        in_bar: per program, (the bar of its latest note, notes it struck in that bar).
    """
    bar = time // limits.bar
    out = []
    for program in sorted(set(at_onset) | set(in_bar)):
        onset, struck = at_onset.get(program, (-1, 0))
        index, played = in_bar.get(program, (-1, 0))
        if program not in limits.onset:
            continue
        if (onset == time and struck >= limits.onset[program]) or (
            index == bar and played >= limits.share_by(program, time)
        ):
            out.append(program)
    return out


__all__ = ["CHORDAL", "DensityLimits", "learn_density", "role", "spent"]
