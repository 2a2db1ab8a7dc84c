"""The critic hears a part that drops out of the texture: a bar whose voices fall silent for longer than the
style's real voices do scores lower, and the plan carries the style's share so that the critic knows it."""

from __future__ import annotations

from dataclasses import replace

from generator import critic
from generator.decode import Note
from generator.model import load_model
from generator.plan import Phrase, Plan, Section, draw_plan, form_profile

VIOLIN, VIOLA, CELLO = 40, 41, 42
CHORALE = Plan(32, 4, (Section("A", 0, 4),), (Phrase(0, 4, 0, 0),), rests=0.05)
SETUP = critic.Setup(CHORALE, "C", (VIOLIN, VIOLA, CELLO), leap_share=0.15, bar=32)


def _bar(notes: list[tuple[int, int, int, int]]) -> list[Note]:
    return [Note(start, pitch, duration, program) for start, pitch, duration, program in notes]


def _chorale_bar(start: int, tune: tuple[int, ...]) -> list[Note]:
    """Three voices in crotchets from `start`, the violin playing `tune` (0: a crotchet's rest)."""
    notes = [(start + 8 * b, p, 8, VIOLIN) for b, p in enumerate(tune) if p]
    notes += [(start + 8 * b, p, 8, VIOLA) for b, p in enumerate((64, 65, 64, 62))]
    notes += [(start + 8 * b, p, 8, CELLO) for b, p in enumerate((48, 50, 52, 55))]
    return _bar(notes)


def test_a_voice_that_drops_out_mid_bar_scores_lower_than_one_that_sings_on() -> None:
    before = critic.context(_chorale_bar(0, (72, 74, 76, 77)), 32, 32)
    sung = critic.score(SETUP, before, _chorale_bar(32, (79, 77, 76, 74)), 32)
    dropped = critic.score(SETUP, before, _chorale_bar(32, (79, 0, 0, 74)), 32)  # half a bar silent
    assert sung.measures["rests"] == 1.0
    # Silent 16 of 96 part-steps (0.167), 0.117 over the style's 0.05: 1 - 0.117 / 0.2.
    assert abs(dropped.measures["rests"] - (1 - (16 / 96 - 0.05) / critic.REST_TOLERANCE)) < 1e-9
    assert critic.best([dropped, sung]) == 1


def test_a_note_held_into_the_bar_counts_as_sounding_and_a_late_entry_is_not_a_rest() -> None:
    # The violin's whole note from the bar before holds through this bar: no rest.
    held = _bar([(0, 72, 64, VIOLIN), (0, 64, 32, VIOLA), (0, 48, 32, CELLO)])
    before = critic.context(held, 32, 32)
    inner = _bar([(32 + 8 * b, p, 8, VIOLA) for b, p in enumerate((64, 65, 64, 62))])
    inner += _bar([(32 + 8 * b, p, 8, CELLO) for b, p in enumerate((48, 50, 52, 55))])
    assert critic.score(SETUP, before, inner, 32).measures["rests"] == 1.0
    # A cello that has not played yet and enters on beat 3 is counted from its entry, not as silent before.
    entering = _bar([(0, 72, 32, VIOLIN), (0, 64, 32, VIOLA), (16, 48, 16, CELLO)])
    assert critic.score(SETUP, critic.context([], 0, 32), entering, 0).measures["rests"] == 1.0
    # A style whose parts rest often (a quartet's 21 %) is not judged: there it cost more than it gave.
    loose = replace(SETUP, plan=replace(CHORALE, rests=0.21))
    before = critic.context(_chorale_bar(0, (72, 74, 76, 77)), 32, 32)
    assert "rests" not in critic.score(loose, before, _chorale_bar(32, (79, 0, 0, 74)), 32).measures
    # A plan without the style's share (an older card, a record written before it) judges nothing.
    unknown = replace(SETUP, plan=replace(CHORALE, rests=None))
    assert "rests" not in critic.score(unknown, before, _chorale_bar(32, (79, 0, 0, 74)), 32).measures


def test_the_plan_carries_the_styles_rests_from_the_card_and_keeps_them_in_its_record() -> None:
    loaded = load_model()
    profile = form_profile(loaded.card, "bach")
    plan = draw_plan(profile, 30.0, 80.0, seed=3, minor=False)
    assert plan.rests == profile["rhythm"]["rests"] < 0.1  # a chorale's voices sound almost all the time
    assert Plan.from_dict(plan.to_dict()) == plan
    old = {k: v for k, v in plan.to_dict().items() if k != "rests"}  # a record from before
    assert Plan.from_dict(old).rests is None
