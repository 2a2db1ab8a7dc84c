"""Strains that end as the strain before them did (a tune's B part ending with its A part's last two bars)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bars import bars

from generator.decode import notes_array
from generator.model import load_model
from generator.plan import RHYME_BARS, draw_plan, learn_form
from generator.sampling import Composer, PieceRequest

# A tune of two eight-bar strains in 2/4 (16 steps a bar) played straight through, read in four-bar phrases.
TUNE = {
    "bar": 16,
    "forms": [{"bar": 16, "sections": [[8, False], [8, False]], "count": 1}],
    "phrase_bars": {"4": 1},
    "cadences": {"0": 3, "7": 2},
    "single_line": [73],
    "programs": [73],
}


def _tune(rhymed: bool) -> np.ndarray:
    """Two strains of eight bars of eighth notes; the second's last two bars are the first's, or not."""
    pitches = np.random.default_rng(3).integers(55, 80, 64)
    pitches[56:64] = pitches[24:32] if rhymed else pitches[24:32] + 3
    return np.array([(4 * i, p, 4, 73) for i, p in enumerate(pitches)], dtype=np.int32)


def test_the_share_of_strains_that_end_as_the_one_before_is_learnt():
    row = {
        "bar": 192,
        "pickup": 0,
        "sections": [[0, 1536, False], [1536, 3072, False]],
        "fermatas": [],
        "key": "C",
    }
    assert learn_form([row, row], [_tune(True), _tune(True)])["rhyme"] == 1.0
    assert learn_form([row, row], [_tune(True), _tune(False)])["rhyme"] == 0.5
    one = {**row, "sections": [[0, 3072, False]]}  # one long strain: no pair to judge
    assert learn_form([one], [_tune(True)])["rhyme"] == 0.0


def test_a_rhyming_strain_replays_the_last_bars_of_the_one_before_on_their_chords_and_cadence():
    plain = draw_plan(TUNE, 40.0, 120.0, seed=4, minor=False)
    assert draw_plan({**TUNE, "rhyme": 0.0}, 40.0, 120.0, seed=4, minor=False) == plain
    rhymed = draw_plan({**TUNE, "rhyme": 1.0}, 40.0, 120.0, seed=4, minor=False)
    assert rhymed.form == plain.form and len(rhymed.sections) >= 3
    rhymes = [(i, p) for i, p in enumerate(rhymed.phrases) if p.rhyme is not None]
    assert rhymes, rhymed
    assert all(i != len(rhymed.phrases) - 1 for i, _ in rhymes)  # the last cadence is the plan's own
    per_bar = 16 // rhymed.span
    for _, phrase in rhymes:
        was = rhymed.phrases[phrase.rhyme]
        assert was.section == phrase.section - 1 and phrase.cadence == was.cadence
        at, source = phrase.start + phrase.bars - RHYME_BARS, was.start + was.bars - RHYME_BARS
        assert rhymed.replays()[at * 16] == (source * 16, RHYME_BARS * 16)
        assert (
            rhymed.chords[at * per_bar : (at + RHYME_BARS) * per_bar]
            == rhymed.chords[source * per_bar : (source + RHYME_BARS) * per_bar]
        )


def test_with_the_style_s_harmony_a_rhyme_is_on_its_source_s_chords():
    profile = {**load_model().card["style_defaults"]["irish"]["form"], "rhyme": 1.0}
    plan = draw_plan(profile, 60.0, 168.0, seed=1, minor=False)
    rhymes = [p for p in plan.phrases if p.rhyme is not None]
    assert rhymes and plan.chords
    per_bar = plan.bar // plan.span
    for phrase in rhymes:
        was = plan.phrases[phrase.rhyme]
        at, source = phrase.start + phrase.bars - RHYME_BARS, was.start + was.bars - RHYME_BARS
        heard = plan.chords[at * per_bar : (at + RHYME_BARS) * per_bar]
        assert heard and heard == plan.chords[source * per_bar : (source + RHYME_BARS) * per_bar]


@pytest.fixture(scope="module")
def rhyme_composer(tiny_model):
    loaded = load_model(tiny_model / "best")
    loaded.card = copy.deepcopy(loaded.card)
    loaded.card.setdefault("style_defaults", {}).setdefault("irish", {})["form"] = {**TUNE, "rhyme": 1.0}
    return Composer(loaded)


def test_the_notes_of_a_rhyme_are_the_strain_before_s_ending_and_the_seed_replays(rhyme_composer):
    request = PieceRequest("irish", ("flute",), 120.0, 40.0, seed=4, key="G")
    piece = rhyme_composer.compose(request)
    plan = piece.plan
    assert plan is not None
    rhymes = [p for p in plan.phrases if p.rhyme is not None]
    assert rhymes
    notes = notes_array(piece.notes)
    for phrase in rhymes:
        was = plan.phrases[phrase.rhyme]
        at, source = phrase.start + phrase.bars - RHYME_BARS, was.start + was.bars - RHYME_BARS
        assert bars(notes, source, RHYME_BARS) and bars(notes, at, RHYME_BARS) == bars(
            notes, source, RHYME_BARS
        )
    assert rhyme_composer.compose(request).tokens == piece.tokens
    critic = rhyme_composer.compose(PieceRequest("irish", ("flute",), 120.0, 40.0, seed=4, key="G", critic=2))
    notes = notes_array(critic.notes)
    phrase = rhymes[0]
    was = plan.phrases[phrase.rhyme]
    at, source = phrase.start + phrase.bars - RHYME_BARS, was.start + was.bars - RHYME_BARS
    assert bars(notes, at, RHYME_BARS) == bars(notes, source, RHYME_BARS)


def test_an_echo_then_a_rhyme_in_one_phrase_keep_the_line_single(tiny_model):
    loaded = load_model(tiny_model / "best")
    loaded.card = copy.deepcopy(loaded.card)
    loaded.card.setdefault("style_defaults", {}).setdefault("irish", {})["form"] = {
        **TUNE,
        "echo": 1.0,
        "rhyme": 1.0,
    }
    composer = Composer(loaded)
    for seed in (26, 27, 28, 29, 30):  # 26 and 30 hold an echo's last note into the rhyme that follows it
        piece = composer.compose(PieceRequest("irish", ("flute",), 120.0, 40.0, seed=seed, key="G"))
        plan = piece.plan
        assert plan is not None
        both = [p for p in plan.phrases if p.echo is not None and p.rhyme is not None]
        assert both, plan  # a four-bar phrase: its first two bars an echo, its last two a rhyme
        notes = notes_array(piece.notes)
        line = notes[np.argsort(notes[:, 0], kind="stable")]
        assert (line[:-1, 0] + line[:-1, 2] <= line[1:, 0]).all(), seed  # a held echo note never rings on
        for phrase in both:
            was = plan.phrases[phrase.rhyme]
            at, source = phrase.start + phrase.bars - RHYME_BARS, was.start + was.bars - RHYME_BARS
            assert bars(notes, at, RHYME_BARS) == bars(notes, source, RHYME_BARS)
