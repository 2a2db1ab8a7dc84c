"""Harmony: the chord each stretch of a piece sounds, learnt progressions, and a chord plan drawn by the seed.

A listener hears harmony as chords that move with purpose: a reel outlines I and V a bar each, a chorale
changes chord every beat and walks to its cadences by fifths. The model alone writes notes that fit what
already sounds (so its onsets are chords) but wander from one chord to any other. Here each style's real
pieces teach which chords it uses in a key and which follows which, span by span (half a 4/4 bar, a bar of
3/4 or 6/8), and `draw_chords` draws a chain of them for a piece's plan that starts on the tonic and arrives
at every phrase's cadence chord, as a composer sketches a progression before writing the parts.

Chords are named by their root in semitones above the tonic and their quality (major, minor, diminished):
state = 3 * degree + quality. Recognition is template matching over the pitch classes sounding in a span,
weighted by how long they sound, the bass and the downbeat counting more; a tie (a lone melody note) goes to
the key's primary chords, as a listener's ear resolves an implied harmony.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import numpy as np

MAJOR, MINOR, DIMINISHED = 0, 1, 2
QUALITY_TRIADS = ((0, 4, 7), (0, 3, 7), (0, 3, 6))
QUALITY_MARK = ("", "m", "o")
STATES = 36
MIN_STATE_SHARE = 0.01  # a chord a style sounds in under 1 % of its spans is a misreading, not its language
SMOOTHING = 0.5  # counts added to every move between kept chords: a move never heard is rare, not impossible
BASS_WEIGHT = 0.5  # extra weight, in the span's total, of the lowest note sounding at the span's start
DOWNBEAT_WEIGHT = 0.5  # extra weight of notes struck on the span's first step
NON_CHORD_PENALTY = 0.6  # a pitch class outside the triad counts against it this much
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: its dominant is major, as cadences make it
# Tie-breakers, as shares of a span's weight: the key's primary chords, then its other diatonic ones.
_PRIOR_MAJOR = {0 * 3 + MAJOR: 0.06, 7 * 3 + MAJOR: 0.05, 5 * 3 + MAJOR: 0.04}
_PRIOR_MINOR = {0 * 3 + MINOR: 0.06, 7 * 3 + MAJOR: 0.05, 5 * 3 + MINOR: 0.04}
_ROMAN = ("I", "bII", "II", "bIII", "III", "IV", "#IV", "V", "bVI", "VI", "bVII", "VII")


def span_steps(bar: int) -> int:
    """Steps per planned chord: half a bar of four beats (or of two half notes), else a whole bar."""
    return bar // 2 if bar >= 32 and bar % 16 == 0 else bar


def state(degree: int, quality: int) -> int:
    return 3 * (degree % 12) + quality


def degree_of(chord: int) -> int:
    return chord // 3


def chord_pitch_classes(chord: int, tonic: int) -> tuple[int, ...]:
    """The chord's pitch classes, its root first."""
    root = (tonic + degree_of(chord)) % 12
    return tuple((root + i) % 12 for i in QUALITY_TRIADS[chord % 3])


def cadence_chord(degree: int, minor: bool) -> int:
    """The chord the key builds on a cadence's root: the scale's third and fifth above it (harmonic minor)."""
    scale = _MINOR_SCALE if minor else _MAJOR_SCALE
    third = 4 if (degree + 4) % 12 in scale else 3
    fifth = 7 if (degree + 7) % 12 in scale else 6
    return state(degree, MAJOR if third == 4 else (MINOR if fifth == 7 else DIMINISHED))


def roman(chord: int) -> str:
    """A chord as a listener reads it under a score: "V", "ii" for minor, "vii°" for diminished."""
    name = _ROMAN[degree_of(chord)]
    if chord % 3 == MAJOR:
        return name
    return name.lower() + ("o" if chord % 3 == DIMINISHED else "")


def _templates() -> np.ndarray:
    """[STATES, 12] of +1 for a state's pitch classes above the tonic C, -penalty elsewhere."""
    out = np.full((STATES, 12), -NON_CHORD_PENALTY)
    for chord in range(STATES):
        out[chord, list(chord_pitch_classes(chord, 0))] = 1.0
    return out


_TEMPLATES = _templates()


def recognise(
    notes: np.ndarray, bar: int, pickup: int, tonic: int, minor: bool, end: int | None = None
) -> list[int]:
    """The chord of each span of a piece (note array [N, 4] of start, pitch, duration, program; no drums), as
    states above `tonic`; a span where nothing sounds keeps the chord before it (the tonic at the start).

    Spans are `span_steps(bar)` long from the first downbeat at `pickup`; a pickup's notes join the first span.
    """
    span = span_steps(bar)
    if len(notes) == 0:
        return []
    starts, pitches, ends = notes[:, 0], notes[:, 1], notes[:, 0] + notes[:, 2]
    last = int(ends.max()) if end is None else end
    prior = np.zeros(STATES)
    for chord, share in (_PRIOR_MINOR if minor else _PRIOR_MAJOR).items():
        prior[chord] = share
    out: list[int] = []
    previous = state(0, MINOR if minor else MAJOR)
    downbeat = pickup % span
    edges = [0, *range(downbeat + span, last, span)] if downbeat else list(range(0, last, span))
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else max(last, lo + 1)
        overlap = np.minimum(ends, hi) - np.maximum(starts, lo)
        here = overlap > 0
        if not here.any():
            out.append(previous)
            continue
        weight = np.zeros(12)
        pcs = (pitches[here] - tonic) % 12
        np.add.at(weight, pcs, overlap[here].astype(np.float64))
        total = weight.sum()
        struck = here & (starts == lo)
        if struck.any():
            np.add.at(weight, (pitches[struck] - tonic) % 12, DOWNBEAT_WEIGHT * total / struck.sum())
        at_start = here & (starts <= lo)
        if at_start.any():
            weight[(int(pitches[at_start].min()) - tonic) % 12] += BASS_WEIGHT * total
        scores = _TEMPLATES @ weight + prior * weight.sum()
        previous = int(np.argmax(scores))
        out.append(previous)
    return out


def learn_harmony(pieces: Iterable[tuple[np.ndarray, int, int, int, bool]]) -> dict[str, Any]:
    """A style's chords and their moves from its real pieces: (notes, bar, pickup, tonic, minor) each.

    Returns plain card data per mode ("major", "minor"): "chords" (the states it uses, commonest first),
    "moves" (counts of each kept chord followed by each, span to span, a chord held counted as a move to
    itself) and "spans" (how many spans were read).
    """
    counts = {"major": np.zeros(STATES), "minor": np.zeros(STATES)}
    moves = {"major": np.zeros((STATES, STATES)), "minor": np.zeros((STATES, STATES))}
    for notes, bar, pickup, tonic, minor in pieces:
        chords = recognise(notes, bar, pickup, tonic, minor)
        mode = "minor" if minor else "major"
        np.add.at(counts[mode], chords, 1)
        for a, b in pairwise(chords):
            moves[mode][a, b] += 1
    out = {}
    for mode in ("major", "minor"):
        total = counts[mode].sum()
        if total == 0:
            continue
        kept = [
            int(c)
            for c in np.argsort(-counts[mode], kind="stable")
            if counts[mode][c] >= MIN_STATE_SHARE * total
        ]
        out[mode] = {
            "chords": kept,
            "moves": [[int(moves[mode][a, b]) for b in kept] for a in kept],
            "spans": int(total),
        }
    return out


def _transitions(profile: dict[str, Any], minor: bool, needed: Iterable[int]) -> tuple[list[int], np.ndarray]:
    """The style's chords in a mode (with the ones a plan needs) and the probability of each move."""
    learnt = profile.get("minor" if minor else "major") or {}
    chords = list(learnt.get("chords") or [])
    for chord in needed:
        if chord not in chords:
            chords.append(chord)
    counts = np.full((len(chords), len(chords)), SMOOTHING)
    for i, row in enumerate(learnt.get("moves") or []):
        counts[i, : len(row)] += np.asarray(row, dtype=np.float64)
    return chords, counts / counts.sum(axis=1, keepdims=True)


def draw_chords(
    profile: dict[str, Any],
    minor: bool,
    spans: int,
    pins: dict[int, int],
    rng: np.random.Generator,
    before: int | None = None,
) -> list[int]:
    """A chain of `spans` chords, one per span, drawn from the style's moves (a Markov chain learnt by
    `learn_harmony`), keeping the pinned ones (span -> chord: the phrases' cadences, a returning section's
    chords, the opening tonic) and following on from the chord `before` span 0, if any.

    Each chord is weighed by the chance that the learnt moves still reach the next pin in the spans left:
    so a cadence is prepared as the style prepares it (V before I in a reel, a chain of fifths in a
    chorale) rather than jumped to.
    """
    extra = {*pins.values(), *([before] if before is not None else [])}
    chords, move = _transitions(profile, minor, extra)
    index = {c: i for i, c in enumerate(chords)}
    n = len(chords)
    # reach[t] = how likely the chain meets every pin after t from each chord at t (scaled per step).
    reach = np.ones((spans, n))
    for t in range(spans - 2, -1, -1):
        ahead = reach[t + 1].copy()
        if t + 1 in pins:
            only = np.zeros(n)
            only[index[pins[t + 1]]] = ahead[index[pins[t + 1]]]
            ahead = only
        reach[t] = move @ ahead
        reach[t] /= max(reach[t].max(), 1e-300)
    out: list[int] = []
    for t in range(spans):
        if t in pins:
            out.append(index[pins[t]])
            continue
        came = out[-1] if out else (index[before] if before is not None else None)
        weights = reach[t] * (move[came] if came is not None else 1.0)
        out.append(int(rng.choice(n, p=weights / weights.sum())))
    return [chords[i] for i in out]


__all__ = [
    "cadence_chord",
    "chord_pitch_classes",
    "draw_chords",
    "learn_harmony",
    "recognise",
    "roman",
    "span_steps",
]
