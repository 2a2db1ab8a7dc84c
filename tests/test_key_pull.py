"""The key pull (generator.steering): a pitch class is pulled down only as far as the piece overplays it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.plan import Phrase, Plan, Section
from generator.steering import KEY_CAP, PlanFollower, VocabTensors

LOW, HIGH = 48, 71  # a toy vocabulary of two octaves of pitches, then a program token
PITCHES = list(range(LOW, HIGH + 1))
N = len(PITCHES)
VT = VocabTensors(
    pitch_of=torch.tensor([*PITCHES, -1]),
    is_pitch=torch.tensor([True] * N + [False]),
    is_timeshift=torch.zeros(N + 1, dtype=torch.bool),
    shift_of=torch.zeros(N + 1, dtype=torch.int64),
    program_of=torch.tensor([-2] * N + [73]),
    duration_of=torch.zeros(N + 1, dtype=torch.int64),
)
PLAN = Plan(32, 8, (Section("A", 0, 8),), (Phrase(0, 8, 0, 0),))
# A major style: its scale's degrees hold 95 % of its notes, the raised fourth (V's leading note) 3 %.
MAJOR = np.array([0.2, 0.004, 0.12, 0.004, 0.14, 0.1, 0.03, 0.2, 0.004, 0.09, 0.004, 0.1])
PROFILE = {"pitch_classes": {"major": list(MAJOR / MAJOR.sum())}}


def _pull(follow: PlanFollower) -> dict[int, float]:
    """The key pull on each pitch class above the tonic, read off the pitches of the toy vocabulary."""
    bias = follow._key_bias()
    assert bool((bias[N:] == 0).all())  # pitches only
    out: dict[int, float] = {}
    for i, pitch in enumerate(PITCHES):
        out.setdefault((pitch - follow.tonic) % 12, round(float(bias[i]), 5))
        assert out[(pitch - follow.tonic) % 12] == round(float(bias[i]), 5)  # every octave alike
    return out


@pytest.mark.parametrize("key", ["C", "D"])
def test_a_piece_that_plays_as_its_style_is_left_alone(key):
    follow = PlanFollower(PLAN, PROFILE, key, [73], VT)
    assert set(_pull(follow).values()) == {0.0}  # before its first note
    tonic = follow.tonic
    degrees = [0, 2, 4, 5, 7, 9, 11, 0, 7, 4, 2, 7, 0, 9, 5, 11, 4, 7, 0, 2]
    for start, degree in enumerate(degrees):
        follow.on_note(start * 8, 60 + (tonic + degree) % 12, 8, 73)
    pull = _pull(follow)
    assert all(value <= 0.0 for value in pull.values())  # never up, not even for degrees it has not played
    assert pull[6] == 0.0 and pull[1] == 0.0  # the chromatic degrees it did not overplay


def test_a_chromatic_note_overplayed_is_pulled_down_as_far_as_it_is_overplayed_and_no_further():
    follow = PlanFollower(PLAN, PROFILE, "C", [73], VT)
    for start, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 67, 64, 60, 66]):
        follow.on_note(start * 8, pitch, 8, 73)  # one F sharp in eleven notes, against the style's 3 %
    few = _pull(follow)[6]
    for start in range(11, 60):
        follow.on_note(start * 8, 66, 8, 73)
    many = _pull(follow)[6]
    assert -KEY_CAP <= many < few < 0.0
    assert many == -KEY_CAP  # fifty F sharps in sixty notes: as far as the pull goes
    assert _pull(follow)[0] == 0.0  # the tonic, underplayed, is not pulled up


def test_a_mode_steer_keeps_the_piece_s_degrees():
    from generator.steer import refollow

    old = PlanFollower(PLAN, PROFILE, "C", [73], VT)
    for start in range(10):
        old.on_note(start * 8, 66, 8, 73)
    minor = {"pitch_classes": {**PROFILE["pitch_classes"], "minor": list(MAJOR / MAJOR.sum())}}
    new = refollow(old, PlanFollower(PLAN, minor, "Cm", [73], VT))
    assert new.degrees == old.degrees and _pull(new)[6] < 0.0
