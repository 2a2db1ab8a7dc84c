"""Form and texture measures for `concertbot eval`: how a piece ends, what its chords are, whether it repeats.

Note arrays as in `generator.metrics`: int [N, 4] of (start, pitch, duration, program), times in steps of 1/8
beat. A bar is `bar_steps` steps and its downbeats fall at `pickup + k * bar_steps`. Drums are left out of
every measure here but `smallest_instrument_share`: their pitches name kit pieces and their durations are
nominal, so they make neither chords, leaps, recurring phrases nor held notes.

Measures with nothing to measure (no chordal onset, no melodic interval) are nan rather than 0, so that a
mean over pieces (`np.nanmean`) skips them instead of reading a single line as "never chordal".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from generator import harmony
from generator.metrics import (
    DURATION,
    PITCH,
    PROGRAM,
    START,
    STEPS_PER_BEAT,
    _checked,
    _pitched,
    interval_counts,
    key,
    pitch_class_histogram,
)

# Intervals above the root of each chord whose pitch-class set a chordal onset may fill: the four triads
# (major, minor, diminished, augmented) and five sevenths (dominant, major, minor, half- and fully diminished).
CHORDS = (
    (0, 4, 7),
    (0, 3, 7),
    (0, 3, 6),
    (0, 4, 8),
    (0, 4, 7, 10),
    (0, 4, 7, 11),
    (0, 3, 7, 10),
    (0, 3, 6, 10),
    (0, 3, 6, 9),
)


def _chord_masks() -> np.ndarray:
    masks = {sum(1 << (root + i) % 12 for i in chord) for chord in CHORDS for root in range(12)}
    return np.array(sorted(masks), dtype=np.int64)


_CHORD_MASKS = _chord_masks()
# For each of the 4096 pitch-class sets (bit c = pitch class c), whether it lies within one chord.
_FITS_A_CHORD = np.array([bool(np.any((m & ~_CHORD_MASKS) == 0)) for m in range(4096)])


@dataclass(frozen=True)
class Ending:
    """How a piece ends: where its last onset falls, how long it rings, and on what."""

    on_downbeat: bool  # the last onset is on a downbeat, or on the half-bar of a bar of an even number of beats
    long: bool  # the last onset's longest note lasts a beat and twice the piece's median note or more
    on_tonic: bool  # the last onset's bass is the tonic and its top in the tonic triad (a lone note: the tonic)


def ending(notes: np.ndarray, bar_steps: int, pickup: int, tonic: int, minor: bool) -> Ending:
    """Whether a piece ends as a cadence does: on a strong beat, held, on the tonic chord.

    Args:
        notes: note array [N, 4]; drums are left out.
        bar_steps: steps per bar (32 for 4/4, 24 for 3/4 and 6/8, 16 for 2/4).
        pickup: steps before the first downbeat; 0 for a piece that starts on one.
        tonic: pitch class of the piece's key, 0 = C.
        minor: whether the key is minor, which decides the third of the tonic triad.

    Returns:
        An Ending, all False for a piece without pitched notes. The last onset is the latest start of any
        pitched note, which is the last onset of the outer voices too. A bar of 24 steps counts three beats,
        so 6/8 has no half-bar here, as 3/4 has none.
    """
    if bar_steps <= 0:
        raise ValueError(f"a bar must last at least one step, got bar_steps={bar_steps}")
    notes = _pitched(_checked(notes))
    if len(notes) == 0:
        return Ending(False, False, False)
    last = int(notes[:, START].max())
    struck = notes[notes[:, START] == last]
    on_downbeat = bool(strong_beats(np.array([last]), bar_steps, pickup)[0])
    held = int(struck[:, DURATION].max())
    long = held >= STEPS_PER_BEAT and held >= 2 * float(np.median(notes[:, DURATION]))
    low, high = int(struck[:, PITCH].min()) % 12, int(struck[:, PITCH].max()) % 12
    triad = {tonic % 12, (tonic + (3 if minor else 4)) % 12, (tonic + 7) % 12}
    on_tonic = low == tonic % 12 and (len(struck) == 1 or high in triad)
    return Ending(bool(on_downbeat), bool(long), bool(on_tonic))


def strong_beats(times: np.ndarray, bar_steps: int, pickup: int) -> np.ndarray:
    """bool per time: on a downbeat, or on the half-bar of a bar of an even number of beats (not 3/4, 6/8)."""
    into_bar = (times - pickup) % bar_steps
    even_beats = bar_steps % (2 * STEPS_PER_BEAT) == 0
    strong: np.ndarray = (into_bar == 0) | (even_beats & (into_bar == bar_steps // 2))
    return strong


def is_strong_beat(time: int, bar_steps: int) -> bool:
    """`strong_beats` for one time of a piece that starts on a downbeat, as the sampler asks it per note."""
    into_bar = time % bar_steps
    return into_bar == 0 or (bar_steps % (2 * STEPS_PER_BEAT) == 0 and 2 * into_bar == bar_steps)


# Styles written before the tritone over the bass was a chord tone (a dominant seventh's inversions): in a
# motet or a trecento piece it is a clash on a strong beat, in a chorale or a quartet it is harmony.
TRITONE_CLASHES = frozenset({"medieval", "josquin", "palestrina", "monteverdi"})


def clashes(pitches: Iterable[int], tritone: bool = False) -> bool:
    """Whether notes sounding together clash: two a minor second, a major seventh or either an octave or more
    wider apart; with `tritone`, a note a tritone (or a compound one) above the lowest."""
    heard = sorted(set(pitches))
    classes = {p % 12 for p in heard}
    if any((pc + 1) % 12 in classes for pc in classes):
        return True
    return tritone and bool(heard) and any((p - heard[0]) % 12 == 6 for p in heard)


def strong_beat_clash_counts(
    notes: np.ndarray, bar_steps: int, pickup: int, tritone: bool = False
) -> tuple[int, int]:
    """(judged, clashing): the strong-beat onsets sounding two or more pitch classes, and those that clash."""
    if bar_steps <= 0:
        raise ValueError(f"a bar must last at least one step, got bar_steps={bar_steps}")
    notes = _pitched(_checked(notes))
    onsets = np.unique(notes[:, START])
    strong = onsets[strong_beats(onsets, bar_steps, pickup)]
    starts, ends = notes[:, START], notes[:, START] + notes[:, DURATION]
    judged = clashing = 0
    for time in strong.tolist():
        pitches = notes[(starts <= time) & (ends > time), PITCH].tolist()
        if len({p % 12 for p in pitches}) >= 2:
            judged += 1
            clashing += clashes(pitches, tritone)
    return judged, clashing


def strong_beat_clash_share(notes: np.ndarray, bar_steps: int, pickup: int, tritone: bool = False) -> float:
    """Share of the strong-beat onsets (as `ending` counts them) whose sounding notes clash (`clashes`).

    A note sounds at an onset when struck there or still held, so a suspension held over the bar line counts,
    as a listener hears it. Only onsets sounding two or more pitch classes are judged: nan for a single line.
    """
    judged, clashing = strong_beat_clash_counts(notes, bar_steps, pickup, tritone)
    return clashing / judged if judged else float("nan")


def _sounding_pitch_classes(notes: np.ndarray, times: np.ndarray) -> np.ndarray:
    """bool [len(times), 12]: which pitch classes sound at each time (a note sounds over [start, end))."""
    out = np.zeros((len(times), 12), dtype=bool)
    for pc in range(12):
        mine = notes[notes[:, PITCH] % 12 == pc]
        starts = np.sort(mine[:, START])
        ends = np.sort(mine[:, START] + mine[:, DURATION])
        out[:, pc] = np.searchsorted(starts, times, side="right") > np.searchsorted(ends, times, side="right")
    return out


def chordal_onset_share(notes: np.ndarray) -> float:
    """Share of the onsets sounding 3+ pitch classes whose pitch classes lie within one triad or seventh chord.

    A pitch class sounds at an onset when a note of it is struck there or still held. Any root counts, and a
    set may leave chord tones out (C-E-B lies within Cmaj7). nan when no onset sounds three pitch classes,
    as in a single line.
    """
    notes = _pitched(_checked(notes))
    onsets = np.unique(notes[:, START])
    sounding = _sounding_pitch_classes(notes, onsets)
    full = sounding.sum(axis=1) >= 3
    if not full.any():
        return float("nan")
    masks = sounding[full].astype(np.int64) @ (1 << np.arange(12))
    return float(_FITS_A_CHORD[masks].mean())


def leap_share(notes: np.ndarray, over: int = 4) -> float:
    """Share of melodic intervals wider than `over` semitones; nan when no voice has two onsets.

    Intervals are those of `generator.metrics.interval_counts`: each program is a voice and its melody its
    highest note at each onset. The default leaves steps and thirds in and counts fourths and wider.
    """
    if over < 0:
        raise ValueError(f"a leap is wider than a non-negative interval, got over={over}")
    # Clipped at over + 1, the two outer bins hold exactly the intervals wider than `over`.
    counts = interval_counts(notes, max_interval=over + 1)
    total = counts.sum()
    return float((counts[0] + counts[-1]) / total) if total else float("nan")


@dataclass(frozen=True)
class Recurrence:
    """Whether a passage comes back: the phrase and section repeats real music is built of."""

    recurs: bool  # some passage of the asked number of bars comes back later, not overlapping itself
    longest_bars: int  # the most consecutive bars that come back so; 0 when none does


def _bar_ids(notes: np.ndarray, bar_steps: int, pickup: int) -> np.ndarray:
    """An id per bar from the first to the last with an onset, equal for equal bars; -1 for an empty bar.

    A bar is the notes that start in it, as (onset within the bar, pitch, duration, program); the steps
    before the first downbeat are bar -1.
    """
    bars: dict[int, list[tuple[int, ...]]] = {}
    for start, pitch, duration, program in notes.tolist():
        bar, into = divmod(start - pickup, bar_steps)
        bars.setdefault(bar, []).append((into, pitch, duration, program))
    first, last = min(bars, default=0), max(bars, default=-1)
    names: dict[tuple[tuple[int, ...], ...], int] = {}
    ids = [
        names.setdefault(tuple(sorted(bars[b])), len(names)) if b in bars else -1
        for b in range(first, last + 1)
    ]
    return np.array(ids, dtype=np.int64)


def recurrence(notes: np.ndarray, bar_steps: int, pickup: int, bars: int = 2) -> Recurrence:
    """Whether some `bars` consecutive bars come back exactly later in the piece, and the longest that do.

    Args:
        notes: note array [N, 4]; drums are left out, as a drum groove recurs by nature.
        bar_steps: steps per bar.
        pickup: steps before the first downbeat; passages are aligned to the downbeats.
        bars: the passage length that `recurs` asks about.

    Returns:
        A Recurrence. Passages are compared bar by bar by the notes that start in them, so a return must
        keep the rhythm, pitches, durations and instruments; a transposed or varied return does not count.
        The return starts at least the passage's length later, never overlapping it (one bar looped four
        times is a two-bar passage that recurs, not a four-bar one). An empty bar, silent or only held over,
        matches nothing.
    """
    if bar_steps <= 0 or bars < 1:
        raise ValueError(f"need bar_steps > 0 and bars >= 1, got bar_steps={bar_steps}, bars={bars}")
    ids = _bar_ids(_pitched(_checked(notes)), bar_steps, pickup)
    longest = 0
    # Bars `lag` apart that agree in a run of r bars make a passage of min(r, lag) bars that comes back.
    for lag in range(1, len(ids)):
        same = (ids[:-lag] == ids[lag:]) & (ids[lag:] >= 0)
        longest = max(longest, min(_longest_true_run(same), lag))
    return Recurrence(longest >= bars, longest)


def as_played(notes: np.ndarray, sections: Iterable[tuple[int, int, bool]], bar_steps: int) -> np.ndarray:
    """The notes as a performance plays them: each section the score repeats played twice, what follows it
    later by as much.

    Args:
        notes: note array [N, 4].
        sections: (start, end, repeated) in steps, in score order (generator.corpus.Form's, in steps); a note
            before the first or after the last belongs to it.
        bar_steps: steps per bar. A repeat moves the music by whole bars, so that its bar lines stay where
            they were (a strain whose last bar is written full as well as its pickup still lines up).
    """
    notes = _checked(notes)
    sections = sorted(sections)
    if not any(repeated for _, _, repeated in sections):
        return notes
    starts = np.array([start for start, _, _ in sections])
    which = np.clip(np.searchsorted(starts, notes[:, START], side="right") - 1, 0, len(sections) - 1)
    out, later = [], 0
    for i, (start, end, repeated) in enumerate(sections):
        mine = notes[which == i]
        length = max(1, round((end - start) / bar_steps)) * bar_steps
        for again in range(2 if repeated else 1):
            moved = mine.copy()
            moved[:, START] += later + again * length
            out.append(moved)
        later += length if repeated else 0
    played: np.ndarray = np.concatenate(out)
    return played


def _longest_true_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def key_kept(notes: np.ndarray, tonic: int, minor: bool) -> bool:
    """Whether the piece's estimated key (`generator.metrics.key`) is the asked one; False without pitches."""
    histogram = pitch_class_histogram(notes)
    return bool(histogram.any()) and key(histogram) == (tonic % 12, bool(minor))


# The chords of a key (generator.harmony states above its tonic): major's seven; minor's natural and harmonic.
_DIATONIC = {
    False: {harmony.state(d, q) for d, q in ((0, 0), (2, 1), (4, 1), (5, 0), (7, 0), (9, 1), (11, 2))},
    True: {
        harmony.state(d, q)
        for d, q in ((0, 1), (2, 2), (3, 0), (5, 1), (7, 0), (7, 1), (8, 0), (10, 0), (11, 2))
    },
}


@dataclass(frozen=True)
class Harmony:
    """How a piece's chords move, span by span as generator.harmony hears them."""

    fifth_moves: float  # of the chord changes, the share whose root moves a fourth or fifth; nan: none
    diatonic: float  # share of spans on a chord of the key; nan: no span
    changes_per_bar: float


def harmony_of(notes: np.ndarray, bar: int, pickup: int, tonic: int, minor: bool) -> Harmony:
    """The chords a listener hears in the piece: whether they move as tonal music does (roots by fourths and
    fifths: V-I, ii-V), stay in the key, and how often they change."""
    chords = harmony.recognise(_pitched(_checked(notes)), bar, pickup, tonic, minor)
    if not chords:
        return Harmony(float("nan"), float("nan"), float("nan"))
    changes = [(a, b) for a, b in pairwise(chords) if a != b]
    fifths = [(harmony.degree_of(b) - harmony.degree_of(a)) % 12 in (5, 7) for a, b in changes]
    per_bar = bar / harmony.span_steps(bar)
    return Harmony(
        float(np.mean(fifths)) if fifths else float("nan"),
        float(np.mean([c in _DIATONIC[bool(minor)] for c in chords])),
        len(changes) / max(1.0, len(chords) / per_bar),
    )


def smallest_instrument_share(notes: np.ndarray, programs: Iterable[int]) -> float:
    """The smallest share of all the piece's notes (drums too) that one of `programs` plays.

    A program that plays no note gives 0.0, as does a piece with no notes; nan when `programs` is empty.
    An even quartet scores 0.25; a piano concerto whose orchestra only accompanies scores far less.
    """
    notes = _checked(notes)
    wanted = sorted(set(programs))
    if not wanted:
        return float("nan")
    if len(notes) == 0:
        return 0.0
    return min(float(np.mean(notes[:, PROGRAM] == p)) for p in wanted)


def most_simultaneous(notes: np.ndarray) -> int:
    """The most pitched notes sounding at once (a note sounds over [start, end)); 0 for none."""
    notes = _pitched(_checked(notes))
    starts = np.sort(notes[:, START])
    ends = np.sort(notes[:, START] + notes[:, DURATION])
    # The count only rises at an onset, so its maximum is at one.
    sounding = np.searchsorted(starts, starts, side="right") - np.searchsorted(ends, starts, side="right")
    return int(sounding.max(initial=0))


def outer_span(notes: np.ndarray) -> float:
    """Semitones between where the highest-lying part sings and where the lowest does (each program's median
    pitch); nan for fewer than two pitched programs. Parts huddled in one register read low: a four-part
    chorale or motet opening spans 15-20, a quartet's about 20."""
    notes = _pitched(_checked(notes))
    medians = [float(np.median(notes[notes[:, PROGRAM] == p, PITCH])) for p in np.unique(notes[:, PROGRAM])]
    return max(medians) - min(medians) if len(medians) >= 2 else float("nan")


def self_overlap_share(notes: np.ndarray) -> float:
    """Share of notes still sounding when their program's next onset comes; nan when no note has a next one.

    Counted over the pitched notes that some later note of their program follows. Notes struck together
    (a chord in one instrument) are one onset, so a chord never overlaps itself; an accompaniment holding a
    bass under a moving tune in one program does overlap.
    """
    notes = _pitched(_checked(notes))
    followed = overlapping = 0
    for program in np.unique(notes[:, PROGRAM]):
        voice = notes[notes[:, PROGRAM] == program]
        onsets = np.unique(voice[:, START])
        after = np.searchsorted(onsets, voice[:, START], side="right")
        has_next = after < len(onsets)
        next_onset = onsets[after[has_next]]
        ends = voice[has_next, START] + voice[has_next, DURATION]
        followed += int(has_next.sum())
        overlapping += int((ends > next_onset).sum())
    return overlapping / followed if followed else float("nan")
