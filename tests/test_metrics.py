"""Music metrics on literal note arrays: (start, pitch, duration, program), times in 1/8 beats."""

from __future__ import annotations

import numpy as np
import pytest

from generator import decode
from generator.decode import Note, notes_array
from generator.instruments import DRUMS
from generator.metrics import (
    DEGENERATE_BAR_REPEAT,
    DEGENERATE_PITCH_RUN,
    FEATURES,
    MAX_INTERVAL,
    STEPS_PER_BEAT,
    StyleClassifier,
    features,
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


def test_features_shape_and_key_sensitivity():
    scale = melody(C_MAJOR)
    up_a_tone = scale.copy()
    up_a_tone[:, 1] += 2
    f, g = features(scale, 120), features(up_a_tone, 120)
    assert f.shape == g.shape == (FEATURES,)
    assert np.isfinite(f).all()
    assert not np.allclose(f[:12], g[:12])  # the key is kept, not transposed away
    assert np.allclose(f[12:37], g[12:37])  # intervals do not change
    assert not features(notes_array([]), 120).any()


def scale_piece(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A fast flute line walking up and down a major scale, high up."""
    degrees = [0, 2, 4, 5, 7, 9, 11]
    tonic = int(rng.integers(0, 12))
    scale = sorted(p for p in range(72, 97) if (p - tonic) % 12 in degrees)
    at = int(rng.integers(0, len(scale)))
    pitches = []
    for _ in range(int(rng.integers(32, 64))):
        at = int(np.clip(at + rng.choice([-1, 1, 1, 2]), 0, len(scale) - 1))
        pitches.append(scale[at])
    return melody(pitches, FLUTE, step=int(rng.choice([1, 2]))), float(rng.uniform(110, 160))


def arpeggio_piece(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Slow cello arpeggios over a held root, low down."""
    notes = []
    for bar in range(int(rng.integers(4, 8))):
        root = int(rng.integers(36, 48))
        third = root + int(rng.choice([3, 4]))
        notes.append(Note(32 * bar, root - 12, 32, CELLO))
        notes += [Note(32 * bar + 8 * i, p, 8, CELLO) for i, p in enumerate([root, third, root + 7, third])]
    return notes_array(notes), float(rng.uniform(50, 90))


def synthetic_set(seed: int, per_style: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(per_style):
        for label, make in (("scales", scale_piece), ("arpeggios", arpeggio_piece)):
            notes, tempo = make(rng)
            rows.append(features(notes, tempo))
            labels.append(label)
    return np.array(rows), labels


def test_style_classifier_separates_synthetic_styles():
    X_train, y_train = synthetic_set(seed=0, per_style=30)
    X_test, y_test = synthetic_set(seed=1, per_style=20)
    classifier = StyleClassifier().fit(X_train, y_train)
    assert classifier.accuracy(X_test, y_test) > 0.9
    assert set(classifier.predict(X_test)) == {"scales", "arpeggios"}


def test_style_classifier_is_deterministic():
    X_train, y_train = synthetic_set(seed=0, per_style=10)
    X_test, _ = synthetic_set(seed=2, per_style=10)
    first = StyleClassifier().fit(X_train, y_train)
    second = StyleClassifier().fit(X_train, y_train)
    assert np.array_equal(first.weights, second.weights)
    assert first.predict(X_test) == second.predict(X_test) == first.predict(X_test)


def test_style_classifier_learns_labels_not_order():
    # Swapping the labels must swap the predictions: the classifier follows the data, not a fixed class.
    X, y = synthetic_set(seed=0, per_style=10)
    swapped = ["scales" if label == "arpeggios" else "arpeggios" for label in y]
    assert StyleClassifier().fit(X, swapped).accuracy(X, swapped) == 1.0
    assert StyleClassifier().fit(X, y).accuracy(X, swapped) == 0.0


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
