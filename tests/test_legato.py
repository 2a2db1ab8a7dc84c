"""Parts that strike chords but let each note go by their next onset (a quartet's double stops)."""

from __future__ import annotations

import numpy as np
import torch

from generator.plan import Phrase, Plan, Section, learn_form
from generator.steering import PlanFollower, VocabTensors

ROW = {"bar": 384, "pickup": 0, "sections": [], "fermatas": [], "key": "C"}


def test_chords_without_overhang_are_legato_not_a_single_line():
    # (start, pitch, duration, program) in steps: a viola striking double stops that end by its next onset, a
    # violin's single line, and a piano holding its bass under a moving tune.
    viola = [(t, p, 8, 41) for t in range(0, 160, 8) for p in (55, 62)]
    violin = [(t, 76, 8, 40) for t in range(0, 160, 8)]
    piano = [(t, 48, 32, 0) for t in range(0, 160, 32)] + [(t, 72, 8, 0) for t in range(0, 160, 8)]
    learnt = learn_form([ROW], [np.array(viola + violin + piano)])
    assert learnt["single_line"] == [40]
    assert learnt["legato"] == [40, 41]


def _follower(profile: dict) -> tuple[PlanFollower, torch.Tensor]:
    programs = [40, 41, 42]
    vt = VocabTensors(
        pitch_of=torch.tensor([60, -1, -1, -1, -1]),
        is_pitch=torch.tensor([True, False, False, False, False]),
        is_timeshift=torch.tensor([False, False, False, False, True]),
        shift_of=torch.tensor([0, 0, 0, 0, 4]),
        program_of=torch.tensor([-2, 40, 41, 42, -2]),
        duration_of=torch.zeros(5, dtype=torch.int64),
    )
    plan = Plan(32, 64, (Section("A", 0, 64),), (Phrase(0, 64, 0, 0),))
    return PlanFollower(plan, profile, None, programs, vt), torch.ones(5, dtype=torch.bool)


def _free(follow: PlanFollower, everything: torch.Tensor, time: int) -> list[int]:
    mask = follow.boundary_mask(everything, time)
    return [int(p) for p in follow.vt.program_of[mask] if p >= 0]


def test_a_legato_part_waits_for_its_note_but_may_add_to_its_chord():
    follow, everything = _follower({"legato": [40, 41], "single_line": [40], "programs": [40, 41, 42]})
    follow.on_note(0, 67, 16, 41)  # the viola holds two beats
    follow.on_note(0, 76, 8, 40)  # the violin one
    follow.on_note(0, 48, 16, 42)  # the cello is neither: it may strike again while it sounds
    assert _free(follow, everything, 0) == [41, 42]  # a double stop at the same onset; the single line not
    assert _free(follow, everything, 8) == [40, 42]  # the viola still sounds: it waits
    assert _free(follow, everything, 16) == [40, 41, 42]


def test_a_card_from_before_legato_leaves_the_parts_free():
    follow, everything = _follower({"single_line": [40], "programs": [40, 41, 42]})
    follow.on_note(0, 67, 16, 41)
    assert _free(follow, everything, 8) == [40, 41, 42]
