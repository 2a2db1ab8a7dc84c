"""The clash steer (generator.steering): strong beats clash no more often than the style's real ones do."""

from __future__ import annotations

import numpy as np
import torch

from generator.plan import Phrase, Plan, Section, learn_form
from generator.steering import CLASH_PENALTY, PlanFollower, VocabTensors

LOW, HIGH = 48, 72  # a toy vocabulary of these pitches (ids 0-24), then the programs 40 and 42 (ids 25-26)
PITCHES = list(range(LOW, HIGH + 1))
VT = VocabTensors(
    pitch_of=torch.tensor([*PITCHES, -1, -1]),
    is_pitch=torch.tensor([True] * len(PITCHES) + [False] * 2),
    is_timeshift=torch.zeros(len(PITCHES) + 2, dtype=torch.bool),
    shift_of=torch.zeros(len(PITCHES) + 2, dtype=torch.int64),
    program_of=torch.tensor([-2] * len(PITCHES) + [40, 42]),
    duration_of=torch.zeros(len(PITCHES) + 2, dtype=torch.int64),
)
PLAN = Plan(32, 8, (Section("A", 0, 8),), (Phrase(0, 8, 0, 0),))  # 4/4 bars of 32 steps


def follower(clashes: float | None, tritone: bool = False) -> PlanFollower:
    profile = {} if clashes is None else {"clashes": clashes, "clash_tritone": tritone}
    return PlanFollower(PLAN, profile, None, [40, 42], VT)


def penalised(follow: PlanFollower, time: int) -> list[int]:
    """The pitches the clash steer pushes down for the second voice at `time`, by CLASH_PENALTY each."""
    steered = follow.pitch_bias(torch.zeros(len(PITCHES) + 2), 42, time)
    target, follow.clash_target = follow.clash_target, None
    plain = follow.pitch_bias(torch.zeros(len(PITCHES) + 2), 42, time)  # the other steers alone
    follow.clash_target = target
    taken = (plain - steered)[: len(PITCHES)].tolist()
    assert all(t in (0.0, CLASH_PENALTY) for t in taken)
    return [p for p, t in zip(PITCHES, taken, strict=True) if t]


def test_on_a_strong_beat_a_semitone_or_major_seventh_against_a_held_note_is_pushed_down():
    follow = follower(0.0)
    follow.on_note(32, 60, 32, 40)  # C struck on the downbeat of bar 2
    assert penalised(follow, 32) == [49, 59, 61, 71]
    follow.on_note(40, 60, 24, 40)
    assert penalised(follow, 40) == []  # beat 2 is weak: a passing clash is free
    assert penalised(follow, 48) == [49, 59, 61, 71]  # the half-bar of 4/4 is strong
    assert penalised(follower(None), 32) == []  # a card without the style's share steers nothing


def test_a_style_that_clashes_now_and_then_gets_its_clashes_when_the_piece_is_under_its_share():
    follow = follower(0.5)
    follow.on_note(0, 60, 32, 40)
    assert penalised(follow, 0)  # no strong beat heard yet: one clash would be all of them
    follow.on_note(0, 64, 32, 42)  # C-E on the first downbeat: no clash
    follow.on_note(32, 60, 32, 40)
    assert penalised(follow, 32) == []  # one clash in two strong beats is the style's half
    follow.on_note(32, 61, 32, 42)  # C-C#: it clashes
    follow.on_note(64, 60, 32, 40)
    assert penalised(follow, 64)  # now one in three would be two in three


def test_a_style_that_hears_the_tritone_over_the_bass_as_a_clash_avoids_it_too():
    for tritone in (True, False):
        follow = follower(0.0, tritone)
        follow.on_note(32, 60, 32, 40)
        # F# over the C (66), or a new bass F# a tritone under it (54): a clash only in such a style.
        assert ({54, 66} <= set(penalised(follow, 32))) == tritone


def test_the_style_s_share_of_clashing_strong_beats_is_learnt():
    # Two voices in 4/4: on the first downbeat C over C (no clash), on the second C against B, then F# over C.
    notes = np.array(
        [
            (0, 48, 32, 42),
            (0, 60, 32, 40),
            (32, 48, 32, 42),
            (32, 59, 32, 40),
            (64, 48, 32, 42),
            (64, 66, 32, 40),
            (64, 64, 32, 73),
        ]
    )
    row = {"bar": 384, "pickup": 0, "sections": [], "fermatas": [], "key": "C"}
    assert learn_form([row], [notes])["clashes"] == 0.5  # C-C has one pitch class: two strong beats judged
    learnt = learn_form([row], [notes], tritone=True)
    assert learnt["clashes"] == 1.0 and learnt["clash_tritone"]
