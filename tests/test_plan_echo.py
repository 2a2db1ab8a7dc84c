"""Phrases that open as the phrase before them did (a reel's "a a'"): learnt, planned and heard in the notes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bars import bars

from generator.decode import notes_array
from generator.model import load_model
from generator.plan import draw_plan, learn_form
from generator.sampling import Composer, PieceRequest

# A reel of two repeated eight-bar strains in 2/4, read in four-bar phrases.
STRAINS = {
    "bar": 16,
    "forms": [{"bar": 16, "sections": [[8, True], [8, True]], "count": 1}],
    "phrase_bars": {"4": 1},
    "cadences": {"0": 3, "7": 2},
    "single_line": [73],
    "programs": [73],
}


def _strain(opening_again: bool) -> np.ndarray:
    """Eight bars of 2/4 eighth notes (16 steps a bar); bars 5-6 play bars 1-2 again or something else."""
    pitches = np.random.default_rng(7).integers(55, 80, 32)
    pitches[16:24] = pitches[:8] if opening_again else pitches[:8] + 2
    return np.array([(4 * i, p, 4, 73) for i, p in enumerate(pitches)], dtype=np.int32)


def test_the_share_of_strains_whose_second_phrase_opens_as_the_first_is_learnt():
    row = {"bar": 192, "pickup": 0, "sections": [[0, 1536, False]], "fermatas": [], "key": "C"}
    assert learn_form([row, row], [_strain(True), _strain(True)])["echo"] == 1.0
    assert learn_form([row, row], [_strain(True), _strain(False)])["echo"] == 0.5
    assert learn_form([row], [_strain(False)])["echo"] == 0.0


def test_an_echoing_phrase_replays_the_opening_of_the_one_before_on_its_chords():
    plain = draw_plan(STRAINS, 30.0, 120.0, seed=4, minor=False)
    assert draw_plan({**STRAINS, "echo": 0.0}, 30.0, 120.0, seed=4, minor=False) == plain
    echoed = draw_plan({**STRAINS, "echo": 1.0}, 30.0, 120.0, seed=4, minor=False)
    assert echoed.form == plain.form == "A A B B"
    # Each new strain's second phrase opens with its first's first two bars; a return replays them itself.
    new = [i for i, s in enumerate(echoed.sections) if s.returns is None]
    assert [(p.start, p.echo) for p in echoed.phrases if p.echo is not None] == [(4, 0), (20, 4)]
    assert all(p.section in new for p in echoed.phrases if p.echo is not None)
    replays = echoed.replays()
    assert replays[4 * 16] == (0, 2 * 16) and replays[20 * 16] == (16 * 16, 2 * 16)
    assert replays[8 * 16] == (0, 7 * 16)  # the second A, all but its last bar
    per_bar = 16 // echoed.span
    assert echoed.chords[4 * per_bar : 6 * per_bar] == echoed.chords[: 2 * per_bar]
    assert echoed.chords[20 * per_bar : 22 * per_bar] == echoed.chords[16 * per_bar : 18 * per_bar]


@pytest.fixture(scope="module")
def echo_composer(tiny_model):
    loaded = load_model(tiny_model / "best")
    loaded.card = copy.deepcopy(loaded.card)
    loaded.card.setdefault("style_defaults", {}).setdefault("irish", {})["form"] = {**STRAINS, "echo": 1.0}
    return Composer(loaded)


def test_the_notes_of_an_echoed_opening_are_the_first_phrase_s_again_and_the_seed_replays(echo_composer):
    request = PieceRequest("irish", ("flute",), 120.0, 30.0, seed=2, key="G")
    piece = echo_composer.compose(request)
    notes = notes_array(piece.notes)
    assert piece.plan is not None and piece.plan.phrases[1].echo == 0
    assert bars(notes, 0, 2) and bars(notes, 4, 2) == bars(notes, 0, 2)
    # The opening comes back as it was, its notes' lengths too (the phrase goes on after it, as the first
    # did), and the line stays one line: nothing after it starts before a note it holds has ended.
    first = notes[(notes[:, 0] >= 0) & (notes[:, 0] < 2 * 16)].tolist()
    echo = notes[(notes[:, 0] >= 4 * 16) & (notes[:, 0] < 6 * 16)].tolist()
    assert [[s - 4 * 16, p, d, g] for s, p, d, g in echo] == first
    line = notes[np.argsort(notes[:, 0], kind="stable")]
    assert (line[:-1, 0] + line[:-1, 2] <= line[1:, 0]).all()
    assert bars(notes, 20, 2) == bars(notes, 16, 2)
    assert echo_composer.compose(request).tokens == piece.tokens
    critic = echo_composer.compose(PieceRequest("irish", ("flute",), 120.0, 30.0, seed=2, key="G", critic=2))
    assert bars(notes_array(critic.notes), 4, 2) == bars(notes_array(critic.notes), 0, 2)
