"""Harmony: chords heard in real notes, progressions learnt from them, and a chord plan the notes follow."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from generator import harmony
from generator.decode import notes_array
from generator.harmony import MAJOR, MINOR, cadence_chord, draw_chords, learn_harmony, recognise, roman, state
from generator.model import load_model
from generator.plan import Plan, draw_plan
from generator.sampling import Composer, PieceRequest

I, IV, V, VI = state(0, MAJOR), state(5, MAJOR), state(7, MAJOR), state(9, MINOR)  # noqa: E741 (Roman numerals)


def _block(chords: list[tuple[int, ...]], span: int = 16, program: int = 0) -> np.ndarray:
    """A span-long block chord per entry, its first pitch the bass."""
    return np.array(
        [(i * span, pitch, span, program) for i, chord in enumerate(chords) for pitch in chord], dtype=np.int32
    )


def test_hears_block_chords_a_walking_bass_and_an_implied_harmony():
    # C major: I, IV, V7, vi, each half a 4/4 bar.
    notes = _block([(48, 64, 67, 72), (53, 65, 69, 72), (43, 65, 71, 74), (45, 64, 69, 72)])
    assert recognise(notes, 32, 0, 0, False) == [I, IV, V, VI]
    assert [roman(c) for c in recognise(notes, 32, 0, 0, False)] == ["I", "IV", "V", "vi"]
    # The same in G: chords are heard above the tonic.
    assert recognise(notes + np.array([0, 7, 0, 0]), 32, 0, 7, False) == [I, IV, V, VI]
    # A lone melody note on the downbeat, then passing notes: C implies I, B with D implies V.
    tune = np.array([(0, 72, 8, 73), (8, 74, 4, 73), (12, 76, 4, 73), (16, 71, 8, 73), (24, 74, 8, 73)])
    assert recognise(tune, 32, 0, 0, False) == [I, V]
    # A pickup joins the first span: the bar lines fall after it.
    assert recognise(np.array([(0, 67, 8, 73), *[(8 + t, p, d, g) for t, p, d, g in notes]]), 32, 8, 0, False)[
        :2
    ] == [I, IV]


def test_a_cadence_chord_is_the_keys_own():
    assert cadence_chord(7, minor=True) == state(7, MAJOR)  # harmonic minor: the dominant is major
    assert cadence_chord(0, minor=True) == state(0, MINOR)
    assert cadence_chord(11, minor=False) == state(11, harmony.DIMINISHED)
    assert roman(state(11, harmony.DIMINISHED)) == "viio"


def _circle(repeats: int = 20) -> np.ndarray:
    """I IV V I over and over: the moves a reel makes."""
    return _block([(48, 64, 67), (53, 65, 69), (43, 62, 71), (48, 64, 67)] * repeats)


def test_learns_which_chords_a_style_uses_and_which_follows_which():
    learnt = learn_harmony([(_circle(), 32, 0, 0, False)])
    major = learnt["major"]
    assert set(major["chords"]) == {I, IV, V} and major["spans"] == 80
    moves = {
        (a, b): n
        for a, row in zip(major["chords"], major["moves"], strict=True)
        for b, n in zip(major["chords"], row, strict=True)
    }
    assert moves[(V, I)] == 20 and moves[(I, IV)] == 20 and moves.get((IV, I), 0) == 0
    assert "minor" not in learnt  # no minor piece, nothing learnt for it


def test_a_drawn_progression_keeps_its_pins_and_prepares_them_as_the_style_does():
    learnt = learn_harmony([(_circle(), 32, 0, 0, False)])
    rng = np.random.default_rng(1)
    befores = []
    for _ in range(50):
        chain = draw_chords(learnt, False, 8, {0: I, 7: I}, rng)
        assert len(chain) == 8 and chain[0] == I and chain[7] == I
        befores.append(chain[6])
    # Learnt: V and I itself lead to I, IV never does (smoothing aside): a cadence is prepared as learnt.
    assert befores.count(IV) <= 5 and befores.count(V) >= 15
    again = [draw_chords(learnt, False, 8, {0: I, 7: I}, np.random.default_rng(9)) for _ in range(2)]
    assert again[0] == again[1]


PROFILE = {
    "bar": 32,
    "forms": [{"bar": 32, "sections": [[4, True], [4, True]], "count": 1}],
    "phrase_bars": {"4": 1},
    "cadences": {"7": 1, "0": 1},
    "harmony": learn_harmony([(_circle(), 32, 0, 0, False)]),
}


def test_the_plan_draws_chords_that_reach_each_cadence_and_return_with_their_section():
    plan = draw_plan(PROFILE, 40.0, 96.0, seed=4, minor=False)
    assert plan.form.startswith("A A B B")
    per_bar = plan.bar // plan.span
    assert len(plan.chords) == plan.bars * per_bar and plan.chords[0] == I
    for phrase in plan.phrases:
        last_bar = plan.chords[
            (phrase.start + phrase.bars - 1) * per_bar : (phrase.start + phrase.bars) * per_bar
        ]
        assert set(last_bar) == {cadence_chord(phrase.cadence, False)}
    a, a2 = plan.sections[0], plan.sections[1]
    first = plan.chords[a.start * per_bar : (a.start + a.bars - 1) * per_bar]
    assert plan.chords[a2.start * per_bar : (a2.start + a2.bars - 1) * per_bar] == first
    assert plan.progression()[0] == "I" and len(plan.progression()) == plan.bars
    assert Plan.from_dict(plan.to_dict()) == plan
    # Without a key (or with a card that learnt no harmony) the same seed draws the same form, with no chords.
    keyless = draw_plan(PROFILE, 40.0, 96.0, seed=4)
    assert keyless.chords == () and (keyless.sections, keyless.phrases) == (plan.sections, plan.phrases)
    old = {k: v for k, v in plan.to_dict().items() if k not in ("chords", "progression")}
    assert Plan.from_dict(old) == keyless  # a record saved before plans had chords still loads


def _agreement(notes: np.ndarray, plan: Plan) -> float:
    """Share of the plan's spans whose heard chord is the planned one."""
    heard = recognise(notes, plan.bar, 0, 0, False, end=plan.end())
    return float(np.mean([h == p for h, p in zip(heard, plan.chords, strict=False)]))


@pytest.fixture(scope="module")
def planned_composer(tiny_model):
    loaded = load_model(tiny_model / "best")
    loaded.card = copy.deepcopy(loaded.card)
    loaded.card.setdefault("style_defaults", {}).setdefault("bach", {})["form"] = PROFILE
    return Composer(loaded)


def test_the_notes_follow_the_planned_chords(planned_composer, monkeypatch):
    requests = [PieceRequest("bach", ("violin", "cello"), 96.0, 20.0, seed=s, key="C") for s in range(3)]
    followed = []
    for request in requests:
        piece = planned_composer.compose(request)
        assert piece.plan is not None and piece.plan.chords
        followed.append(_agreement(notes_array(piece.notes), piece.plan))
    # The same pieces with the plan's chords but no pull towards them: what the notes do by themselves.
    from generator import steering

    for name in ("PLANNED_STRONG", "PLANNED_BEAT", "PLANNED_ROOT"):
        monkeypatch.setattr(steering, name, 0.0)
    unsteered = [
        _agreement(notes_array(planned_composer.compose(r).notes), planned_composer.plan(r)) for r in requests
    ]
    assert np.mean(followed) > np.mean(unsteered) + 0.1


def test_eval_hears_a_progression_that_moves_by_fifths_in_the_key():
    from generator.form_metrics import harmony_of

    heard = harmony_of(_circle(5), 32, 0, 0, False)
    # I-IV, IV-V, V-I: two of three changes move the root a fourth or fifth; I to I is no change.
    assert heard.fifth_moves == pytest.approx(2 / 3)
    assert heard.diatonic == 1.0
    assert heard.changes_per_bar == pytest.approx(15 / 10)
    chromatic = _block([(48 + i, 52 + i, 55 + i) for i in range(0, 12)])  # triads a semitone apart
    assert harmony_of(chromatic, 32, 0, 0, False).fifth_moves == 0.0


def test_a_key_cadences_as_pieces_in_its_mode_do():
    from generator.plan import learn_form

    def chorale(key: str, rests: list[int]) -> tuple[dict, np.ndarray]:
        # Four two-bar phrases marked by fermatas, each resting on a chord whose bass is `rests[i]`.
        notes = [(t, 72, 16, 40) for t in range(0, 256, 16)]
        notes += [(i * 64 + t, rests[i] if t == 48 else 48, 16, 42) for i in range(4) for t in range(0, 64, 16)]
        row = {"bar": 384, "pickup": 0, "sections": [[0, 3072, False]], "fermatas": [768, 1536, 2304, 3072]}
        return row | {"key": key}, np.array(notes, dtype=np.int32)

    # Minor pieces (A minor) rest on C, the relative major; major ones (C major) on G and C.
    pieces = [chorale("Am", [48, 48, 45, 45]) for _ in range(3)] + [
        chorale("C", [43, 43, 48, 48]) for _ in range(3)
    ]
    profile = learn_form([r for r, _ in pieces], [n for _, n in pieces])
    assert profile["mode_cadences"]["minor"] == {"0": 6, "3": 6}
    assert profile["mode_cadences"]["major"] == {"0": 6, "7": 6}
    for seed in range(30):
        major = draw_plan(profile, 30.0, 90.0, seed, minor=False)
        assert {p.cadence for p in major.phrases} <= {0, 7}  # never the minor mode's bIII
