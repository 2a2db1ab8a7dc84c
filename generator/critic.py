"""A critic that scores one bar of a piece, so that the sampler can write a few and keep the best (MuseNet did).

The sampler (generator.sampling) writes K candidate continuations of a bar from the same state and keeps the
one scored highest here. The critic hears what a listener or `concertbot eval` hears and the model cannot see
in its 512 tokens: whether the strong beats sound the plan's chord, whether a cadence lands, whether the voices
leap as often as the style's real voices do and avoid parallel fifths and octaves, whether the notes stay in the
key, whether every requested instrument is heard, whether onsets of three or more pitch classes make chords,
and whether the bar merely repeats the one before. Pure functions of notes: a seed still gives one piece.

Each measure is in [0, 1], 1 the best, a share shrunk towards a half when it judges few notes; a measure with
nothing to measure (no strong beat in the bar, a single line for parallels) is left out of the weighted mean
rather than counted as good or bad.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from generator import harmony, metrics
from generator.decode import Note
from generator.form_metrics import CHORDS
from generator.instruments import DRUMS
from generator.plan import STEPS_PER_BEAT, Plan, key_of
from generator.rhythm import LEGATO_RESTS

LEAP = 4  # semitones: wider melodic moves are leaps, as `concertbot eval` counts them
LEAP_TOLERANCE = 0.15  # a running leap share this far from the style's scores 0
MAX_INTERVAL = 12  # intervals as the card learns them (generator.plan.MAX_INTERVAL): wider count as an octave
# How much a bar's move of the piece's interval histogram towards the style's (its Jensen-Shannon distance
# falling) counts: a fall of 0.05 is worth the whole measure. The distance of the piece so far is the same for
# every candidate, so only the move tells them apart.
INTERVAL_GAIN = 10.0
# Shares are shrunk towards a half by this many notes' worth: the best of K candidates would otherwise be the
# sparsest, whose one or two notes more easily all hit (a measured K=4 Bach piece had 30 % fewer notes).
PRIOR_NOTES = 2.0
REPEATED_PITCH = 4  # the same pitch struck this often in a row in one voice within a bar sounds stuck
FAIR_FLOOR = 0.5  # an instrument with half its fair share of the notes or more is heard enough
# A bar whose parts are silent this much more of its time than the style's parts are (Plan.rests) scores 0:
# a chorale's soprano dropping out for half a bar of four voices is 0.07 over Bach's 6 %.
REST_TOLERANCE = 0.2
# How much each measure counts, chosen on `concertbot eval --critic 2` (6 pieces of 30 s a style of bach,
# palestrina, irish, folk against their real held-out pieces): the plan's steering already favours chord tones
# and chords (at full weight here chordal onsets overshot, 94 % against 83 %, and intervals moved by thirds);
# the key heard and the interval histogram are what it leaves to the critic.
WEIGHTS = {
    "chord_tones": 0.25,
    "cadence": 1.0,
    "ending": 2.0,
    "chordal": 0.25,
    "leaps": 0.5,
    "intervals": 1.0,
    "parallels": 0.5,
    "key": 0.5,
    "key_fit": 1.0,
    "instruments": 1.0,
    "repetition": 1.0,
    "rests": 1.0,
}
_MAJOR = frozenset({0, 2, 4, 5, 7, 9, 11})
_MINOR = frozenset({0, 2, 3, 5, 7, 8, 9, 10, 11})  # natural, harmonic and melodic minor together
KEY_MARGIN = 0.2  # a correlation this far ahead of the next key's is a key well kept
_CHORD_SETS = [frozenset((root + i) % 12 for i in chord) for root in range(12) for chord in CHORDS]


@dataclass(frozen=True)
class Setup:
    """What the critic knows of the piece before any note: its plan, key, instruments and the style's leaps.

    Args:
        plan: the piece's plan, or None (then chords and cadences are not judged).
        key: the key's name (generator.vocab.KEYS), or None for a model without keys.
        programs: the instruments asked for, as GM programs.
        leap_share: the share of melodic intervals wider than LEAP in the style's real voices; None: unknown.
        bar: steps per bar.
        pitch_classes: the style's share of each pitch class from the tonic up in its real pieces, major then
            minor (generator.plan.learn_form); None: Krumhansl and Kessler's key profiles stand in.
    """

    plan: Plan | None
    key: str | None
    programs: tuple[int, ...]
    leap_share: float | None
    bar: int
    pitch_classes: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    intervals: tuple[float, ...] | None = None  # the style's shares of melodic intervals -12..12 (its card's)


@dataclass(frozen=True)
class Context:
    """What the notes before a bar leave for judging it: each voice's last melody note, the running tallies."""

    melody: dict[int, tuple[int, int]] = field(default_factory=dict)  # program -> (latest onset, top pitch)
    leaps: int = 0
    intervals: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # program -> notes so far
    # the bar before's notes as (onset in bar, pitch, duration, program), sorted
    previous_bar: tuple[tuple[int, int, int, int], ...] = ()
    held: tuple[tuple[int, int], ...] = ()  # (end, pitch) of notes that may still sound into the bar
    pitch_classes: tuple[int, ...] = (0,) * 12  # pitched notes so far in each pitch class C..B
    interval_counts: tuple[int, ...] = (0,) * (2 * MAX_INTERVAL + 1)  # melodic intervals -12..12 so far
    sounding: tuple[tuple[int, int], ...] = ()  # (program, end) of pitched notes sounding into the bar


@dataclass(frozen=True)
class Score:
    measures: dict[str, float]

    @property
    def total(self) -> float:
        """The weighted mean of the measures taken; 0.5 when none could be."""
        weights = sum(WEIGHTS[name] for name in self.measures)
        if not weights:
            return 0.5
        return sum(WEIGHTS[name] * value for name, value in self.measures.items()) / weights


def pitch_classes(profile: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The style's major and minor pitch-class shares from its learnt form, if it has both."""
    shares = profile.get("pitch_classes") or {}
    if len(shares.get("major") or ()) != 12 or len(shares.get("minor") or ()) != 12:
        return None
    return tuple(float(x) for x in shares["major"]), tuple(float(x) for x in shares["minor"])


def interval_shares(profile: dict[str, Any]) -> tuple[float, ...] | None:
    """The style's learnt shares of melodic intervals -12..12 (generator.plan.learn_form), if it has them."""
    shares = profile.get("intervals") or ()
    return tuple(float(x) for x in shares) if len(shares) == 2 * MAX_INTERVAL + 1 else None


def leap_share(profile: dict[str, Any]) -> float | None:
    """The share of leaps in the style's learnt interval histogram (generator.plan.learn_form), if any."""
    shares = profile.get("intervals")
    if not shares:
        return None
    widest = (len(shares) - 1) // 2
    total = float(sum(shares))
    leaps = sum(float(s) for i, s in enumerate(shares) if abs(i - widest) > LEAP)
    return leaps / total if total > 0 else None


def context(notes: Sequence[Note], start: int, bar: int) -> Context:
    """The tallies of the notes before step `start` (the bar being judged starts there)."""
    melody: dict[int, tuple[int, int]] = {}
    leaps = intervals = 0
    counts: dict[int, int] = {}
    moves = [0] * (2 * MAX_INTERVAL + 1)
    for note in notes:
        counts[note.program] = counts.get(note.program, 0) + 1
        if note.program == DRUMS:
            continue
        leaps, intervals = _melody_step(melody, note, leaps, intervals, moves)
    previous = tuple(
        sorted(
            (n.start - (start - bar), n.pitch, n.duration, n.program)
            for n in notes
            if start - bar <= n.start < start
        )
    )
    held = tuple((n.end(), n.pitch) for n in notes if n.end() > start and n.program != DRUMS)
    sounding = tuple(sorted({(n.program, n.end()) for n in notes if n.end() > start and n.program != DRUMS}))
    classes = [0] * 12
    for n in notes:
        if n.program != DRUMS:
            classes[n.pitch % 12] += 1
    return Context(melody, leaps, intervals, counts, previous, held, tuple(classes), tuple(moves), sounding)


def score(setup: Setup, before: Context, bar: Sequence[Note], start: int) -> Score:
    """How well a candidate bar (its notes, starting at step `start`) follows the plan and the style."""
    pitched = [n for n in bar if n.program != DRUMS]
    tonic, minor = key_of(setup.key)
    measures: dict[str, float] = {}
    chords = _chord_tones(setup, pitched, tonic)
    if chords is not None:
        measures["chord_tones"] = chords
    cadence = _cadence(setup, pitched, start, tonic, minor)
    if cadence is not None:
        measures["cadence"] = cadence
    last = _ending(setup, pitched, start, tonic, minor)
    if last is not None:
        measures["ending"] = last
    chordal = _chordal(before, pitched)
    if chordal is not None:
        measures["chordal"] = chordal
    melody = dict(before.melody)
    leaps, intervals = before.leaps, before.intervals
    moves = list(before.interval_counts)
    for note in sorted(pitched, key=lambda n: (n.start, n.program, -n.pitch)):
        leaps, intervals = _melody_step(melody, note, leaps, intervals, moves)
    if setup.leap_share is not None and intervals > before.intervals:
        off = abs(leaps / intervals - setup.leap_share)
        measures["leaps"] = max(0.0, 1.0 - off / LEAP_TOLERANCE)
    if setup.intervals is not None and intervals > before.intervals and before.intervals > 0:
        style = np.array(setup.intervals)
        was = metrics.js_distance(np.array(before.interval_counts, dtype=np.float64), style)
        now = metrics.js_distance(np.array(moves, dtype=np.float64), style)
        measures["intervals"] = float(np.clip(0.5 + INTERVAL_GAIN * (was - now), 0.0, 1.0))
    parallels = _parallels(before, pitched)
    if parallels is not None:
        measures["parallels"] = parallels
    if setup.key is not None and pitched:
        scale = _MINOR if minor else _MAJOR
        measures["key"] = _share(sum((n.pitch - tonic) % 12 in scale for n in pitched), len(pitched))
    if setup.key is not None and pitched:
        measures["key_fit"] = _key_fit(setup, before, pitched, tonic, minor)
    instruments = _instruments(setup, before, bar)
    if instruments is not None:
        measures["instruments"] = instruments
    if bar:
        measures["repetition"] = _fresh(before, bar, start)
    rests = _rests(setup, before, pitched, start)
    if rests is not None:
        measures["rests"] = rests
    return Score(measures)


def best(scores: Sequence[Score]) -> int:
    """The index of the highest total; the first of equals, so the choice never depends on float noise order."""
    top = 0
    for i, s in enumerate(scores):
        if s.total > scores[top].total:
            top = i
    return top


def _share(hits: int, out_of: int) -> float:
    """hits / out_of, shrunk towards 0.5 by PRIOR_NOTES."""
    return (hits + 0.5 * PRIOR_NOTES) / (out_of + PRIOR_NOTES)


def _melody_step(
    melody: dict[int, tuple[int, int]], note: Note, leaps: int, intervals: int, moves: list[int]
) -> tuple[int, int]:
    """Add a note to its voice's melody (its highest note at each onset); count the interval it makes, also in
    `moves` (per interval -12..12, wider ones at the ends)."""
    onset, top = melody.get(note.program, (-1, -1))
    if onset == note.start:
        melody[note.program] = (onset, max(top, note.pitch))
        return leaps, intervals
    if onset >= 0:
        intervals += 1
        leaps += abs(note.pitch - top) > LEAP
        moves[max(-MAX_INTERVAL, min(MAX_INTERVAL, note.pitch - top)) + MAX_INTERVAL] += 1
    melody[note.program] = (note.start, note.pitch)
    return leaps, intervals


def _chord_tones(setup: Setup, pitched: Sequence[Note], tonic: int) -> float | None:
    """Share of the notes struck on a beat that are tones of the plan's chord there."""
    plan = setup.plan
    if plan is None or not plan.chords or setup.key is None:
        return None
    on_beat = [n for n in pitched if n.start % STEPS_PER_BEAT == 0]
    if not on_beat:
        return None
    hits = sum(n.pitch % 12 in harmony.chord_pitch_classes(plan.chord_at(n.start) or 0, tonic) for n in on_beat)
    return _share(hits, len(on_beat))


def _cadence(setup: Setup, pitched: Sequence[Note], start: int, tonic: int, minor: bool) -> float | None:
    """At a cadence in the bar: every instrument strikes the cadence chord, held a beat, the bass its root."""
    plan = setup.plan
    if plan is None or setup.key is None:
        return None
    due = [(t, p.cadence) for t, p in zip(plan.cadence_times(), plan.phrases, strict=True)]
    here = [(t, d) for t, d in due if start <= t < start + setup.bar]
    if not here:
        return None
    time, degree = here[0]
    tones = harmony.chord_pitch_classes(harmony.cadence_chord(degree, minor), tonic)
    struck = [n for n in pitched if n.start == time]
    voices = [p for p in setup.programs if p != DRUMS]
    if not struck or not voices:
        return 0.0
    present = len({n.program for n in struck} & set(voices)) / len(voices)
    in_chord = sum(n.pitch % 12 in tones for n in struck) / len(struck)
    held = sum(n.duration >= STEPS_PER_BEAT for n in struck) / len(struck)
    bass = min(struck, key=lambda n: n.pitch).pitch % 12 == tones[0]
    return (present + in_chord + held + bass) / 4


def _ending(setup: Setup, pitched: Sequence[Note], start: int, tonic: int, minor: bool) -> float | None:
    """At the final cadence: 1 when the lowest note is the tonic and the highest in the tonic triad, as eval
    hears an ending on the tonic (a voice crossing under the bass at the last chord would lose it)."""
    plan = setup.plan
    if plan is None or setup.key is None or not plan.phrases:
        return None
    final = plan.cadence_times()[-1]
    if not start <= final < start + setup.bar:
        return None
    struck = [n for n in pitched if n.start == final]
    if not struck:
        return 0.0
    low, high = min(n.pitch for n in struck) % 12, max(n.pitch for n in struck) % 12
    triad = {tonic % 12, (tonic + (3 if minor else 4)) % 12, (tonic + 7) % 12}
    return float(low == tonic % 12 and (len(struck) == 1 or high in triad))


def _chordal(before: Context, pitched: Sequence[Note]) -> float | None:
    """Share of the bar's onsets sounding 3+ pitch classes whose pitch classes fit one triad or seventh."""
    # Notes held into the bar count as struck before it.
    sounding = [(-1, end, p) for end, p in before.held] + [(n.start, n.end(), n.pitch) for n in pitched]
    full = fits = 0
    for onset in sorted({n.start for n in pitched}):
        pcs = frozenset(p % 12 for begin, end, p in sounding if begin <= onset < end)
        if len(pcs) >= 3:
            full += 1
            fits += any(pcs <= chord for chord in _CHORD_SETS)
    return _share(fits, full) if full else None


def _parallels(before: Context, pitched: Sequence[Note]) -> float | None:
    """1 less the share of two-voice moves into the same perfect fifth or octave (parallel fifths/octaves)."""
    onsets: dict[int, dict[int, int]] = {}  # onset -> program -> top pitch
    for n in pitched:
        voice = onsets.setdefault(n.start, {})
        voice[n.program] = max(voice.get(n.program, n.pitch), n.pitch)
    last = {p: pitch for p, (_, pitch) in before.melody.items()}
    moves = bad = 0
    for onset in sorted(onsets):
        now = onsets[onset]
        both = sorted(p for p in now if p in last)
        for i, a in enumerate(both):
            for b in both[i + 1 :]:
                if now[a] == last[a] and now[b] == last[b]:
                    continue  # neither voice moved
                moves += 1
                was, new = (last[a] - last[b]) % 12, (now[a] - now[b]) % 12
                same_way = (now[a] - last[a]) * (now[b] - last[b]) > 0
                bad += same_way and was == new and new in (0, 7)
        last.update(now)
    return _share(moves - bad, moves) if moves else None


def _key_fit(setup: Setup, before: Context, pitched: Sequence[Note], tonic: int, minor: bool) -> float:
    """How far the piece so far, with the bar, is heard in its own key rather than another: a half at a tie, 1
    a clear margin ahead. Heard as eval's key estimate hears it (correlation of note counts with each key's
    profile), with the style's own profiles, so the notes lean towards how the style uses its key rather than
    towards a textbook's (Krumhansl's pulled folk tunes' pitch classes away from folk's)."""
    counts = np.array(before.pitch_classes, dtype=np.float64)
    np.add.at(counts, [n.pitch % 12 for n in pitched], 1.0)
    spread = counts.std()
    if spread == 0:
        return 0.5
    r = _key_profiles(setup.pitch_classes) @ ((counts - counts.mean()) / spread) / 12  # [24]: each key's r
    asked = 12 * minor + tonic % 12
    margin = r[asked] - np.max(np.delete(r, asked))
    return float(np.clip(0.5 + margin / KEY_MARGIN, 0.0, 1.0))


@functools.lru_cache(maxsize=16)
def _key_profiles(shares: tuple[tuple[float, ...], tuple[float, ...]] | None) -> np.ndarray:
    """[24, 12]: each key's profile (major keys C..B, then minor), standardised for a correlation."""
    major, minor = shares if shares is not None else (tuple(metrics._MAJOR), tuple(metrics._MINOR))
    profiles = np.array(
        [np.roll(np.asarray(p, dtype=np.float64), t) for p in (major, minor) for t in range(12)]
    )
    standard: np.ndarray = (profiles - profiles.mean(axis=1, keepdims=True)) / profiles.std(
        axis=1, keepdims=True
    )
    return standard


def _instruments(setup: Setup, before: Context, bar: Sequence[Note]) -> float | None:
    """The least-heard instrument's share of the notes so far against half its fair share, capped at 1."""
    voices = sorted(set(setup.programs))
    if len(voices) < 2:
        return None
    counts = dict(before.counts)
    for n in bar:
        counts[n.program] = counts.get(n.program, 0) + 1
    total = sum(counts.values())
    if not total:
        return None
    least = min(counts.get(p, 0) for p in voices) / total
    return min(1.0, least / (FAIR_FLOOR / len(voices)))


def _rests(setup: Setup, before: Context, pitched: Sequence[Note], start: int) -> float | None:
    """1 when the bar's parts are silent no more of its time than the style's parts are (Plan.rests), falling
    to 0 at REST_TOLERANCE over it: a voice that drops out mid-phrase is heard as a hole in the texture. A part
    is counted from its first note on, so that a late entry is left to the instruments measure."""
    plan = setup.plan
    # Held only in styles whose voices keep sounding (the rhythm steer's legato ones): measured on quartets and
    # motets, whose parts rest 16-21 %, it cost a piece of ten each in recognition and moved pitch classes away.
    if plan is None or plan.rests is None or plan.rests >= LEGATO_RESTS:
        return None
    end = start + setup.bar
    silent = spanned = 0
    for program in sorted({p for p in setup.programs if p != DRUMS}):
        spans = [(start, e) for p, e in before.sounding if p == program]
        spans += [(n.start, n.end()) for n in pitched if n.program == program]
        if not spans:
            continue
        # From its first note on: the bar's start for a part already playing, else its entry.
        begin = start if before.counts.get(program) else min(s for s, _ in spans)
        covered, reach = 0, begin
        for s, e in sorted(spans):
            s, e = max(s, reach), min(e, end)
            if e > s:
                covered, reach = covered + e - s, e
        silent += end - begin - covered
        spanned += end - begin
    if not spanned:
        return None
    return float(np.clip(1.0 - max(0.0, silent / spanned - plan.rests) / REST_TOLERANCE, 0.0, 1.0))


def _fresh(before: Context, bar: Sequence[Note], start: int) -> float:
    """0 for a bar that only repeats the one before or hammers one pitch; 1 for one that moves on."""
    signature = tuple(sorted((n.start - start, n.pitch, n.duration, n.program) for n in bar))
    if signature == before.previous_bar:
        return 0.0
    runs: dict[int, tuple[int, int]] = {}
    stuck = 0
    for n in sorted(bar, key=lambda n: (n.start, n.program)):
        pitch, run = runs.get(n.program, (-1, 0))
        run = run + 1 if pitch == n.pitch else 1
        runs[n.program] = (n.pitch, run)
        stuck = max(stuck, run)
    return 0.5 if stuck >= REPEATED_PITCH else 1.0
