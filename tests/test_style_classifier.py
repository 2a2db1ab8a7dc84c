"""The style classifier hears the music, not the band: literal pieces re-orchestrated, moved and split."""

from __future__ import annotations

import numpy as np
import pytest

from generator.decode import Note, notes_array
from generator.disguises import octave_shift, reorchestrated, split_notes
from generator.evaluate import other_ensembles
from generator.instruments import BY_PROGRAM, DRUMS
from generator.metrics import MAX_INTERVAL, PITCH, PROGRAM, START
from generator.style_classifier import FEATURE_GROUPS, FEATURES, StyleClassifier, features

VIOLIN, VIOLA, CELLO, BASS, FLUTE, CLARINET, TUBA, PIANO, CHOIR = 40, 41, 42, 43, 73, 71, 58, 0, 52
STRINGS = (VIOLIN, VIOLA, CELLO, BASS)


def group(name: str) -> slice:
    """Where one of FEATURE_GROUPS lies in a feature vector."""
    at = 0
    for group_name, size in FEATURE_GROUPS:
        if group_name == name:
            return slice(at, at + size)
        at += size
    raise KeyError(name)


def chorale(tonic: int = 0, programs: tuple[int, ...] = STRINGS) -> np.ndarray:
    """Four parts striking chords together in quarter notes (8 steps), a held chord at the end."""
    chords = [(72, 67, 64, 48), (72, 69, 65, 53), (71, 67, 62, 55), (72, 67, 64, 48), (74, 65, 59, 55)]
    chords += [(76, 67, 60, 48), (74, 65, 62, 53), (72, 64, 55, 48)]
    notes = [
        Note(8 * i, pitch + tonic, 16 if i == len(chords) - 1 else 8, program)
        for i, chord in enumerate(chords)
        for pitch, program in zip(chord, programs, strict=True)
    ]
    return notes_array(notes)


def tune(program: int = FLUTE) -> np.ndarray:
    """A single line of eighth notes (4 steps) that leaps about, with a dotted figure."""
    pitches = [67, 72, 76, 72, 67, 64, 60, 64, 67, 71, 74, 79, 74, 71, 67, 62]
    notes = [Note(4 * i, p, 4, program) for i, p in enumerate(pitches)]
    notes.append(Note(64, 72, 6, program))
    notes.append(Note(70, 71, 2, program))
    return notes_array(notes)


def test_features_have_their_shape_and_nothing_for_a_piece_without_notes():
    f = features(chorale())
    assert f.shape == (FEATURES,) == (sum(size for _, size in FEATURE_GROUPS),)
    assert np.isfinite(f).all()
    for name, size in FEATURE_GROUPS:
        if size > 1:
            assert f[group(name)].sum() == pytest.approx(1.0), name
    assert not features(notes_array([])).any()
    assert not features(notes_array([Note(0, 36, 8, DRUMS), Note(8, 38, 8, DRUMS)])).any()


def test_a_piece_in_another_key_has_the_same_fingerprint_unless_key_free_is_off():
    c, d = chorale(0), chorale(2)
    np.testing.assert_allclose(features(d), features(c))
    absolute_c, absolute_d = features(c, key_free=False), features(d, key_free=False)
    assert not np.allclose(absolute_c[group("pitch classes")], absolute_d[group("pitch classes")])
    rest = slice(group("pitch classes").stop, FEATURES)
    np.testing.assert_allclose(absolute_c[rest], absolute_d[rest])


def test_moving_each_part_by_its_own_octaves_onto_other_programs_changes_nothing():
    original = chorale()
    moved = original.copy()
    for part, (octaves, program) in enumerate(zip((1, -1, 2, -2), (CHOIR, TUBA, FLUTE, PIANO), strict=True)):
        mine = original[:, PROGRAM] == STRINGS[part]
        moved[mine, PITCH] += 12 * octaves
        moved[mine, PROGRAM] = program
    np.testing.assert_allclose(features(moved), features(original))


def test_the_old_telltales_are_gone_from_the_fingerprint():
    # A whole piece an octave up, or on other instruments, is what fooled the old features (register bands,
    # pitch mean): now the fingerprint does not move.
    piece = tune()
    up = piece.copy()
    up[:, PITCH] += 12
    np.testing.assert_allclose(features(up), features(piece))
    np.testing.assert_allclose(features(tune(VIOLIN)), features(piece))


def test_reorchestrating_gives_each_part_an_instrument_of_the_ensemble_in_its_range():
    piece = chorale()
    played = reorchestrated(piece, (CLARINET, FLUTE, TUBA))
    # Spread top voice first, the bass on the last instrument; the part left over gets a spare of its own.
    programs = [int(played[piece[:, PROGRAM] == p, PROGRAM][0]) for p in STRINGS]
    assert (programs[0], programs[2], programs[3]) == (CLARINET, FLUTE, TUBA)
    assert programs[1] not in (CLARINET, FLUTE, TUBA, *STRINGS, DRUMS)
    for program in programs:
        pitches = played[played[:, PROGRAM] == program, PITCH]
        instrument = BY_PROGRAM[program]
        assert instrument.low <= pitches.min() and pitches.max() <= instrument.high, instrument.name
    tenor = piece[:, PROGRAM] == CELLO
    assert np.array_equal(played[tenor, PITCH], piece[tenor, PITCH] + 12)  # the flute plays it an octave up
    assert np.array_equal(played[~tenor, PITCH], piece[~tenor, PITCH])  # the others fit where they are
    assert np.array_equal(played[:, PITCH] % 12, piece[:, PITCH] % 12)
    assert np.array_equal(played[:, START], piece[:, START])
    np.testing.assert_array_equal(features(played), features(piece))


def test_a_single_line_goes_to_the_first_instrument_and_drums_stay_drums():
    piece = np.concatenate([tune(VIOLIN), notes_array([Note(0, 36, 8, DRUMS)])])
    played = reorchestrated(piece, (DRUMS, CELLO, FLUTE))
    assert set(played[:, PROGRAM].tolist()) == {CELLO, DRUMS}
    assert played[played[:, PROGRAM] == DRUMS, PITCH].tolist() == [36]
    with pytest.raises(ValueError, match="pitched instrument"):
        reorchestrated(piece, (DRUMS,))


def test_octave_shift_fits_a_part_into_a_range_by_whole_octaves():
    assert octave_shift(np.array([36, 40, 43]), 60, 96) == 24
    assert octave_shift(np.array([60, 64]), 55, 100) == 0
    assert octave_shift(np.array([84, 90]), 28, 58) == -36


def test_split_notes_strikes_each_note_twice_in_its_own_time():
    piece = notes_array([Note(0, 60, 8, FLUTE), Note(8, 62, 3, FLUTE), Note(11, 64, 1, FLUTE)])
    split = split_notes(piece)
    assert split.tolist() == [
        [0, 60, 4, FLUTE],
        [4, 60, 4, FLUTE],
        [8, 62, 1, FLUTE],
        [9, 62, 2, FLUTE],
        [11, 64, 1, FLUTE],
    ]


def test_splitting_every_note_moves_onsets_in_the_beat_but_not_the_lines_lengths_or_texture():
    for piece in (chorale(), tune()):
        f, g = features(piece), features(split_notes(piece))
        assert not np.allclose(f[group("onset in the beat")], g[group("onset in the beat")])
        for name, _ in FEATURE_GROUPS:
            if name != "onset in the beat":
                np.testing.assert_allclose(g[group(name)], f[group(name)], err_msg=name)


def test_texture_tells_parts_striking_together_from_one_line():
    homophonic, line = features(chorale()), features(tune())
    assert homophonic[group("struck together")][0] == 1.0 and line[group("struck together")][0] == 0.0
    assert homophonic[group("parts striking")][0] == 1.0 and line[group("parts striking")][0] == 1.0
    assert homophonic[group("chordal onsets")][0] == 1.0 and line[group("full onsets")][0] == 0.0
    # Against a held bass, three moving parts strike at every onset but the bass only on the first of each.
    held_bass = chorale()
    bass = held_bass[:, PROGRAM] == BASS
    held_bass = np.concatenate([held_bass[~bass], notes_array([Note(0, 36, 72, BASS)])])
    texture = features(held_bass)
    assert texture[group("parts sounding")][0] == 1.0
    assert texture[group("parts striking")][0] == pytest.approx((1 + 7 * 0.75) / 8)
    assert texture[group("struck together")][0] == 1.0


def test_repeated_notes_are_not_moves():
    steps = notes_array([Note(4 * i, p, 4, FLUTE) for i, p in enumerate([60, 60, 62, 62, 64, 67])])
    moves = features(steps)[group("melodic moves")]
    rise = MAX_INTERVAL - 1  # moves[rise + n] is a rise of n semitones, as the repeated note is left out
    assert moves[rise + 2] == pytest.approx(2 / 3) and moves[rise + 3] == pytest.approx(1 / 3)
    assert features(steps)[group("stepwise share")][0] == pytest.approx(2 / 3)


def test_other_ensembles_take_the_other_styles_in_turn():
    pieces = [tune(VIOLIN)] * 4
    ensembles = {"bach": [VIOLIN], "folk": [FLUTE], "brass": [TUBA]}
    played = other_ensembles(pieces, "folk", ensembles)
    assert [int(p[0, PROGRAM]) for p in played] == [TUBA, VIOLIN, TUBA, VIOLIN]
    alone = other_ensembles(pieces, "solo", {"solo": [FLUTE]})
    assert all(a is b for a, b in zip(alone, pieces, strict=True))


def synthetic_set(seed: int, per_style: int) -> tuple[list[np.ndarray], list[str]]:
    """Chorales in any key and ensemble, and leaping tunes on any one instrument, with varied details."""
    rng = np.random.default_rng(seed)
    pieces, labels = [], []
    for _ in range(per_style):
        programs = tuple(int(p) for p in rng.choice([VIOLIN, VIOLA, CELLO, BASS, FLUTE, TUBA, CHOIR], 4, False))
        piece = chorale(int(rng.integers(0, 12)), programs)
        pieces.append(piece[rng.random(len(piece)) > 0.1])  # a few notes left out
        labels.append("chorales")
        line = tune(int(rng.choice([VIOLIN, FLUTE, PIANO])))
        line[:, PITCH] += int(rng.integers(-6, 6))
        pieces.append(line[rng.random(len(line)) > 0.1])
        labels.append("tunes")
    return pieces, labels


def test_style_classifier_names_styles_it_has_not_heard_on_these_instruments():
    train, train_labels = synthetic_set(seed=0, per_style=30)
    test, test_labels = synthetic_set(seed=1, per_style=20)
    classifier = StyleClassifier().fit(np.array([features(p) for p in train]), train_labels)
    assert classifier.accuracy(np.array([features(p) for p in test]), test_labels) == 1.0
    for disguise in (lambda p: reorchestrated(p, (TUBA, PIANO)), split_notes):
        disguised = np.array([features(disguise(p)) for p in test])
        assert classifier.accuracy(disguised, test_labels) == 1.0


def test_style_classifier_is_deterministic_and_learns_labels_not_order():
    pieces, labels = synthetic_set(seed=0, per_style=10)
    X = np.array([features(p) for p in pieces])
    first, second = StyleClassifier().fit(X, labels), StyleClassifier().fit(X, labels)
    assert np.array_equal(first.weights, second.weights)
    assert first.predict(X) == second.predict(X)
    # Swapping the labels must swap the predictions: the classifier follows the data, not a fixed class.
    swapped = ["tunes" if label == "chorales" else "chorales" for label in labels]
    assert StyleClassifier().fit(X, swapped).accuracy(X, swapped) == 1.0
    assert StyleClassifier().fit(X, labels).accuracy(X, swapped) == 0.0
