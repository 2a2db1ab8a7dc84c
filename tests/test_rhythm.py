"""generator.rhythm: a style's rests and steps learnt from notes, and the steer they give the sampler."""

from __future__ import annotations

import numpy as np
import torch

from generator.rhythm import SILENT_BONUS, RhythmFollower, learn_rhythm
from generator.steering import VocabTensors

# A toy vocabulary: pitches 60-64 (ids 0-4), time shifts of 2, 4 and 8 steps (5-7), programs 40 and 42 (8-9).
VT = VocabTensors(
    pitch_of=torch.tensor([60, 61, 62, 63, 64, -1, -1, -1, -1, -1]),
    is_pitch=torch.tensor([True] * 5 + [False] * 5),
    is_timeshift=torch.tensor([False] * 5 + [True] * 3 + [False] * 2),
    shift_of=torch.tensor([0] * 5 + [2, 4, 8] + [0, 0]),
    program_of=torch.tensor([-2] * 8 + [40, 42]),
    duration_of=torch.zeros(10, dtype=torch.int64),
)


def test_learns_how_often_parts_rest_and_lines_step() -> None:
    legato = np.array([[0, 60, 8, 40], [8, 62, 8, 40], [16, 64, 8, 40], [24, 67, 8, 40]])
    # The same line with a rest of 8 steps after each note, and a repeated note (not a move).
    detached = np.array([[0, 60, 8, 40], [16, 60, 8, 40], [32, 62, 8, 40], [48, 67, 8, 40]])
    assert learn_rhythm([legato]) == {"rests": 0.0, "steps": round(2 / 3, 5)}
    learnt = learn_rhythm([detached])
    assert learnt["rests"] == round(24 / 56, 5) and learnt["steps"] == 0.5
    assert learn_rhythm([]) == {}


def test_a_legato_style_moves_time_only_to_where_a_voice_falls_silent_and_favours_it() -> None:
    follower = RhythmFollower({"rests": 0.01}, [40, 42], VT)
    follower.on_note(0, 60, 4, 40)  # ends at 4
    follower.on_note(0, 64, 8, 42)  # ends at 8
    mask, scores = follower.boundary(torch.ones(10, dtype=torch.bool), torch.zeros(10), 0)
    assert mask[5:8].tolist() == [True, True, False]  # a shift of 8 would pass the first voice's end
    assert scores[8:].tolist() == [0.0, 0.0]  # both voices struck at this onset
    mask, scores = follower.boundary(torch.ones(10, dtype=torch.bool), torch.zeros(10), 4)
    assert scores[8:].tolist() == [SILENT_BONUS, 0.0]  # the first voice is silent, the second still sounds


def test_a_style_whose_parts_rest_or_a_single_line_is_not_held_to_legato() -> None:
    for follower in (RhythmFollower({"rests": 0.2}, [40, 42], VT), RhythmFollower({"rests": 0.01}, [40], VT)):
        follower.on_note(0, 60, 4, 40)
        mask, scores = follower.boundary(torch.ones(10, dtype=torch.bool), torch.zeros(10), 4)
        assert bool(mask.all()) and not bool(scores.any())


def test_a_line_leans_to_steps_as_much_as_its_style_steps() -> None:
    stepping = RhythmFollower({"steps": 0.75}, [40], VT)
    stepping.on_note(0, 62, 4, 40)
    bias = stepping.pitch_bias(torch.zeros(10), 40, 4)
    step = np.log(3.0)  # the log-odds of stepping 75 % of the time, at STEP_GAIN 1
    assert np.allclose(bias[:5].numpy(), [step, step, 0.0, step, step])
    assert not bool(stepping.pitch_bias(torch.zeros(10), 40, 0).any())  # a chord note under its own onset
    leaping = RhythmFollower({"steps": 0.4}, [40], VT)
    leaping.on_note(0, 62, 4, 40)
    assert not bool(leaping.pitch_bias(torch.zeros(10), 40, 4).any())
