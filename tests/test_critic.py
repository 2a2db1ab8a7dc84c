"""The critic: it scores literal bars as a listener would, the sampler keeps the bar it scores best, and a
piece written with it is still exact for its seed, live and offline; one candidate a bar is today's sampler."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from bot.concert.live import GenerationWorker
from bot.state.store import PieceRecord
from generator import critic
from generator.decode import Note, NoteDecoder, notes_array
from generator.form_metrics import ending, smallest_instrument_share
from generator.grammar import AT_BOUNDARY, Grammar, GrammarState
from generator.instruments import PROGRAMS
from generator.model import load_model
from generator.plan import STEPS_PER_BEAT, Phrase, Plan, Section, form_profile, key_of
from generator.recipes import make_request
from generator.rhythm import RhythmFollower
from generator.sampling import (
    Composer,
    LoopGuard,
    PieceRequest,
    _CacheState,
    _tail,
    candidate_seed,
    chosen_key,
    replay_points,
)
from generator.steering import PlanFollower

VIOLIN, CELLO = 40, 42
# A bar of 4/4 in C on I (state 0) then, at step 32, V (state 7 * 3 = 21), ending on a cadence to I at bar 2.
PLAN = Plan(32, 2, (Section("A", 0, 2),), (Phrase(0, 2, 0, 0),), (0, 0, 21, 21))
SETUP = critic.Setup(PLAN, "C", (VIOLIN, CELLO), leap_share=0.15, bar=32)


@pytest.fixture(scope="module")
def shipped() -> Composer:
    return Composer(load_model())


def _bar(notes: list[tuple[int, int, int, int]]) -> list[Note]:
    return [Note(start, pitch, duration, program) for start, pitch, duration, program in notes]


def test_chord_tones_on_the_beat_in_key_beat_notes_off_the_chord_and_out_of_key():
    # Violin and cello on C major's tones on every beat, against the same rhythm on F#, Bb, Eb, C#.
    good = _bar([(b * 8, p, 8, VIOLIN) for b, p in enumerate((72, 76, 79, 72))])
    good += _bar([(b * 8, p, 8, CELLO) for b, p in enumerate((48, 52, 55, 52))])
    bad = _bar([(b * 8, p, 8, VIOLIN) for b, p in enumerate((78, 70, 75, 73))])
    bad += _bar([(b * 8, p, 8, CELLO) for b, p in enumerate((54, 46, 51, 49))])
    before = critic.context([], 0, 32)
    good_score, bad_score = critic.score(SETUP, before, good, 0), critic.score(SETUP, before, bad, 0)
    # Eight notes each, shrunk towards a half by two: (8 + 1) / 10 and (0 + 1) / 10.
    assert good_score.measures["chord_tones"] == 0.9 and bad_score.measures["chord_tones"] == 0.1
    assert good_score.measures["key"] == 0.9 and bad_score.measures["key"] < 0.5
    assert good_score.measures["key_fit"] > 0.5 > bad_score.measures["key_fit"]  # heard in C; the other is not
    # Onsets of three pitch classes: C-E-G makes a chord, C-D-E does not.
    triad = critic.score(SETUP, before, _bar([(0, 48, 32, CELLO), (0, 64, 8, VIOLIN), (0, 67, 8, VIOLIN)]), 0)
    cluster = critic.score(SETUP, before, _bar([(0, 48, 32, CELLO), (0, 62, 8, VIOLIN), (0, 64, 8, VIOLIN)]), 0)
    assert triad.measures["chordal"] > 0.5 > cluster.measures["chordal"]
    assert "chordal" not in good_score.measures  # two voices: never three pitch classes, nothing to judge
    assert good_score.total > bad_score.total
    assert critic.best([bad_score, good_score]) == 1
    assert critic.best([good_score, good_score]) == 0  # equals: the first, whatever float noise does


def test_parallel_fifths_repeats_a_silent_instrument_and_a_missed_cadence_score_lower():
    before = critic.context(_bar([(0, 67, 8, VIOLIN), (0, 60, 8, CELLO)]), 8, 32)
    # Both voices up a step into another fifth (G/C -> A/D): parallel fifths; contrary motion is not.
    fifths = critic.score(SETUP, before, _bar([(8, 69, 8, VIOLIN), (8, 62, 8, CELLO)]), 8)
    contrary = critic.score(SETUP, before, _bar([(8, 64, 8, VIOLIN), (8, 55, 8, CELLO)]), 8)
    assert fifths.measures["parallels"] < 0.5 < contrary.measures["parallels"]
    # The bar before returns note for note: degenerate.
    first = _bar([(0, 72, 8, VIOLIN), (8, 74, 8, VIOLIN), (16, 76, 16, VIOLIN), (0, 48, 32, CELLO)])
    again = [Note(n.start + 32, n.pitch, n.duration, n.program) for n in first]
    moved = [Note(n.start + 32, n.pitch + 2, n.duration, n.program) for n in first]
    after = critic.context(first, 32, 32)
    assert critic.score(SETUP, after, again, 32).measures["repetition"] == 0.0
    assert critic.score(SETUP, after, moved, 32).measures["repetition"] == 1.0
    # A cello that has not played: the violin-only bar leaves it behind.
    lonely = critic.context(_bar([(i * 8, 72, 8, VIOLIN) for i in range(8)]), 64, 32)
    alone = critic.score(SETUP, lonely, _bar([(64 + i * 8, 74, 8, VIOLIN) for i in range(4)]), 64)
    joined = critic.score(SETUP, lonely, _bar([(64 + i * 8, 48 + i, 8, CELLO) for i in range(4)]), 64)
    assert alone.measures["instruments"] == 0.0 < joined.measures["instruments"]
    # The cadence at step 32 (bar 2's downbeat) on I: both voices, held, the bass on C.
    landed = critic.score(SETUP, after, _bar([(32, 72, 32, VIOLIN), (32, 48, 32, CELLO)]), 32)
    missed = critic.score(SETUP, after, _bar([(32, 71, 2, VIOLIN)]), 32)
    assert landed.measures["cadence"] == 1.0 > missed.measures["cadence"]
    # It is the final cadence too: the violin crossing under the cello's C onto G loses the ending on the tonic.
    crossed = critic.score(SETUP, after, _bar([(32, 55, 32, VIOLIN), (32, 60, 32, CELLO)]), 32)
    assert landed.measures["ending"] == 1.0 and crossed.measures["ending"] == 0.0


def test_leaps_score_by_how_near_the_running_share_comes_to_the_style():
    steps = critic.context(_bar([(i * 8, 60 + i % 2, 8, VIOLIN) for i in range(8)]), 64, 32)
    # Seven steps so far; one more step against one octave leap, for a style that leaps 15 % of the time.
    step = critic.score(SETUP, steps, _bar([(64, 62, 8, VIOLIN)]), 64).measures["leaps"]
    leap = critic.score(SETUP, steps, _bar([(64, 73, 8, VIOLIN)]), 64).measures["leaps"]
    assert leap > step  # 1 of 8 (12.5 %) is nearer 15 % than 0 of 8
    assert critic.leap_share({"intervals": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]}) == pytest.approx(0.5)


def test_a_restored_cache_continues_exactly_as_if_the_other_candidate_never_ran(shipped):
    fast, vocab = shipped.fast, shipped.vocab
    prefix = shipped.prefix(make_request(shipped.loaded, "bach", seconds=5, seed=1))
    music = [int(t) for t in np.flatnonzero(vocab.kind == 1)[:3]]  # any few tokens
    fast.reset()
    fast.forward(prefix)
    saved = _CacheState.of(fast)
    fast.forward(music)  # another candidate
    saved.restore(fast)
    branched = fast.forward(music[::-1])
    fast.reset()
    fast.forward(prefix)
    straight = fast.forward(music[::-1])
    assert torch.equal(branched, straight)


def test_one_candidate_is_the_sampling_loop_from_before_the_critic(shipped):
    for style, seed in (("bach", 3), ("irish", 5), ("palestrina", 7)):
        request = make_request(shipped.loaded, style, seconds=10, seed=seed)
        assert request.critic == 1  # the default
        assert list(shipped.stream(request)) == list(_loop_before_the_critic(shipped, request)), style


def test_one_candidate_is_todays_sampler_byte_for_byte(shipped):
    # Digests of what the shipped model and card sample with one candidate: older pieces re-compose exactly.
    card = hashlib.sha256((shipped.loaded.path / "card.json").read_bytes()).hexdigest()
    if (shipped.loaded.version, card) != _PINNED_MODEL:
        pytest.skip(f"pinned on model and card {_PINNED_MODEL}, these are {shipped.loaded.version}, {card}")
    for (style, seed, seconds), digest in _PINNED.items():
        request = make_request(shipped.loaded, style, seconds=seconds, seed=seed)
        assert request.critic == 1  # the default
        tokens = shipped.compose(request).tokens
        # A deliberate change to what the sampler writes re-pins these (stored pieces replay their own tokens);
        # the critic's K = 1 must never be the reason.
        assert hashlib.sha256(str(tokens).encode()).hexdigest()[:16] == digest, (style, seed)


def test_the_critic_is_exact_for_a_seed_and_writes_another_piece_than_one_candidate(shipped):
    request = replace(make_request(shipped.loaded, "bach", ["violin", "cello"], seconds=8, seed=21), critic=3)
    first = shipped.compose(request)
    again = Composer(shipped.loaded).compose(request)
    assert first.tokens == again.tokens
    assert list(shipped.stream(request)) == first.tokens
    assert first.tokens != shipped.compose(replace(request, critic=1)).tokens
    other = shipped.compose(replace(request, seed=22))
    assert [(n.start, n.pitch) for n in other.notes] != [(n.start, n.pitch) for n in first.notes]
    assert candidate_seed(21, 3, 1) == candidate_seed(21, 3, 1) != candidate_seed(21, 3, 2)


def test_the_live_worker_streams_the_critics_piece_as_compose_writes_it(shipped):
    request = replace(make_request(shipped.loaded, "irish", seconds=8, seed=8), critic=2)
    worker = GenerationWorker(shipped, lookahead_seconds=600.0)
    try:
        piece = worker.submit("p", request)
        assert piece.finished.wait(120)
    finally:
        worker.close()
    assert piece.error is None
    assert piece.tokens == shipped.compose(request).tokens


def test_a_criticised_piece_keeps_its_plan_ending_and_instruments_and_scores_higher(shipped):
    loaded = shipped.loaded
    higher = 0
    for seed in (31, 32, 33):
        base = make_request(loaded, "bach", ["violin", "cello"], seconds=8, seed=seed)
        chosen = shipped.compose(replace(base, critic=3))
        plain = shipped.compose(base)
        tonic, minor = key_of(chosen_key(loaded, base.style, seed, base.key))
        assert chosen.plan is not None
        end = ending(notes_array(chosen.notes), chosen.plan.bar, 0, tonic, minor)
        assert end.on_downbeat and end.long and end.on_tonic
        assert max(n.start for n in chosen.notes) == chosen.plan.cadence_times()[-1]
        assert smallest_instrument_share(notes_array(chosen.notes), base.programs()) > 0.1
        higher += _mean_bar_score(shipped, base, chosen.notes) > _mean_bar_score(shipped, base, plain.notes)
    assert higher >= 2  # the critic's choices add up to a piece it likes better, most of the time


def _mean_bar_score(composer: Composer, request: PieceRequest, notes: list[Note]) -> float:
    plan = composer.plan(request)
    assert plan is not None
    key = chosen_key(composer.loaded, request.style, request.seed, request.key)
    setup = critic.Setup(plan, key, tuple(request.programs()), 0.15, plan.bar)
    scores = []
    for start in range(0, max(n.start for n in notes) + 1, plan.bar):
        bar = [n for n in notes if start <= n.start < start + plan.bar]
        before = critic.context([n for n in notes if n.start < start], start, plan.bar)
        scores.append(critic.score(setup, before, bar, start).total)
    return float(np.mean(scores))


_PINNED_MODEL = (
    "concertbot-4x192-step4000+1200+2400+forms-9008ad",
    "3f9aa1d6289fffe9d57eb8fa9b3edf639c443e79b63347aa616ac401da1f3e65",  # its card.json: forms draw the plans
)
# Sampled with K = 1 on the card that learnt harmony (0f6c784), where the loop from before the critic gives the
# same tokens (the test above); the first pins, on the card before it, were the pre-critic sampler's own.
_PINNED: dict[tuple[str, int, float], str] = {
    ("bach", 3, 12.0): "87c977881e4c2c30",
    ("palestrina", 7, 10.0): "d879caf0d1e92715",
}


def test_a_record_keeps_its_critic_and_a_record_from_before_the_critic_replays_with_one_candidate():
    # A recipe as the store kept it before the critic existed: no "critic" field.
    old = {
        "seed": 7,
        "style": "bach",
        "instruments": ["violin", "cello"],
        "tempo": 90.0,
        "seconds": 30.0,
        "temperature": 1.0,
        "top_p": 0.95,
        "model_version": "m1",
        "key": "D",
    }
    version = old.pop("model_version")
    record = PieceRecord(PieceRequest.from_dict(old), version)
    assert record.recipe.critic == 1
    # Its checksum is the one it was saved with (computed by the store before this field existed).
    assert record.identity() == "95cd3c6004cde57c7f207c67f2890a9d7689e32403beaa2566a075296ddcdac8"
    three = replace(record, recipe=replace(record.recipe, critic=3))
    assert three.identity() != record.identity()
    # The recipe's one serialised form (the store's record, a worker's job) keeps the critic.
    assert PieceRequest.from_dict(json.loads(json.dumps(three.recipe.to_dict()))).critic == 3


def _loop_before_the_critic(composer: Composer, request: PieceRequest) -> Iterator[int]:
    """Composer.stream as it was before the critic (commit 2c0ea17), on the composer's own parts."""
    vocab = composer.vocab
    prefix = composer.prefix(request)
    grammar = Grammar(vocab, request.programs() if request.strict_instruments else PROGRAMS)
    state = GrammarState()
    decoder = NoteDecoder(vocab)
    guard = LoopGuard()
    voices = composer.voice_leading(request)
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    plan = composer.plan(request)
    follow = None
    if plan is not None:
        key = chosen_key(composer.loaded, request.style, request.seed, request.key)
        profile = form_profile(composer.loaded.card, request.style)
        follow = PlanFollower(plan, profile, key, request.programs(), composer.tensors)
    # The rhythm steer came after the critic: a card without "rhythm" leaves it out, as before.
    rhythm = (
        RhythmFollower(profile["rhythm"], request.programs(), composer.tensors)
        if plan and profile.get("rhythm")
        else None
    )
    target = request.seconds * request.tempo / 60.0 * STEPS_PER_BEAT
    context = composer.loaded.context
    window = list(prefix)
    music: list[int] = []
    starts = replay_points(plan) if plan is not None else set()  # sections, and phrases echoed since
    section_at: dict[int, int] = {}
    replay: list[int] = []
    logits, cache = composer._forward(window, None)
    while True:
        at_end = follow is None and decoder.time >= target and state.notes > 0
        if state.phase == AT_BOUNDARY and (at_end or (follow is not None and follow.finished(decoder.time))):
            yield vocab.eos
            break
        fresh = decoder.time in starts and decoder.time not in section_at
        if plan is not None and fresh and state.phase == AT_BOUNDARY:
            section_at[decoder.time] = len(music)
            if not replay:
                replay = composer._returning(plan, decoder.time, section_at, music, vocab)
        if replay:
            token = replay.pop(0)
        else:
            token = composer._choose(
                logits, state, grammar, decoder, guard, voices, follow, request, at_end, generator, rhythm
            )
        state = grammar.advance(state, token)
        note = decoder.feed(token)
        guard.on_time(decoder.time)
        if note is not None:
            if not replay:
                guard.on_note(note)
            voices.on_note(note)
            if follow is not None:
                follow.on_note(note.start, note.pitch, note.duration, note.program)
            if rhythm is not None:
                rhythm.on_note(note.start, note.pitch, note.duration, note.program)
        music.append(token)
        yield token
        window.append(token)
        if len(window) >= context:
            window = prefix + _tail(vocab.kind, window[len(prefix) :], (context - len(prefix)) // 2)
            logits, cache = composer._forward(window, None)
        else:
            logits, cache = composer._forward([token], cache)


def test_the_key_is_heard_with_the_styles_own_pitch_classes_when_it_has_them():
    major = [0.24, 0.0, 0.13, 0.0, 0.17, 0.1, 0.0, 0.17, 0.0, 0.1, 0.01, 0.08]  # a tune's, from the tonic up
    minor = [0.24, 0.01, 0.13, 0.16, 0.0, 0.12, 0.0, 0.15, 0.05, 0.01, 0.12, 0.01]
    shares = critic.pitch_classes({"pitch_classes": {"major": major, "minor": minor}})
    assert shares is not None and critic.pitch_classes({"pitch_classes": {"major": major}}) is None
    tune = _bar([(i * 4, p, 4, VIOLIN) for i, p in enumerate((67, 69, 71, 72, 74, 72, 71, 67))])  # in G
    before = critic.context([], 0, 32)
    in_g = replace(SETUP, key="G", pitch_classes=shares)
    assert critic.score(in_g, before, tune, 0).measures["key_fit"] > 0.5
    assert critic.score(replace(in_g, key="F#"), before, tune, 0).measures["key_fit"] < 0.5


def test_a_bar_that_brings_the_pieces_intervals_nearer_the_styles_scores_higher():
    steps_style = [0.0] * 10 + [0.25, 0.0, 0.0, 0.0, 0.25] + [0.0] * 10  # a style of seconds, -2 and +2
    steps_style[12] = 0.5  # and repeated notes
    setup = replace(SETUP, intervals=tuple(steps_style), leap_share=None)
    assert critic.interval_shares({"intervals": steps_style}) == tuple(steps_style)
    so_far = critic.context(_bar([(0, 60, 8, VIOLIN), (8, 62, 8, VIOLIN), (16, 62, 8, VIOLIN)]), 32, 32)
    stepwise = _bar([(32, 64, 8, VIOLIN), (40, 64, 8, VIOLIN), (48, 62, 8, VIOLIN)])
    leaping = _bar([(32, 69, 8, VIOLIN), (40, 57, 8, VIOLIN), (48, 67, 8, VIOLIN)])
    near = critic.score(setup, so_far, stepwise, 32).measures["intervals"]
    far = critic.score(setup, so_far, leaping, 32).measures["intervals"]
    assert near > 0.5 > far
