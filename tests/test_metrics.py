"""Music metrics on literal note arrays: (start, pitch, duration, program), times in 1/8 beats."""

from __future__ import annotations

import numpy as np
import pytest

from generator import decode
from generator.decode import Note, notes_array
from generator.form_metrics import (
    Ending,
    Recurrence,
    chordal_onset_share,
    ending,
    key_kept,
    leap_share,
    most_simultaneous,
    outer_span,
    recurrence,
    self_overlap_share,
    smallest_instrument_share,
)
from generator.instruments import DRUMS
from generator.metrics import (
    DEGENERATE_BAR_REPEAT,
    DEGENERATE_PITCH_RUN,
    MAX_INTERVAL,
    STEPS_PER_BEAT,
    interval_histogram,
    js_distance,
    loop_report,
    notes_per_second,
    pitch_class_histogram,
)

PIANO, FLUTE, CELLO = 0, 73, 42
C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
WHITE_KEYS = [0, 2, 4, 5, 7, 9, 11]


def melody(pitches: list[int], program: int = PIANO, step: int = 4, offset: int = 0) -> np.ndarray:
    """One note per `step` ticks, each lasting `step`."""
    return notes_array(Note(offset + i * step, p, step, program) for i, p in enumerate(pitches))


def repeated_bar(times: int) -> np.ndarray:
    """A four-note bar (32 ticks) played `times` times, then a different closing bar."""
    bar = [(0, 60, 8), (8, 64, 8), (16, 67, 8), (24, 72, 8)]
    notes = [Note(32 * b + s, p, d, PIANO) for b in range(times) for s, p, d in bar]
    notes.append(Note(32 * times, 48, 32, PIANO))
    return notes_array(notes)


def test_c_major_scale_uses_only_white_key_classes():
    hist = pitch_class_histogram(melody(C_MAJOR))
    assert hist.shape == (12,)
    assert hist.sum() == pytest.approx(1.0)
    assert set(np.flatnonzero(hist)) == set(WHITE_KEYS)
    assert hist[0] == pytest.approx(2 / 8)  # C appears twice, at both ends


def test_pitch_class_histogram_ignores_drums_and_is_zero_when_empty():
    drums = melody([36, 38, 42, 46], program=DRUMS)
    assert not pitch_class_histogram(drums).any()
    assert not pitch_class_histogram(notes_array([])).any()


def test_ascending_scale_intervals_are_steps_up():
    hist = interval_histogram(melody(C_MAJOR))
    assert hist.shape == (2 * MAX_INTERVAL + 1,)
    assert hist[MAX_INTERVAL + 2] == pytest.approx(5 / 7)
    assert hist[MAX_INTERVAL + 1] == pytest.approx(2 / 7)
    assert hist.sum() == pytest.approx(1.0)


def test_intervals_follow_top_note_of_chords_and_stay_within_each_voice():
    # Flute climbs in whole tones while a cello descends in whole tones at the same onsets, and the
    # flute's chords have a low note under the melody: only +2 and -2 may appear.
    flute = [Note(8 * i, p, 8, FLUTE) for i, p in enumerate([72, 74, 76, 78])]
    flute += [Note(8 * i, 60, 8, FLUTE) for i in range(4)]
    cello = [Note(8 * i, p, 8, CELLO) for i, p in enumerate([48, 46, 44, 42])]
    hist = interval_histogram(notes_array(flute + cello))
    assert hist[MAX_INTERVAL + 2] == pytest.approx(0.5)
    assert hist[MAX_INTERVAL - 2] == pytest.approx(0.5)


def test_leaps_beyond_max_interval_land_in_the_outer_bins():
    hist = interval_histogram(melody([40, 80, 40]), max_interval=12)
    assert hist[0] == pytest.approx(0.5)
    assert hist[-1] == pytest.approx(0.5)


def test_js_distance_bounds():
    p = pitch_class_histogram(melody(C_MAJOR))
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-9)
    assert js_distance(np.array([1, 1, 0, 0]), np.array([0, 0, 3, 5])) == pytest.approx(1.0)
    half = js_distance(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert 0.0 < half < 1.0
    assert half == pytest.approx(js_distance(np.array([1.0, 0.0]), np.array([1.0, 1.0])))


def test_js_distance_of_empty_histograms():
    empty = np.zeros(12)
    assert js_distance(empty, empty) == 0.0
    assert js_distance(empty, pitch_class_histogram(melody(C_MAJOR))) == 1.0


def test_metrics_use_the_decoder_time_grid():
    assert STEPS_PER_BEAT == decode.STEPS_PER_BEAT


def test_notes_per_second_on_quarter_notes():
    # Eight quarter notes fill 8 beats; at 120 quarters per minute that is 4 seconds.
    notes = melody(C_MAJOR, step=8)
    assert notes_per_second(notes, 120) == pytest.approx(2.0)
    assert notes_per_second(notes, 60) == pytest.approx(1.0)
    assert notes_per_second(notes_array([]), 120) == 0.0


def test_bar_repeated_eight_times_is_degenerate_but_seven_is_not():
    looped = loop_report(repeated_bar(DEGENERATE_BAR_REPEAT))
    assert looped.longest_bar_repeat == 8
    assert looped.degenerate
    varied = loop_report(repeated_bar(DEGENERATE_BAR_REPEAT - 1))
    assert varied.longest_bar_repeat == 7
    assert not varied.degenerate


def test_an_empty_bar_breaks_a_bar_repeat():
    notes = repeated_bar(8)
    notes[notes[:, 0] >= 4 * 32, 0] += 32  # silence bar 4
    assert loop_report(notes).longest_bar_repeat == 4


def test_voice_hammering_one_pitch_is_degenerate_but_drums_are_not():
    hammer = loop_report(melody([60] * DEGENERATE_PITCH_RUN))
    assert hammer.longest_pitch_run == 16
    assert hammer.degenerate
    assert not loop_report(melody([60] * (DEGENERATE_PITCH_RUN - 1))).degenerate
    drums = loop_report(melody([36] * DEGENERATE_PITCH_RUN, program=DRUMS))
    assert drums.longest_pitch_run == 0
    assert not drums.degenerate


def test_pitch_run_counts_within_one_program():
    # Two instruments alternating on one pitch: neither voice repeats a note more than 8 times.
    notes = np.concatenate([melody([60] * 8, PIANO, step=8), melody([60] * 8, FLUTE, step=8, offset=4)])
    assert loop_report(notes).longest_pitch_run == 8


def test_key_free_histogram_is_the_same_in_every_key():
    from generator.metrics import key_free_pitch_class_histogram, pitch_class_histogram, tonic

    scale = [0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0, 7]  # a C major tune leaning on tonic and dominant
    c_major = np.array([(i * 8, 60 + p, 8, 0) for i, p in enumerate(scale)], dtype=np.int32)
    assert tonic(pitch_class_histogram(c_major)) == 0
    for shift in (1, 5, 7, 10):
        moved = c_major.copy()
        moved[:, 1] += shift
        assert tonic(pitch_class_histogram(moved)) == shift
        np.testing.assert_allclose(
            key_free_pitch_class_histogram(moved), key_free_pitch_class_histogram(c_major)
        )


# Form and texture measures (generator.form_metrics). Bars of 32 steps are 4/4, 24 are 3/4.


def cadence(bass: int = 48, top: int = 72, at: int = 96, held: int = 32) -> np.ndarray:
    """Three bars of C major quarter notes, then a C major chord (bass and top as given) struck at `at`."""
    line = [Note(8 * i, p, 8, PIANO) for i, p in enumerate([60, 62, 64, 65, 67, 65, 64, 62, 60, 59, 62, 67])]
    chord = [Note(at, p, held, PIANO) for p in (bass, 64, 67, top)]
    return notes_array(line + chord)


def test_a_held_tonic_chord_on_a_downbeat_ends_a_piece_in_every_way():
    assert ending(cadence(), 32, 0, tonic=0, minor=False) == Ending(True, True, True)
    assert ending(notes_array([]), 32, 0, 0, False) == Ending(False, False, False)


def test_an_ending_off_the_strong_beats_is_not_on_a_downbeat():
    assert not ending(cadence(at=104), 32, 0, 0, False).on_downbeat  # beat 2 of 4/4
    assert ending(cadence(at=112), 32, 0, 0, False).on_downbeat  # the half-bar of 4/4
    assert not ending(cadence(at=108), 24, 0, 0, False).on_downbeat  # 3/4 has no half-bar
    assert ending(cadence(at=96), 24, 0, 0, False).on_downbeat  # bar 5 of 3/4


def test_a_pickup_moves_the_downbeats():
    assert ending(cadence(at=104), 32, 8, 0, False).on_downbeat
    assert not ending(cadence(at=96), 32, 8, 0, False).on_downbeat


def test_a_long_ending_lasts_a_beat_and_twice_the_median_note():
    assert not ending(cadence(held=8), 32, 0, 0, False).long  # no longer than the quarter notes before it
    assert ending(cadence(held=16), 32, 0, 0, False).long
    # Twice the median of a line of sixteenth notes, but still shorter than a beat.
    short = notes_array([Note(2 * i, 60, 2, PIANO) for i in range(16)] + [Note(32, 60, 4, PIANO)])
    assert not ending(short, 32, 0, 0, False).long


def test_an_ending_on_the_tonic_needs_the_tonic_in_the_bass_and_the_triad_on_top():
    assert not ending(cadence(bass=52), 32, 0, 0, False).on_tonic  # E in the bass: an inversion
    assert not ending(cadence(top=74), 32, 0, 0, False).on_tonic  # D on top is no chord tone
    assert ending(cadence(top=76), 32, 0, 0, False).on_tonic  # the third on top
    assert not ending(cadence(), 32, 0, 7, False).on_tonic  # in G, a C chord is the subdominant
    a_minor = notes_array([Note(0, 64, 8, PIANO), Note(8, 57, 32, PIANO), Note(8, 72, 32, PIANO)])
    assert ending(a_minor, 32, 0, 9, True).on_tonic  # C is A minor's third
    assert not ending(a_minor, 32, 0, 9, False).on_tonic  # but not A major's


def test_a_single_line_ends_on_the_tonic_itself_and_drums_after_it_do_not_count():
    tune = melody([67, 65, 64, 62, 60], step=8)
    assert ending(tune, 32, 0, 0, False).on_tonic
    assert not ending(melody([60, 62, 64, 65, 67], step=8), 32, 0, 0, False).on_tonic
    with_drums = np.concatenate([tune, notes_array([Note(44, 36, 1, DRUMS)])])
    assert ending(with_drums, 32, 0, 0, False) == ending(tune, 32, 0, 0, False)


def test_chordal_onsets_are_those_within_one_triad_or_seventh():
    notes = notes_array(
        [Note(0, p, 8, PIANO) for p in (48, 64, 67)]  # C E G
        + [Note(8, p, 8, PIANO) for p in (48, 64, 67, 70)]  # C E G Bb: a dominant seventh
        + [Note(16, p, 8, PIANO) for p in (60, 62, 64)]  # C D E: a cluster
        + [Note(24, p, 8, PIANO) for p in (60, 67)]  # an open fifth: too few pitch classes to judge
    )
    assert chordal_onset_share(notes) == pytest.approx(2 / 3)


def test_chordal_onsets_count_held_notes_and_any_root():
    held = notes_array([Note(0, 45, 32, CELLO), Note(8, 64, 8, FLUTE), Note(8, 72, 8, FLUTE)])  # A under E, C
    assert chordal_onset_share(held) == 1.0
    augmented = notes_array([Note(0, p, 8, PIANO) for p in (61, 65, 69)])  # C# F A
    assert chordal_onset_share(augmented) == 1.0
    ninth = notes_array([Note(0, p, 8, PIANO) for p in (48, 52, 55, 59, 62)])  # C E G B D
    assert chordal_onset_share(ninth) == 0.0
    assert np.isnan(chordal_onset_share(melody(C_MAJOR)))


def test_leaps_are_intervals_wider_than_over():
    tune = melody([60, 62, 64, 69, 60])  # +2 +2 +5 -9
    assert leap_share(tune) == pytest.approx(2 / 4)
    assert leap_share(tune, over=5) == pytest.approx(1 / 4)
    assert leap_share(melody([60, 64, 60])) == 0.0  # a major third is no leap
    assert np.isnan(leap_share(melody([60])))


def test_leaps_follow_each_voice_s_top_note_as_interval_counts_does():
    # The flute's chords have a low note under a stepwise tune, and the cello moves by steps too.
    flute = [Note(8 * i, p, 8, FLUTE) for i, p in enumerate([72, 74, 76, 77])]
    flute += [Note(8 * i, 48, 8, FLUTE) for i in range(4)]
    cello = [Note(8 * i, p, 8, CELLO) for i, p in enumerate([40, 38, 36, 35])]
    assert leap_share(notes_array(flute + cello)) == 0.0


def bars(*contents: int, bar: int = 32, pickup: int = 0) -> np.ndarray:
    """One bar per item: a quarter note a beat from that pitch up by semitones, or an empty bar for 0."""
    return notes_array(
        Note(pickup + bar * b + 8 * i, first + i, 8, PIANO)
        for b, first in enumerate(contents)
        if first
        for i in range(bar // 8)
    )


def test_a_two_bar_phrase_that_returns_recurs():
    assert recurrence(bars(60, 70, 60, 70), 32, 0) == Recurrence(True, 2)
    assert recurrence(bars(60, 70, 80, 60, 70, 80, 50), 32, 0) == Recurrence(True, 3)
    assert recurrence(bars(60, 70, 65, 60, 75), 32, 0) == Recurrence(False, 1)  # one bar comes back
    assert recurrence(bars(60, 70, 62, 72), 32, 0) == Recurrence(False, 0)  # transposed is not the same


def test_a_recurrence_never_overlaps_itself():
    # One bar looped four times: bars 1-2 come back as bars 3-4, but no three bars come back whole.
    assert recurrence(bars(60, 60, 60, 60), 32, 0) == Recurrence(True, 2)
    assert recurrence(bars(60, 60, 60, 60), 32, 0, bars=3) == Recurrence(False, 2)


def test_empty_bars_never_recur_and_drums_are_left_out():
    assert recurrence(bars(60, 0, 60, 0), 32, 0) == Recurrence(False, 1)
    assert recurrence(bars(60, 70, 0, 60, 70), 32, 0) == Recurrence(True, 2)
    groove = notes_array(Note(8 * i, 36 + i % 2, 4, DRUMS) for i in range(32))
    assert recurrence(groove, 32, 0) == Recurrence(False, 0)
    assert recurrence(notes_array([]), 32, 0) == Recurrence(False, 0)


def test_recurring_passages_are_aligned_to_the_downbeats():
    # Bars of 3/4 after a pickup of one beat: the phrase returns from the downbeat of bar 3.
    piece = np.concatenate([melody([55], step=8), bars(60, 70, 60, 70, bar=24, pickup=8)])
    assert recurrence(piece, 24, 8) == Recurrence(True, 2)
    # Counted from step 0 in 4/4 instead, the bars cut the phrase where it does not repeat.
    assert not recurrence(piece, 32, 0).recurs


def test_key_kept_compares_the_estimated_key_with_the_asked_one():
    tune = melody([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60, 67, 60])
    assert key_kept(tune, 0, False)
    assert not key_kept(tune, 0, True)
    assert not key_kept(tune, 7, False)
    assert key_kept(tune + np.array([0, 2, 0, 0]), 2, False)  # the same tune in D
    assert not key_kept(notes_array([]), 0, False)
    assert not key_kept(melody([36, 38], program=DRUMS), 0, False)


def test_smallest_instrument_share_is_the_quietest_requested_part():
    notes = np.concatenate([melody([60, 62, 64]), melody([72], FLUTE), melody([36], program=DRUMS)])
    assert smallest_instrument_share(notes, [PIANO, FLUTE]) == pytest.approx(1 / 5)
    assert smallest_instrument_share(notes, [PIANO, DRUMS, PIANO]) == pytest.approx(1 / 5)
    assert smallest_instrument_share(notes, [PIANO]) == pytest.approx(3 / 5)
    assert smallest_instrument_share(notes, [PIANO, FLUTE, CELLO]) == 0.0  # the cello never plays
    assert smallest_instrument_share(notes_array([]), [PIANO]) == 0.0


def test_most_simultaneous_counts_held_notes_but_not_touching_ones():
    notes = notes_array(
        [Note(0, 36, 32, CELLO)]
        + [Note(0, p, 8, PIANO) for p in (60, 64, 67)]
        + [Note(8, p, 8, PIANO) for p in (62, 65)]
        + [Note(0, 42, 64, DRUMS)]
    )
    assert most_simultaneous(notes) == 4
    assert most_simultaneous(melody(C_MAJOR)) == 1  # each note ends as the next begins
    assert most_simultaneous(notes_array([])) == 0


def test_outer_span_is_how_far_apart_the_highest_and_lowest_parts_sing():
    duet = np.concatenate([melody([72, 74, 76, 79], FLUTE), melody([48, 50, 55], CELLO)])
    assert outer_span(duet) == 25.0  # the flute's median 75 over the cello's 50
    with_drums = np.concatenate([duet, melody([35, 38], DRUMS)])
    assert outer_span(with_drums) == 25.0  # a drum's pitch is a kit piece, not a register
    assert np.isnan(outer_span(melody(C_MAJOR)))


def test_self_overlap_counts_notes_held_into_their_own_program_s_next_onset():
    legato = notes_array([Note(0, 60, 10, FLUTE), Note(8, 62, 8, FLUTE), Note(16, 64, 8, FLUTE)])
    assert self_overlap_share(legato) == pytest.approx(1 / 2)  # the last note has no next one
    chords = notes_array([Note(s, p, 8, PIANO) for s in (0, 8) for p in (60, 64, 67)])
    assert self_overlap_share(chords) == 0.0  # struck together is not overlapping
    # A cello held under the flute's next note overlaps another program, not its own.
    duet = notes_array([Note(0, 72, 16, FLUTE), Note(16, 74, 8, FLUTE), Note(8, 48, 16, CELLO)])
    assert self_overlap_share(duet) == 0.0
    assert np.isnan(self_overlap_share(melody([60])))
