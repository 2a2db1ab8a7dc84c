"""A piece's plan: learnt from real pieces, drawn by the seed, and followed by the notes."""

from __future__ import annotations

import copy

import mido
import numpy as np
import pytest

from generator import data
from generator.decode import notes_array
from generator.model import load_model
from generator.plan import TICKS_PER_STEP, Plan, draw_plan, learn_form, learn_forms, written_repeats
from generator.sampling import Composer, PieceRequest
from generator.vocab import KEYS, Vocab

REEL = {
    "bar": 16,  # 2/4
    "forms": [{"bar": 16, "sections": [[4, True], [4, True]], "count": 3}],
    "phrase_bars": {"2": 5},
    "cadences": {"0": 3, "7": 2},
    "pitch_classes": {"major": [0.2, 0, 0.15, 0, 0.15, 0.1, 0, 0.2, 0, 0.1, 0, 0.1], "minor": [1 / 12] * 12},
    "single_line": [42, 73],
    "programs": [42, 73],
}


def test_the_seed_draws_the_plan_and_the_plan_fills_the_piece():
    first = draw_plan(REEL, 20.0, 120.0, seed=5)
    assert first == draw_plan(REEL, 20.0, 120.0, seed=5)
    assert first.bars == 20  # 40 beats of 2/4
    assert sum(s.bars for s in first.sections) == first.bars
    assert sum(p.bars for p in first.phrases) == first.bars
    starts = [sum(p.bars for p in first.phrases[:i]) for i in range(len(first.phrases))]
    assert [p.start for p in first.phrases] == starts
    assert first.phrases[-1].cadence == 0  # the piece ends on its tonic
    assert Plan.from_dict(first.to_dict()) == first


def test_a_tune_plays_each_strain_twice_then_again_from_the_top():
    plan = draw_plan(REEL, 20.0, 120.0, seed=1)
    assert plan.form == "A A B B A"
    a, a2, b, b2, a3 = plan.sections
    assert (a.returns, a2.returns, b.returns, b2.returns, a3.returns) == (None, 0, None, 2, 0)
    through = draw_plan({"forms": [{"bar": 32, "sections": [[4, False]], "count": 1}]}, 30.0, 120.0, seed=1)
    assert through.form == "A B C D"  # music written straight through never returns


def _row(bar_ticks: int, sections, fermatas=(), key="G") -> dict:
    return {"bar": bar_ticks, "pickup": 0, "sections": sections, "fermatas": list(fermatas), "key": key}


def test_learns_metre_shape_phrases_cadences_and_single_lines_from_real_pieces():
    # Two 3/4 tunes of two repeated 8-bar strains (8 bars = 192 steps = 2,304 ticks), one voice, ending on G.
    tune = np.array([(i * 8, 67 + (i % 3) * 2, 8, 73) for i in range(48)] + [(376, 55, 8, 73)], dtype=np.int32)
    rows = [_row(288, [[0, 2304, True], [2304, 4608, True]]) for _ in range(2)]
    profile = learn_form(rows, [tune, tune])
    assert profile["bar"] == 24
    assert profile["forms"] == [{"bar": 24, "sections": [[8, True], [8, True]], "count": 2}]
    assert profile["phrase_bars"] == {"4": 4}  # an eight-bar strain is two phrases
    assert profile["cadences"]["0"] >= 2  # a strain that ends on G in G rests on the tonic
    assert profile["single_line"] == [73]
    # A chorale marks its phrases with fermatas: every two bars here.
    bass, tune = [(t, 55, 16, 42) for t in range(0, 256, 16)], [(t, 71, 8, 40) for t in range(0, 256, 8)]
    chorale = np.array(bass + tune)
    profile = learn_form([_row(384, [[0, 3072, False]], fermatas=[768, 1536, 2304, 3072])], [chorale])
    assert profile["phrase_bars"] == {"2": 4}


def _tonic(key: str) -> int:
    return KEYS.index(key) % 12


def _passage(notes: np.ndarray, plan: Plan, section) -> list[tuple]:
    """A section's notes, but its last bar, timed from its start."""
    begin, end = section.start * plan.bar, (section.start + section.bars - 1) * plan.bar
    inside = notes[(notes[:, 0] >= begin) & (notes[:, 0] < end)]
    return [(s - begin, p, d, g) for s, p, d, g in inside.tolist()]


@pytest.fixture(scope="module")
def reel_composer(tiny_model):
    loaded = load_model(tiny_model / "best")
    loaded.card = copy.deepcopy(loaded.card)
    loaded.card.setdefault("style_defaults", {}).setdefault("irish", {})["form"] = REEL
    return Composer(loaded)


def test_the_notes_follow_the_plan(reel_composer):
    request = PieceRequest("irish", ("flute", "cello"), 120.0, 20.0, seed=3, key="G")
    piece = reel_composer.compose(request)
    plan = piece.plan
    assert plan is not None and plan.form == "A A B B A"
    notes = notes_array(piece.notes)
    # It ends on a downbeat at its requested length, every instrument striking a long tonic chord.
    last = notes[notes[:, 0] == notes[:, 0].max()]
    assert notes[:, 0].max() == (plan.bars - 1) * plan.bar
    assert sorted(last[:, 3].tolist()) == [42, 73]
    assert (last[:, 2] >= 8).all()
    assert int(last[last[:, 3] == 42, 1][0]) % 12 == _tonic("G")  # the cello, the bass, on G
    assert int(last[last[:, 3] == 73, 1][0]) % 12 in {7, 11, 2}  # the flute in the G major chord
    # The second A plays the first again, all but its last bar (a second ending of its own), and the strain
    # after the first round comes back as it was first played too.
    a = plan.sections[0]
    assert _passage(notes, plan, a) and _passage(notes, plan, plan.sections[1]) == _passage(notes, plan, a)
    assert _passage(notes, plan, plan.sections[4]) == _passage(notes, plan, a)
    # Both instruments play single lines: no note still sounds when its instrument's next note starts.
    for program in (42, 73):
        mine = notes[notes[:, 3] == program]
        assert (mine[:-1, 0] + mine[:-1, 2] <= mine[1:, 0]).all()
        assert len(np.unique(mine[:, 0])) == len(mine)


def test_a_four_minute_piece_keeps_its_form_to_the_end(reel_composer):
    piece = reel_composer.compose(PieceRequest("irish", ("flute",), 120.0, 240.0, seed=8, key="D"))
    plan = piece.plan
    assert plan is not None and plan.bars == 240
    assert plan.form.startswith("A A B B A A B B A A B B")
    notes = notes_array(piece.notes)
    assert notes[:, 0].max() == (plan.bars - 1) * plan.bar  # still ends on its last downbeat, on the tonic
    assert int(notes[notes[:, 0] == notes[:, 0].max(), 1][0]) % 12 == _tonic("D")
    for section in plan.sections:
        if section.returns is not None and section.bars == plan.sections[section.returns].bars:
            assert _passage(notes, plan, section) == _passage(notes, plan, plan.sections[section.returns])


def test_a_planned_piece_is_the_same_for_the_same_seed(reel_composer):
    request = PieceRequest("irish", ("flute", "cello"), 120.0, 12.0, seed=11)
    assert reel_composer.compose(request).tokens == reel_composer.compose(request).tokens
    assert list(reel_composer.stream(request)) == reel_composer.compose(request).tokens


def _midi_in_three_four(path, bars: int) -> None:
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("time_signature", numerator=3, denominator=4))
    track.append(mido.Message("program_change", program=71, channel=0))
    for i in range(bars * 3):
        track.append(mido.Message("note_on", note=60 + (i * 7) % 12, velocity=80, time=0))
        track.append(mido.Message("note_off", note=60 + (i * 7) % 12, velocity=0, time=480))
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)


def test_a_users_midi_style_gets_a_plan_in_its_own_metre(tmp_path):
    for i in range(3):
        _midi_in_three_four(tmp_path / "mine" / "waltzes" / f"w{i}.mid", bars=16)
    report = data.extract_all(data.midi_sources(tmp_path / "mine"), tmp_path / "cache", workers=1)
    data.write_dataset(report, tmp_path / "dataset", valid_percent=0.0)
    forms = learn_forms(tmp_path / "dataset", Vocab.load(tmp_path / "dataset"))
    assert forms["waltzes"]["bar"] == 24
    plan = draw_plan(forms["waltzes"], 30.0, 120.0, seed=2)
    assert plan.bar == 24 and plan.bars == 20  # 60 beats of 3/4


def test_every_length_gets_a_plan_that_fills_it():
    for seconds in (1.0, 3.0, 7.5, 30.0, 240.0):
        for seed in range(20):
            plan = draw_plan(REEL, seconds, 97.0, seed)
            assert sum(p.bars for p in plan.phrases) == plan.bars == sum(s.bars for s in plan.sections)
            assert all(p.bars >= 1 for p in plan.phrases)


def _line(pitches: list[int], at: int, step: int = 4) -> list[tuple[int, int, int, int]]:
    return [(at + i * step, p, step, 0) for i, p in enumerate(pitches)]


def test_music_written_out_twice_is_learnt_as_a_repeated_section():
    tune = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 71, 67, 62, 60]  # four bars of quarter notes
    other = [69, 67, 65, 64, 62, 64, 65, 67, 69, 71, 72, 67, 64, 62, 60, 60]
    bar = 16
    aab = np.array(_line(tune, 0) + _line(tune, 64) + _line(other, 128))
    assert written_repeats([(0, 192, False)], aab, bar) == [(0, 64, True), (128, 192, False)]
    # Through-composed music stays one section; a marked repeat is left as the score has it.
    ab = np.array(_line(tune, 0) + _line(other, 64))
    assert written_repeats([(0, 128, False)], ab, bar) == [(0, 128, False)]
    assert written_repeats([(0, 64, True)], aab, bar) == [(0, 64, True)]
    # A pickup belongs to the repeated strain; a second ending (its last two notes changed) still repeats.
    varied = [*tune[:-2], 59, 55]
    with_pickup = np.array([(0, 55, 4, 0), *_line(tune, 4), *_line(varied, 68), *_line(other, 132)])
    assert written_repeats([(0, 196, False)], with_pickup, bar, pickup=4) == [(0, 68, True), (132, 196, False)]


def test_a_style_whose_songs_repeat_in_writing_plans_returns():
    tune = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 71, 67, 62, 60]
    other = [69, 67, 65, 64, 62, 64, 65, 67, 69, 71, 72, 67, 64, 62, 60, 60]
    song = np.array(_line(tune, 0) + _line(tune, 64) + _line(other, 128))
    rows = [{"bar": 16 * TICKS_PER_STEP, "key": "C", "sections": []}] * 3
    profile = learn_form(rows, [song] * 3)
    assert profile["forms"][0]["sections"] == [[4, True], [4, False]]
    drawn = draw_plan(profile, seconds=30.0, tempo=100.0, seed=5)
    assert any(s.returns is not None for s in drawn.sections)


def test_a_long_piece_plays_a_tune_three_times_then_a_new_one():
    plan = draw_plan(REEL, 400.0, 120.0, seed=3)
    passes = [
        s for s in plan.sections if s.returns is None
    ]  # new music: a tune's strains, then the next tune's
    strains = len(REEL["forms"][0]["sections"])
    assert len(passes) > strains  # past three times through, new strains
    first_tune = {s.label for s in passes[:strains]}
    returns_of_first = [s for s in plan.sections if s.label in first_tune and s.returns is not None]
    # Each strain: played twice in each of three passes, so five returns (a repeat, then two more passes).
    assert len(returns_of_first) == strains * 5


def test_the_final_chord_lets_go_together_at_the_piece_s_end():
    # Seed 0 of a Bach quartet with the critic at 2 held its contrabass two bars past the end, five beats after
    # the other voices had stopped, before the final chord's length had a ceiling and a common release.
    from dataclasses import replace

    from generator.decode import decode
    from generator.recipes import make_request

    composer = Composer(load_model())
    for style, seed in (("bach", 0), ("classical", 2)):
        request = replace(make_request(composer.loaded, style, seconds=30, seed=seed), critic=2)
        notes = decode(composer.loaded.vocab, composer.compose(request).tokens)
        plan = composer.plan(request)
        last = max(n.start for n in notes)
        final = [n for n in notes if n.start == last]
        assert len(final) >= 2 and len({n.end() for n in final}) == 1, (style, [n.end() for n in final])
        assert max(n.end() for n in notes) <= plan.end(), style
