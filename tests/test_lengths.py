"""The note-length pull (generator.steering): a piece's rhythm leans to its style's note lengths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from generator import metrics
from generator.decode import notes_array
from generator.model import load_model
from generator.plan import Phrase, Plan, Section, learn_form
from generator.recipes import make_request
from generator.sampling import Composer
from generator.steer import refollow
from generator.steering import LENGTH_CAP, PlanFollower, VocabTensors

DURATIONS = [1, 2, 3, 4, 6, 8, 12, 16]  # a toy vocabulary: these Duration tokens, then one pitch (60)
N = len(DURATIONS)
VT = VocabTensors(
    pitch_of=torch.tensor([-1] * N + [60]),
    is_pitch=torch.tensor([False] * N + [True]),
    is_timeshift=torch.zeros(N + 1, dtype=torch.bool),
    shift_of=torch.zeros(N + 1, dtype=torch.int64),
    program_of=torch.full((N + 1,), -2),
    duration_of=torch.tensor([*DURATIONS, 0]),
)
PLAN = Plan(32, 8, (Section("A", 0, 8),), (Phrase(0, 8, 0, 0),))
# The style: half its notes sixteenths (2 steps), half eighths (4 steps).
SHARES = [0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def pull(follow: PlanFollower) -> dict[int, float]:
    """Logits the pull adds to each Duration token, by its length in steps."""
    bias = follow.duration_bias(torch.zeros(N + 1))
    assert float(bias[N]) == 0.0  # a pitch token is no length
    return {d: round(float(b), 4) for d, b in zip(DURATIONS, bias[:N], strict=True)}


def test_lengths_fall_into_half_octave_bins_so_a_dotted_note_has_its_own():
    assert metrics.length_bin(np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 500])).tolist() == [
        0,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        13,
    ]


def test_a_piece_of_only_eighths_leans_to_the_style_s_sixteenths_and_away_from_more_eighths():
    follow = PlanFollower(PLAN, {"lengths": SHARES}, None, [73], VT)
    assert pull(follow)[2] == pull(follow)[4] == 0.0  # nothing heard yet: as the style
    for start in range(12):
        follow.on_note(start * 4, 60, 4, 73)
    leaning = pull(follow)
    assert leaning[2] > 0 > leaning[4]
    assert leaning[16] == 0.0  # a length neither plays: no pull, up or down
    for start in range(12, 30):
        follow.on_note(start * 16, 60, 16, 73)  # whole bars held, which the style never plays
    assert pull(follow)[16] == -LENGTH_CAP
    balanced = PlanFollower(PLAN, {"lengths": SHARES}, None, [73], VT)
    for start in range(24):
        balanced.on_note(start * 4, 60, 4 if start % 2 else 2, 73)  # as the style: half and half
    assert abs(pull(balanced)[2]) < 0.01 and abs(pull(balanced)[4]) < 0.01


def test_drums_and_a_card_without_lengths_leave_the_lengths_alone():
    follow = PlanFollower(PLAN, {"lengths": SHARES}, None, [73, -1], VT)
    for start in range(12):
        follow.on_note(start * 4, 42, 4, -1)  # a drum: no line's rhythm
    assert pull(follow)[2] == pull(follow)[4] == 0.0
    plain = PlanFollower(PLAN, {}, None, [73], VT)
    for start in range(12):
        plain.on_note(start * 4, 60, 4, 73)
    assert set(pull(plain).values()) == {0.0}


def test_a_steer_keeps_the_lengths_heard_so_far():
    old = PlanFollower(PLAN, {"lengths": SHARES}, None, [73], VT)
    for start in range(12):
        old.on_note(start * 4, 60, 4, 73)
    assert pull(refollow(old, PlanFollower(PLAN, {"lengths": SHARES}, None, [73], VT))) == pull(old)


def test_the_style_s_note_lengths_are_learnt():
    notes = np.array([(0, 60, 2, 73), (2, 62, 2, 73), (4, 64, 4, 73), (8, 65, 12, 73), (0, 36, 4, -1)])
    learnt = learn_form([{"bar": 320, "key": "C major"}], [notes])["lengths"]
    assert learnt == pytest.approx([0, 0, 0.5, 0, 0.25, 0, 0, 0.25, 0, 0, 0, 0, 0, 0])


@pytest.mark.timeout(300)
def test_irish_tunes_play_their_style_s_lengths_nearer_with_the_pull():
    """The real model and sampler: Irish tunes with the shipped card's form, and the same form without its
    lengths, against the lengths of the style's training pieces that the card learnt."""
    loaded = load_model(None)
    form = loaded.card["style_defaults"]["irish"]["form"]
    plain = {k: v for k, v in form.items() if k != "lengths"}
    target = np.asarray(form["lengths"])

    def distance(profile: dict) -> float:
        style = {**loaded.card["style_defaults"]["irish"], "form": profile}
        card = {**loaded.card, "style_defaults": {**loaded.card["style_defaults"], "irish": style}}
        composer = Composer(dataclasses.replace(loaded, card=card))
        counts = np.zeros(metrics.LENGTH_BINS)
        for seed in (0, 1, 2):
            request = make_request(composer.loaded, "irish", None, None, 20, seed, critic=1)
            counts += metrics.length_counts(notes_array(composer.compose(request).notes))
        return metrics.js_distance(counts / counts.sum(), target)

    before, after = distance(plain), distance(form)
    assert after < 0.75 * before, (before, after)
