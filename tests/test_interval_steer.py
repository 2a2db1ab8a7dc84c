"""The interval steer (generator.steering): voices move by the style's intervals, and the pull stops once the
piece already does."""

from __future__ import annotations

import numpy as np
import torch

from generator import metrics
from generator.plan import Phrase, Plan, Section
from generator.steering import INTERVAL_WEIGHT, PlanFollower, VocabTensors

LOW, HIGH = 48, 84  # a toy vocabulary of these pitches (ids 0-36), then the programs 40 and 42 (ids 37-38)
PITCHES = list(range(LOW, HIGH + 1))
SIZE = len(PITCHES) + 2
VT = VocabTensors(
    pitch_of=torch.tensor([*PITCHES, -1, -1]),
    is_pitch=torch.tensor([True] * len(PITCHES) + [False] * 2),
    is_timeshift=torch.zeros(SIZE, dtype=torch.bool),
    shift_of=torch.zeros(SIZE, dtype=torch.int64),
    program_of=torch.tensor([-2] * len(PITCHES) + [40, 42]),
    duration_of=torch.zeros(SIZE, dtype=torch.int64),
)
PLAN = Plan(32, 64, (Section("A", 0, 64),), (Phrase(0, 64, 0, 0),))  # one long phrase of 4/4 bars
# A style that steps by a tone up or down half the time and leaps a fifth (either way) the other half.
SHARES = np.full(25, 0.0)
SHARES[[10, 14]] = 0.25
SHARES[[5, 19]] = 0.25


def follower(programs: tuple[int, ...] = (40, 42)) -> PlanFollower:
    return PlanFollower(PLAN, {"intervals": SHARES.tolist()}, None, list(programs), VT)


def pull(follow: PlanFollower, program: int, time: int, interval: int) -> float:
    """The logits the steer adds to `program`'s next note at `time` for the move `interval` from its last."""
    _, top = follow.melody[program]
    return float(follow.pitch_bias(torch.zeros(SIZE), program, time)[PITCHES.index(top + interval)])


def fixed_prior(interval: int) -> float:
    """The style's shares as a fixed log-prior, as the steer pulled before the piece is heard."""
    shares = np.maximum(SHARES, 0.001)
    return float(INTERVAL_WEIGHT * np.log(shares[interval + 12] / shares.max()))


def test_before_any_interval_is_heard_the_pull_is_the_style_s_fixed_prior() -> None:
    follow = follower()
    follow.on_note(0, 60, 8, 40)
    for interval in (-7, -2, 0, 2, 5, 7):
        assert np.isclose(pull(follow, 40, 8, interval), fixed_prior(interval), atol=1e-6)


def test_a_piece_that_only_steps_is_pulled_to_leap_and_one_at_the_style_s_shares_is_left_be() -> None:
    stepping = follower()
    for i, pitch in enumerate([60, 62, 64, 62, 60, 62, 64, 62, 60, 62, 64]):
        stepping.on_note(8 * i, pitch, 8, 40)
    time = 8 * 11
    # The fifth the style takes half the time, never taken yet, is favoured above the fixed prior; the tone
    # it has taken every time is held below it.
    assert pull(stepping, 40, time, 7) > fixed_prior(7) + 1.0
    assert pull(stepping, 40, time, 2) < fixed_prior(2) - 0.5
    at_shares = follower()
    for i, pitch in enumerate([60, 62, 69, 67, 60, 62, 69, 67, 60]):  # +2 +7 -2 -7 twice: the style's own
        at_shares.on_note(8 * i, pitch, 8, 40)
    for interval in (-7, -2, 2, 7):  # within what the floor on the intervals it never takes leaves
        assert np.isclose(pull(at_shares, 40, 8 * 9, interval), fixed_prior(interval), atol=0.05)


def test_the_piece_s_intervals_are_counted_as_eval_counts_them() -> None:
    # Two voices, chords in one of them (its melody is its highest note at each onset, whatever order its
    # notes come in), a repeated note and leaps wider than an octave.
    notes = [
        (0, 60, 8, 40),
        (0, 48, 8, 42),
        (8, 64, 8, 40),
        (8, 67, 8, 40),
        (8, 55, 8, 42),
        (16, 62, 8, 40),
        (16, 55, 8, 42),
        (16, 79, 8, 40),
        (24, 50, 8, 42),
        (24, 52, 8, 42),
        (32, 60, 8, 40),
        (32, 83, 8, 42),
    ]
    follow = follower()
    for note in notes:
        follow.on_note(*note)
    assert list(follow.moves) == metrics.interval_counts(np.array(notes), 12).astype(int).tolist()


def test_a_single_line_gets_no_interval_steer() -> None:
    follow = follower((40,))
    follow.on_note(0, 60, 8, 40)
    follow.on_note(8, 62, 8, 40)
    assert not bool(follow.pitch_bias(torch.zeros(SIZE), 40, 16).any())


def test_a_steer_s_new_follower_goes_on_from_the_tallies_of_the_notes_so_far() -> None:
    from generator.steer import refollow

    stepping = follower()
    for i, pitch in enumerate([60, 62, 64, 62, 60, 62, 64, 62, 60, 62, 64]):
        stepping.on_note(8 * i, pitch, 8, 40)
    time = 8 * 11
    after = refollow(stepping, follower())  # a steer (here the same instruments) builds the follower anew
    assert (after.moves, after.came_from, after.heard, after.strong) == (
        stepping.moves,
        stepping.came_from,
        stepping.heard,
        stepping.strong,
    )
    # The pull goes on as before the steer, not as at the piece's first note.
    for interval in (-7, -2, 2, 7):
        assert np.isclose(pull(after, 40, time, interval), pull(stepping, 40, time, interval), atol=1e-6)
    # A voice the steer took away leaves no melody behind, and the bins stay those of the new follower's style.
    alone = refollow(stepping, follower((42,)))
    assert 40 not in alone.came_from and len(alone.moves) == len(follower((42,)).moves)
