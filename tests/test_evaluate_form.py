"""The form figures of `concertbot eval`: index rows to metre and key, pieces to figures, then per style."""

from __future__ import annotations

import math

import numpy as np
import pytest

from generator.decode import Note, notes_array
from generator.evaluate import FORM_FIELDS, StyleReport, form_summary, key_of, piece_form, row_form
from generator.vocab import KEYS

PIANO, FLUTE = 0, 73


def test_key_names_become_tonic_and_mode():
    assert key_of("C") == (0, False)
    assert key_of("F#m") == (6, True)
    assert key_of("Bb") == (10, False)
    assert [key_of(k) for k in KEYS] == [(i % 12, i >= 12) for i in range(24)]


def test_index_rows_give_the_metre_in_steps_and_older_rows_a_4_4_bar():
    # Ticks at TPQ 96: a 3/4 bar is 288 ticks, a pickup of one quarter 96.
    assert row_form({"bar": 288, "pickup": 96, "key": "Dm"}) == (24, 8, (2, True))
    assert row_form({"bar": 384, "pickup": 0, "key": "G"}) == (32, 0, (7, False))
    assert row_form({"key": "A"}) == (32, 0, (9, False))  # built before the metre was kept
    assert row_form({"bar": 0, "pickup": 0, "key": "C"}) == (32, 0, (0, False))  # the source named none
    assert row_form({"bar": 192}) == (16, 0, None)


def cadence_in_c() -> np.ndarray:
    """A C major line over two bars, then a held C major chord on the next downbeat."""
    line = [Note(8 * i, p, 8, PIANO) for i, p in enumerate([60, 62, 64, 65, 67, 64, 62, 60])]
    return notes_array(line + [Note(64, p, 32, PIANO) for p in (48, 64, 67, 72)])


def test_a_piece_s_texture_and_its_ending_are_measured_on_their_own_notes():
    whole = cadence_in_c()
    opening = whole[whole[:, 0] < 64]  # cut before the final chord
    form = piece_form(opening, whole, 32, 0, (0, False), [PIANO, FLUTE])
    assert (form.ending.on_downbeat, form.ending.long, form.ending.on_tonic) == (True, True, True)
    assert math.isnan(form.chordal_onset_share)  # the opening is a single line
    assert form.leap_share == 0.0
    assert form.key_kept == 1.0
    assert form.smallest_instrument_share == 0.0  # the flute never plays
    assert form.most_simultaneous == 1
    # Heard against G major the same chord is no tonic, and the key asked is not the one played.
    in_g = piece_form(whole, whole, 32, 0, (7, False), [PIANO])
    assert not in_g.ending.on_tonic and in_g.key_kept == 0.0
    assert in_g.most_simultaneous == 4 and in_g.chordal_onset_share == 1.0


def test_without_an_asked_key_the_ending_is_heard_in_the_piece_s_own_key():
    whole = cadence_in_c()
    form = piece_form(whole, whole, 32, 0, None, [PIANO])
    assert form.ending.on_tonic
    assert math.isnan(form.key_kept)


def test_a_style_s_figures_are_shares_and_means_over_pieces_leaving_out_what_was_not_measured():
    whole = cadence_in_c()
    chordal = piece_form(whole, whole, 32, 0, (0, False), [PIANO])
    line = piece_form(whole[:6], whole[:6], 32, 0, (0, False), [PIANO])  # ends on E, on beat 2
    summary = form_summary([chordal, line])
    assert set(summary) == set(FORM_FIELDS)
    assert summary["ends_on_downbeat"] == 0.5 and summary["ends_on_tonic"] == 0.5
    assert summary["chordal_onset_share"] == 1.0  # the single line has no chordal onset to count
    assert summary["most_simultaneous"] == 4  # the most of any piece, not a mean
    assert summary["smallest_instrument_share"] == 1.0
    assert summary["key_kept"] == pytest.approx(np.mean([chordal.key_kept, line.key_kept]))
    empty = form_summary([])
    assert empty["most_simultaneous"] == 0 and math.isnan(empty["ends_long"])


def test_every_form_figure_has_a_generated_and_a_real_column_in_the_report():
    names = set(StyleReport.__dataclass_fields__)
    assert all(name in names and f"{name}_real" in names for name in FORM_FIELDS)
