"""Real pieces heard as played (generator.form_metrics.as_played): a strain the score repeats comes twice."""

from __future__ import annotations

import numpy as np

from generator.decode import Note, notes_array
from generator.form_metrics import as_played, recurrence

FLUTE = 73


def tune(pickup: int = 0, bars: int = 4) -> np.ndarray:
    """`bars` bars of 2/4 (16 steps) of eighth notes, each bar's notes its own pitches."""
    notes = [Note(pickup + 16 * b + 4 * i, 60 + 4 * b + i, 4, FLUTE) for b in range(bars) for i in range(4)]
    return notes_array(([Note(0, 55, pickup, FLUTE)] if pickup else []) + notes)


def test_a_repeated_strain_is_played_twice_and_what_follows_comes_later():
    written = tune()
    played = as_played(written, [(0, 32, True), (32, 64, False)], 16)
    assert len(played) == 2 * 8 + 8
    assert sorted(played[played[:, 0] < 64].tolist()) == sorted(
        [*written[written[:, 0] < 32].tolist(), *(written[written[:, 0] < 32] + [32, 0, 0, 0]).tolist()]
    )
    assert (played[played[:, 0] >= 64] - [32, 0, 0, 0]).tolist() == written[written[:, 0] >= 32].tolist()
    assert not recurrence(written, 16, 0).recurs and recurrence(played, 16, 0).recurs


def test_without_a_repeat_sign_the_notes_are_as_written():
    written = tune()
    assert np.array_equal(as_played(written, [(0, 32, False), (32, 64, False)], 16), written)
    assert np.array_equal(as_played(written, [], 16), written)


def test_a_repeat_moves_the_music_by_whole_bars_so_that_a_pickup_stays_on_its_beat():
    # A four-bar strain after a pickup of an eighth whose last bar is written full: the repeat still starts an
    # eighth before a bar line, so its bars are the first pass's bars again (its pickup over the last eighth).
    written = tune(pickup=4, bars=6)
    played = as_played(written, [(0, 68, True), (68, 100, False)], 16)
    assert recurrence(played, 16, 4).longest_bars == 3
    assert set(((played[:, 0] - 4) % 16).tolist()) == set(((written[:, 0] - 4) % 16).tolist())
