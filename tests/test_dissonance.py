"""Strong-beat clashes (generator.form_metrics.strong_beat_clash_share): the harsh harmony a listener hears."""

from __future__ import annotations

import math

import numpy as np

from generator.decode import Note, notes_array
from generator.evaluate import form_summary, piece_form
from generator.form_metrics import TRITONE_CLASHES, is_strong_beat, strong_beat_clash_share, strong_beats

PIANO, FLUTE, CELLO = 0, 73, 42
BAR = 32  # 4/4: downbeats at 0, 32, ...; half-bars at 16, 48, ...


def chords(*sonorities: tuple[int, ...], every: int = 16) -> np.ndarray:
    """One chord (its pitches) struck every `every` steps, each held until the next."""
    return notes_array([Note(i * every, p, every, PIANO) for i, chord in enumerate(sonorities) for p in chord])


def test_minor_seconds_and_major_sevenths_on_strong_beats_clash_in_any_octave():
    assert strong_beat_clash_share(chords((48, 64, 67), (48, 60, 71)), BAR, 0) == 0.5  # C-E-G, then C-C-B
    assert strong_beat_clash_share(chords((48, 61)), BAR, 0) == 1.0  # a minor ninth
    assert strong_beat_clash_share(chords((60, 62, 67)), BAR, 0) == 0.0  # a major second is no clash here
    assert strong_beat_clash_share(chords((48, 55, 64, 70)), BAR, 0) == 0.0  # a dominant seventh


def test_only_strong_beats_count_and_a_pickup_moves_them():
    # C major on the downbeat, C-Db on beat 2 (step 8), which is weak in 4/4.
    passing = chords((48, 64, 67), (48, 61), every=8)
    assert strong_beat_clash_share(passing, BAR, 0) == 0.0
    assert strong_beat_clash_share(passing, BAR, 8) == 1.0  # a pickup of a beat makes step 8 the downbeat
    # 3/4 has no half-bar: its step 12 is weak, 6/8's too, as `ending` hears them.
    half = chords((48, 64, 67), (48, 61), every=12)
    assert strong_beat_clash_share(half, 24, 0) == 0.0


def test_a_note_held_over_the_bar_line_clashes_with_what_is_struck_there():
    # A suspension: the flute holds C over the bar line while the cello moves from A down to B under it.
    held = notes_array([Note(0, 60, 48, FLUTE), Note(0, 45, 32, CELLO), Note(32, 47, 16, CELLO)])
    assert strong_beat_clash_share(held, BAR, 0) == 0.5  # A-C on the first downbeat, B-C on the second


def test_the_tritone_over_the_bass_clashes_only_where_asked():
    diminished = chords((59, 65, 74))  # B-F-D: a tritone over the bass, no semitone
    assert strong_beat_clash_share(diminished, BAR, 0) == 0.0
    assert strong_beat_clash_share(diminished, BAR, 0, tritone=True) == 1.0
    upper = chords((50, 59, 65))  # D-B-F: the tritone lies between upper voices, not over the bass
    assert strong_beat_clash_share(upper, BAR, 0, tritone=True) == 0.0
    assert {"palestrina", "medieval"} <= TRITONE_CLASHES and "bach" not in TRITONE_CLASHES


def test_a_single_line_and_drums_have_nothing_to_clash():
    line = notes_array([Note(8 * i, 60 + i, 8, FLUTE) for i in range(8)])
    assert math.isnan(strong_beat_clash_share(line, BAR, 0))
    drums = notes_array([Note(0, 60, 8, FLUTE), Note(0, 61, 8, -1)])  # a kit piece a semitone off
    assert math.isnan(strong_beat_clash_share(drums, BAR, 0))


def test_eval_reports_the_clashes_per_piece_and_per_style():
    clash, clean = chords((48, 60, 71)), chords((48, 64, 67))
    forms = [piece_form(n, n, BAR, 0, (0, False), [PIANO]) for n in (clash, clean)]
    assert [f.strong_beat_clashes for f in forms] == [1.0, 0.0]
    assert form_summary(forms)["strong_beat_clashes"] == 0.5
    tritone = chords((59, 65, 74))
    assert piece_form(tritone, tritone, BAR, 0, (0, False), [PIANO], tritone=True).strong_beat_clashes == 1.0


def test_the_sampler_s_strong_beat_is_eval_s():
    times = np.arange(0, 200)
    for bar in (16, 24, 32, 36, 48):
        assert [is_strong_beat(int(t), bar) for t in times] == strong_beats(times, bar, 0).tolist()
