"""The register lean (generator.steering): each part sings where its style's part sings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from generator.model import load_model
from generator.plan import Phrase, Plan, Section, learn_form
from generator.recipes import make_request
from generator.sampling import Composer
from generator.steer import refollow
from generator.steering import HEIGHT_CAP, PlanFollower, VocabTensors

LOW, HIGH = 36, 84  # a toy vocabulary of these pitches, then the programs 52 and 70
PITCHES = list(range(LOW, HIGH + 1))
N = len(PITCHES)
VT = VocabTensors(
    pitch_of=torch.tensor([*PITCHES, -1, -1]),
    is_pitch=torch.tensor([True] * N + [False] * 2),
    is_timeshift=torch.zeros(N + 2, dtype=torch.bool),
    shift_of=torch.zeros(N + 2, dtype=torch.int64),
    program_of=torch.tensor([-2] * N + [52, 70]),
    duration_of=torch.zeros(N + 2, dtype=torch.int64),
)
PLAN = Plan(32, 8, (Section("A", 0, 8),), (Phrase(0, 8, 0, 0),))
PROFILE = {"tessitura": {"52": [64.0, 67.0, 71.0], "70": [48.0, 52.0, 55.0]}}


def lean(follow: PlanFollower, program: int) -> float:
    """Logits per semitone up that the steer gives `program`'s next pitch (the bias is linear in pitch)."""
    steered = follow.pitch_bias(torch.zeros(N + 2), program, 3)
    medians, follow.median = follow.median, {}
    plain = follow.pitch_bias(torch.zeros(N + 2), program, 3)  # the other steers alone
    follow.median = medians
    bias = steered - plain
    assert bool((bias[N:] == 0).all())  # pitches only
    steps = bias[1:N] - bias[: N - 1]
    assert torch.allclose(steps, steps[0].expand_as(steps))
    return round(float(steps[0]), 4)


def test_a_part_that_sings_where_its_style_s_part_does_is_left_alone():
    follow = PlanFollower(PLAN, PROFILE, None, [52, 70], VT)
    assert lean(follow, 70) == 0.0
    for start, pitch in enumerate([52, 51, 53, 52, 52]):
        follow.on_note(start * 8, pitch, 8, 70)
    assert lean(follow, 70) == 0.0


def test_a_part_that_drifts_high_leans_down_and_one_that_sinks_leans_up_at_most_the_cap():
    follow = PlanFollower(PLAN, PROFILE, None, [52, 70], VT)
    for start in range(6):
        follow.on_note(start * 8, 61, 8, 70)  # the bass up a ninth from where the style's bass sings
        follow.on_note(start * 8, 58, 8, 52)  # the top voice down a ninth
    assert lean(follow, 70) < 0 < lean(follow, 52)
    for start in range(6, 60):
        follow.on_note(start * 8, 80, 8, 70)
    assert lean(follow, 70) == pytest.approx(-HEIGHT_CAP)
    # It follows the part's recent notes, not all of them: back where it belongs, the lean lets go.
    for start in range(60, 120):
        follow.on_note(start * 8, 52, 8, 70)
    assert lean(follow, 70) == 0.0


def test_a_card_without_tessitura_or_a_program_the_style_never_plays_gets_no_lean():
    follow = PlanFollower(PLAN, {}, None, [52, 70], VT)
    for start in range(20):
        follow.on_note(start * 8, 80, 8, 70)
    assert lean(follow, 70) == 0.0
    follow = PlanFollower(PLAN, {"tessitura": {"52": [64.0, 67.0, 71.0]}}, None, [52, 70], VT)
    for start in range(20):
        follow.on_note(start * 8, 80, 8, 70)
    assert lean(follow, 70) == 0.0


def test_a_single_line_sings_where_its_tune_goes():
    follow = PlanFollower(PLAN, PROFILE, None, [70], VT)  # the bassoon alone: its register is its tune's
    for start in range(20):
        follow.on_note(start * 8, 80, 8, 70)
    assert lean(follow, 70) == 0.0


def test_a_steer_keeps_where_each_part_has_been_singing():
    old = PlanFollower(PLAN, PROFILE, None, [52, 70], VT)
    for start in range(20):
        old.on_note(start * 8, 62, 8, 70)
    new = refollow(old, PlanFollower(PLAN, PROFILE, None, [52, 70], VT))
    assert lean(new, 70) == lean(old, 70) < 0


def test_each_instrument_s_quartiles_are_learnt_from_the_style_s_pieces():
    rows = [{"bar": 32 * 10, "key": "C major"}]  # ticks: 10 a step
    top = [(i * 8, 60 + i % 12, 8, 52) for i in range(240)]  # 60-71, evenly
    few = [(i * 8, 40, 8, 70) for i in range(50)]  # under 200 notes: too few to say where it sings
    notes = np.array(top + few, dtype=np.int64)
    learnt = learn_form(rows, [notes])["tessitura"]
    assert learnt == {"52": [62.75, 65.5, 68.25]}


@pytest.mark.timeout(300)
def test_a_motet_s_parts_sing_nearer_where_the_card_says_its_style_s_parts_sing():
    """The real model and sampler: Palestrina's four default parts, with the shipped card's form (but for its
    note lengths) plus a tessitura that spreads them (the bassoon, its bass, an octave and more under the
    choir), against the same form without one: every part's mean pitch comes nearer its median, by a third of
    the distance in all."""
    loaded = load_model(None)
    form = loaded.card["style_defaults"]["palestrina"]["form"]
    # The lean alone: the note-length pull moves parts' notes too, and over two pieces a part may then land
    # further from its median by chance.
    plain = {k: v for k, v in form.items() if k not in ("tessitura", "lengths")}
    medians = {52: 67.0, 60: 62.0, 57: 57.0, 70: 50.0}
    spread = {**plain, "tessitura": {str(p): [m - 3.0, m, m + 3.0] for p, m in medians.items()}}

    def misplaced(profile: dict) -> dict[int, float]:
        """Per part, how far its mean pitch lies from its median, over two pieces of 20 s."""
        style = {**loaded.card["style_defaults"]["palestrina"], "form": profile}
        card = {**loaded.card, "style_defaults": {**loaded.card["style_defaults"], "palestrina": style}}
        composer = Composer(dataclasses.replace(loaded, card=card))
        notes = []
        for seed in (0, 1):
            request = make_request(composer.loaded, "palestrina", None, None, 20, seed, critic=1)
            notes += composer.compose(request).notes
        return {p: abs(np.mean([n.pitch for n in notes if n.program == p]) - m) for p, m in medians.items()}

    before, after = misplaced(plain), misplaced(spread)
    assert all(after[p] < before[p] or after[p] < 1.0 for p in medians), (before, after)
    assert sum(after.values()) < 2 / 3 * sum(before.values()), (before, after)
