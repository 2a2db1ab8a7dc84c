"""Music metrics for `concertbot eval`: histograms, distances, loop detection and key finding.

The style classifier built on them is generator.style_classifier.

Every function takes a note array as made by `generator.decode.notes_array`: int [N, 4] of
(start, pitch, duration, program), times in ticks of 1/8 beat, program DRUMS (-1) for percussion.
Drum "pitches" name kit pieces rather than notes, so pitch-based measures leave drums out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from generator.instruments import DRUMS

START, PITCH, DURATION, PROGRAM = range(4)
# The same grid as generator.decode; importing it from there would drag miditok and torch into eval.
STEPS_PER_BEAT = 8

DEGENERATE_BAR_REPEAT = 8  # eight identical bars in a row is a stuck loop, not a repeated phrase
DEGENERATE_PITCH_RUN = 16  # a melody rarely strikes one pitch this often without moving

MAX_INTERVAL = 12


def _checked(notes: np.ndarray) -> np.ndarray:
    notes = np.asarray(notes)
    if notes.ndim != 2 or notes.shape[1] != 4:
        raise ValueError(f"expected a note array of shape [N, 4], got shape {notes.shape}")
    return notes.astype(np.int64, copy=False)


def _pitched(notes: np.ndarray) -> np.ndarray:
    pitched: np.ndarray = notes[notes[:, PROGRAM] != DRUMS]
    return pitched


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts))


def _longest_run(values: Sequence[object]) -> int:
    best = run = 0
    previous: object = None
    for value in values:
        run = run + 1 if run and value == previous else 1
        best = max(best, run)
        previous = value
    return best


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """Share of pitched notes in each pitch class C..B (float [12]); all zeros when there are none."""
    pitches = _pitched(_checked(notes))[:, PITCH]
    return _normalised(np.bincount(pitches % 12, minlength=12).astype(np.float64))


def _melody(voice: np.ndarray) -> np.ndarray:
    """Pitches of the highest note at each onset of one voice, in time order."""
    order = np.lexsort((-voice[:, PITCH], voice[:, START]))
    starts, pitches = voice[order, START], voice[order, PITCH]
    first_at_onset = np.ones(len(starts), dtype=bool)
    first_at_onset[1:] = starts[1:] != starts[:-1]
    onsets: np.ndarray = pitches[first_at_onset]
    return onsets


def interval_histogram(notes: np.ndarray, max_interval: int = MAX_INTERVAL) -> np.ndarray:
    """Share of melodic intervals in semitones, from -max_interval to +max_interval.

    Args:
        notes: note array [N, 4].
        max_interval: larger leaps are counted in the outermost bins.

    Returns:
        float [2 * max_interval + 1], index `max_interval` being the repeated note; all zeros when no pitched
        voice has two onsets. Each program is one voice whose melody is its highest note at each onset, so
        chords and other instruments never produce intervals.
    """
    return _normalised(interval_counts(notes, max_interval))


def interval_counts(notes: np.ndarray, max_interval: int = MAX_INTERVAL) -> np.ndarray:
    """How many times each melodic interval occurs: `interval_histogram` before normalising."""
    notes = _pitched(_checked(notes))
    counts = np.zeros(2 * max_interval + 1)
    for program in np.unique(notes[:, PROGRAM]):
        steps = np.diff(_melody(notes[notes[:, PROGRAM] == program]))
        counts += np.bincount(np.clip(steps, -max_interval, max_interval) + max_interval, minlength=len(counts))
    return counts


LENGTH_BINS = 14  # note lengths in half-octave bins: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96 steps, longer


def length_bin(steps: np.ndarray) -> np.ndarray:
    """Each length's bin (`LENGTH_BINS`): a half-octave apart, so a dotted note has a bin of its own."""
    bins: np.ndarray = np.clip(np.floor(2 * np.log2(np.maximum(steps, 1))).astype(np.int64), 0, LENGTH_BINS - 1)
    return bins


def length_counts(notes: np.ndarray) -> np.ndarray:
    """How many pitched notes last each length (`length_bin`): the rhythm a line's durations make."""
    notes = _pitched(_checked(notes))
    return np.bincount(length_bin(notes[:, DURATION]), minlength=LENGTH_BINS).astype(np.float64)


def length_histogram(notes: np.ndarray) -> np.ndarray:
    """Share of pitched notes in each length bin; all zeros without notes."""
    return _normalised(length_counts(notes))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance between two histograms, in [0, 1] (base-2 logarithms).

    Args:
        p: non-negative weights; normalised here, so raw counts are fine.
        q: the same length as `p`.

    Returns:
        0.0 for identical distributions, 1.0 for disjoint ones. An all-zero histogram (a piece with no notes
        of that kind) is 0.0 from another all-zero one and 1.0 from anything else, so an empty piece scores
        as far as possible from a real one.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"histograms must be 1-D and of one length, got shapes {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("histograms must not have negative entries")
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return 0.0 if p_total == q_total else 1.0
    p, q = p / p_total, q / q_total
    m = (p + q) / 2

    def kl_to_m(a: np.ndarray) -> float:
        # 0 * log 0 is 0; where a > 0, m > 0 too, so no division by zero.
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    divergence = (kl_to_m(p) + kl_to_m(q)) / 2
    # Rounding can push the divergence a hair outside [0, 1].
    return float(np.sqrt(min(1.0, max(0.0, divergence))))


def notes_per_second(notes: np.ndarray, tempo_bpm: float) -> float:
    """Notes (drums included) per second from first onset to last release, at `tempo_bpm` quarters a minute."""
    notes = _checked(notes)
    if len(notes) == 0:
        return 0.0
    span = int((notes[:, START] + notes[:, DURATION]).max() - notes[:, START].min())
    seconds = span / STEPS_PER_BEAT * 60.0 / tempo_bpm
    return len(notes) / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class LoopReport:
    """How stuck a piece sounds: the longest exact bar repeat and the longest single-pitch run."""

    longest_bar_repeat: int  # consecutive identical non-empty bars
    longest_pitch_run: int  # consecutive notes of one pitch within one pitched program
    degenerate: bool  # either run reached its DEGENERATE_* threshold


def loop_report(notes: np.ndarray, bar_steps: int = 4 * STEPS_PER_BEAT) -> LoopReport:
    """Find the loops a sampler falls into: one bar copied over and over, or one note struck over and over.

    Args:
        notes: note array [N, 4].
        bar_steps: ticks per bar; the default is a 4/4 bar.

    Returns:
        A LoopReport. Bars are compared by the notes that start in them (onset within the bar, pitch,
        duration, program), so a bar of only held notes is empty and breaks a run. Drums repeat by nature
        and are left out of the pitch run, but do count in bar signatures.
    """
    notes = _checked(notes)
    bars: dict[int, list[tuple[int, ...]]] = {}
    for start, pitch, duration, program in notes.tolist():
        bars.setdefault(start // bar_steps, []).append((start % bar_steps, pitch, duration, program))
    bar_repeat = run = 0
    previous: list[tuple[int, ...]] = []
    for bar in range(min(bars, default=0), max(bars, default=-1) + 1):
        signature = sorted(bars.get(bar, []))
        run = (run + 1 if signature == previous else 1) if signature else 0
        bar_repeat = max(bar_repeat, run)
        previous = signature

    pitched = _pitched(notes)
    pitch_run = 0
    for program in np.unique(pitched[:, PROGRAM]):
        voice = pitched[pitched[:, PROGRAM] == program]
        order = np.lexsort((voice[:, PITCH], voice[:, START]))
        pitch_run = max(pitch_run, _longest_run(voice[order, PITCH].tolist()))

    degenerate = bar_repeat >= DEGENERATE_BAR_REPEAT or pitch_run >= DEGENERATE_PITCH_RUN
    return LoopReport(bar_repeat, pitch_run, degenerate)


# Krumhansl-Kessler key profiles (major, minor), tonic first.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def key(histogram: np.ndarray) -> tuple[int, bool]:
    """The key that best fits a pitch-class histogram (Krumhansl-Schmuckler): (tonic pitch class, minor)."""
    if not np.any(histogram):
        return 0, False
    best, best_r = (0, False), -np.inf
    for minor, profile in ((False, _MAJOR), (True, _MINOR)):
        for shift in range(12):
            r = float(np.corrcoef(np.roll(profile, shift), histogram)[0, 1])
            if r > best_r:
                best, best_r = (shift, minor), r
    return best


def tonic(histogram: np.ndarray) -> int:
    """The pitch class of the key that best fits a pitch-class histogram."""
    return key(histogram)[0]


def key_free_pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """The pitch-class histogram rotated so its estimated tonic comes first: the same in every key."""
    histogram = pitch_class_histogram(notes)
    return np.roll(histogram, -tonic(histogram))
