"""Batched decoding (generator.batch): a piece's tokens never depend on what else is in the batch."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generator.batch import POOL_SLOTS, BatchComposer, BatchPiece, compose_together
from generator.fastgpt import CachePool, forward_rows
from generator.instruments import INSTRUMENTS
from generator.model import load_model
from generator.sampling import Composer, PieceRequest
from generator.steer import Steering

# Four styles, one to four instruments, plan and voice leading on and off, other temperatures and top-p.
REQUESTS = [
    PieceRequest("bach", ("violin", "violin", "viola", "cello"), 90.0, 5.0, seed=11),
    PieceRequest("irish", ("flute", "harp"), 120.0, 4.0, seed=12, temperature=0.9),
    PieceRequest("folk", ("guitar", "violin"), 110.0, 6.0, seed=13, top_p=0.8, voice_leading=False),
    PieceRequest("scottish", ("piano",), 100.0, 4.0, seed=14, plan=False),
]
# The critic writes each bar twice: its candidates are two rows of the batch.
CRITIC = PieceRequest("irish", ("flute", "harp"), 120.0, 5.0, seed=17, critic=2)
# Long enough for its window to slide past the model's context while the others step beside it.
LONG = PieceRequest("classical", ("violin", "viola", "cello"), 100.0, 32.0, seed=28)


@pytest.fixture(scope="module")
def composer() -> Composer:
    torch.set_num_threads(1)
    return Composer(load_model())


@pytest.fixture(scope="module")
def alone(composer) -> dict[PieceRequest, list[int]]:
    """Each piece as `Composer.stream` samples it on its own: what every batch must reproduce."""
    return {r: list(composer.stream(r)) for r in [*REQUESTS, LONG, CRITIC]}


def test_forward_rows_gives_batch_one_logits_bit_for_bit(composer):
    generator = torch.Generator().manual_seed(0)
    vocab = len(composer.vocab)
    rows, alone = [], []
    pools = [CachePool(composer.fast, 2), CachePool(composer.fast, 3)]
    # Sequences of different lengths in one batch: caches in two pools (written in one copy per pool) and one
    # on its own (written by itself).
    for length, pool in zip((1, 7, 60, 300, 33, 2), (0, 1, None, 1, 0, 1), strict=True):
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        rows.append(composer.fast.fork() if pool is None else pools[pool].take())
        alone.append(composer.fast.fork())
        rows[-1].forward(ids)
        alone[-1].forward(ids)
    for _ in range(3):
        ids = torch.randint(0, vocab, (len(rows),), generator=generator).tolist()
        batched = forward_rows(rows, ids)
        for i, (row, token) in enumerate(zip(alone, ids, strict=True)):
            assert torch.equal(batched[i], row.forward([token]))
    assert [r.length for r in rows] == [r.length for r in alone] == [4, 10, 63, 303, 36, 5]
    assert pools[0].take() is None and pools[1].take() is None  # every slot taken once


def test_a_wide_batch_still_gives_batch_one_logits(composer):
    """MKL may run a batch of products another way when there are many: 70 rows, as a busy service has."""
    generator = torch.Generator().manual_seed(1)
    pool = CachePool(composer.fast, 70)
    rows = [row for row in (pool.take() for _ in range(70)) if row is not None]
    alone = [composer.fast.fork() for _ in range(70)]
    for row, lone in zip(rows, alone, strict=True):
        ids = torch.randint(0, len(composer.vocab), (int(torch.randint(1, 40, (1,), generator=generator)),))
        row.forward(ids.tolist())
        lone.forward(ids.tolist())
    ids = torch.randint(0, len(composer.vocab), (70,), generator=generator).tolist()
    batched = forward_rows(rows, ids)
    for i, (lone, token) in enumerate(zip(alone, ids, strict=True)):
        assert torch.equal(batched[i], lone.forward([token])), i


@pytest.mark.parametrize("join_at", [[0, 0, 0, 0, 0, 0], [0, 3, 17, 40, 1, 5], [25, 9, 0, 2, 60, 0]])
def test_a_piece_is_the_same_whatever_joins_the_batch_and_when(composer, alone, join_at):
    requests = [*REQUESTS, CRITIC, LONG]
    got = compose_together(composer, requests, join_at)
    for request, tokens in zip(requests, got, strict=True):
        assert tokens == alone[request], request
    assert tokens[-1] == composer.vocab.eos
    # The long piece's window slid (a fresh pass over half a context) while other pieces stepped.
    assert len(composer.prefix(LONG)) + len(got[-1]) > composer.loaded.context


def test_pieces_leave_mid_flight_and_others_play_on(composer, alone):
    bach, irish, folk, scottish = REQUESTS
    with BatchComposer(composer) as batch:
        first = batch.add(bach)
        gone = batch.add(folk)
        judged = batch.add(CRITIC)  # two rows while it writes a bar: leaving must give back both caches
        heard: dict[int, list[int]] = {}
        first_bar = None
        for step in range(200):
            if first_bar is None and judged.tokens:
                first_bar = step
            if first_bar is not None and step == first_bar + 5:  # in its second bar, its candidates' rows live
                assert len(judged.caches()) == CRITIC.critic
                batch.cancel(judged)
            if step == 12:
                batch.cancel(gone)  # a skipped piece
                late = batch.add(scottish)  # takes the cache the skipped piece left
            if step == 20:
                other = batch.add(irish)
            for piece, token in batch.step():
                heard.setdefault(id(piece), []).append(token)
            if not batch.live:
                break
        assert not batch.live
        assert all(pool.idle for pool in batch._pools)  # every row's cache given back, candidates' too
    assert gone.cancelled and not gone.finished and gone.tokens == alone[folk][:12]
    assert judged.cancelled and 0 < len(judged.tokens) < len(alone[CRITIC])  # a bar at a time
    assert judged.tokens == alone[CRITIC][: len(judged.tokens)]
    for piece, request in ((first, bach), (late, scottish), (other, irish)):
        assert piece.finished and piece.tokens == heard[id(piece)] == alone[request]
    assert id(gone) not in heard or heard[id(gone)] == gone.tokens


def test_steered_pieces_in_a_batch_are_steered_as_alone(composer, alone):
    request = PieceRequest("irish", ("flute", "harp"), 168.0, 9.0, seed=31)
    asks = {30: [("add", "violin")], 60: [("faster", ""), ("drop", "harp")]}  # after so many tokens
    live, tokens = Steering(), []
    for token in composer.stream(request, steering=live):
        tokens.append(token)
        for kind, arg in asks.get(len(tokens), []):
            live.ask(kind, arg)
    assert [e.kind for e in live.landed] == ["add", "faster", "drop"]  # re-conditioned three times
    judged = dataclasses.replace(request, critic=2, seed=32)
    judged_tokens = list(composer.stream(judged, steering=Steering(live.landed)))
    with BatchComposer(composer) as batch:
        others = [batch.add(r) for r in REQUESTS[:2]]
        steered, replayed = batch.add(request, Steering()), batch.add(request, Steering(live.landed))
        critic = batch.add(judged, Steering(live.landed))  # its steers land before its candidates fork
        while batch.live:
            for piece, _ in batch.step():
                for kind, arg in asks.get(len(piece.tokens), []) if piece is steered else []:
                    assert piece.steering is not None
                    piece.steering.ask(kind, arg)
    assert steered.tokens == replayed.tokens == tokens and critic.tokens == judged_tokens
    assert [p.tokens for p in others] == [alone[r] for r in REQUESTS[:2]]


def test_a_rush_of_pieces_gives_its_caches_back(composer):
    with BatchComposer(composer) as batch:
        rush = [PieceRequest("irish", ("flute",), 120.0, 1.0, seed) for seed in range(POOL_SLOTS + 1)]
        pieces = [batch.add(request) for request in rush]
        assert len(batch._pools) == 2  # one more than a pool holds
        while batch.live:
            batch.step()
        assert all(p.finished for p in pieces)
        assert len(batch._pools) == 1 and batch._pools[0].idle  # the second pool's memory is freed


def test_a_failing_piece_leaves_and_the_others_finish(composer, alone):
    bach = REQUESTS[0]
    # Temperature 0 divides the logits by zero: torch.multinomial refuses the probabilities it makes.
    broken = PieceRequest("irish", ("flute",), 120.0, 4.0, seed=16, temperature=0.0)
    with BatchComposer(composer) as batch:
        good, bad = batch.add(bach), batch.add(broken)
        steps = 0
        while batch.live:
            batch.step()
            steps += 1
    assert isinstance(bad.error, RuntimeError) and not bad.finished and bad.tokens == []
    assert good.finished and good.tokens == alone[bach] and steps == len(alone[bach])
    with pytest.raises(RuntimeError):
        compose_together(composer, [bach, broken])


batches = st.lists(
    st.tuples(
        st.sampled_from(["bach", "irish", "classical", "folk", "scottish", "palestrina", "medieval"]),
        st.lists(st.sampled_from([i.name for i in INSTRUMENTS]), min_size=1, max_size=3, unique=True),
        st.integers(0, 2**31),
        st.integers(0, 30),  # the step it joins at
    ),
    min_size=2,
    max_size=5,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=batches)
def test_any_batch_of_any_requests_leaves_every_piece_as_it_is_alone(composer, pieces):
    requests = [PieceRequest(s, tuple(names), 110.0, 3.0, seed) for s, names, seed, _ in pieces]
    got = compose_together(composer, requests, [at for *_, at in pieces])
    assert got == [list(composer.stream(r)) for r in requests]


# Critics of two and three candidates, one of them with returning sections (whose bars only replay), one with a
# window that slides, beside pieces sampling token by token.
JUDGED = [
    PieceRequest("irish", ("flute", "harp"), 168.0, 20.0, seed=40, critic=2),  # sections 2 and 4 return
    PieceRequest("bach", ("violin", "cello"), 90.0, 8.0, seed=21, critic=3),
    PieceRequest("classical", ("violin", "viola", "cello"), 100.0, 32.0, seed=28, critic=2),
    PieceRequest("palestrina", ("choir", "organ"), 90.0, 10.0, seed=7, critic=2, temperature=0.9),
]


@pytest.mark.parametrize("join_at", [[0, 0, 0, 0, 0, 0], [7, 0, 30, 2, 1, 11]])
def test_a_critics_candidates_step_side_by_side_and_write_the_sequential_critics_piece(
    composer: Composer, join_at: list[int]
) -> None:
    requests = [*JUDGED, *REQUESTS[:2]]
    plan = composer.plan(JUDGED[0])
    assert plan is not None and any(s.returns is not None for s in plan.sections)
    with BatchComposer(composer) as batch:
        pieces: dict[int, BatchPiece] = {}
        steps = dict.fromkeys(range(len(requests)), 0)
        rows = dict.fromkeys(range(len(requests)), 0)
        widest = dict.fromkeys(range(len(requests)), 0)
        for step in itertools.count():
            pieces |= {i: batch.add(requests[i]) for i, at in enumerate(join_at) if at == step}
            if not batch.live:
                break
            for i, piece in pieces.items():
                if not piece.done:
                    steps[i] += 1
                    rows[i] += len(piece._rows())  # the tokens it has the model read in this step
                    widest[i] = max(widest[i], len(piece._rows()))
            batch.step()
        assert all(pool.idle for pool in batch._pools)
    for i, request in enumerate(requests):
        assert pieces[i].finished and pieces[i].tokens == list(composer.stream(request)), request
        assert widest[i] == request.critic  # every candidate of a bar in one forward pass
        if request.critic > 1:
            # Side by side, a bar takes as many steps as its longest candidate, not as all of them together.
            assert steps[i] < 0.8 * rows[i], request
    classical = pieces[2]
    assert len(composer.prefix(JUDGED[2])) + len(classical.tokens) > composer.loaded.context  # its window slid


def test_a_critics_piece_that_fails_in_a_bar_leaves_and_gives_its_caches_back(
    composer: Composer, alone: dict[PieceRequest, list[int]]
) -> None:
    bach = REQUESTS[0]
    broken = PieceRequest("irish", ("flute",), 120.0, 4.0, seed=16, temperature=0.0, critic=2)
    with BatchComposer(composer) as batch:
        good, bad = batch.add(bach), batch.add(broken)
        while batch.live:
            batch.step()
        assert all(pool.idle for pool in batch._pools)
    assert isinstance(bad.error, RuntimeError) and not bad.finished and bad.tokens == []
    assert good.finished and good.tokens == alone[bach]


judged_batches = st.lists(
    st.tuples(
        st.sampled_from(["bach", "irish", "classical", "folk", "scottish", "palestrina", "medieval"]),
        st.lists(st.sampled_from([i.name for i in INSTRUMENTS]), min_size=1, max_size=3, unique=True),
        st.integers(0, 2**31),
        st.integers(0, 30),  # the step it joins at
        st.integers(1, 3),  # candidates a bar
    ),
    min_size=2,
    max_size=4,
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=judged_batches)
def test_any_batch_of_critics_leaves_every_piece_as_the_sequential_critic_writes_it(
    composer: Composer, pieces: list[tuple[str, list[str], int, int, int]]
) -> None:
    requests = [PieceRequest(s, tuple(names), 110.0, 3.0, seed, critic=k) for s, names, seed, _, k in pieces]
    got = compose_together(composer, requests, [at for _, _, _, at, _ in pieces])
    assert got == [list(composer.stream(r)) for r in requests]
