"""Rows whose caches live in pools (generator.fastgpt.CachePool) keep batch-1's bits and notes."""

from __future__ import annotations

import itertools

import pytest
import torch

from generator.batch import POOL_SLOTS, BatchComposer, BatchPiece
from generator.fastgpt import CachePool, FastGPT2, forward_rows
from generator.model import load_model
from generator.sampling import Composer, PieceRequest


@pytest.fixture(scope="module")
def composer() -> Composer:
    torch.set_num_threads(1)
    return Composer(load_model())


def test_rows_of_every_length_in_pools_with_idle_slots_give_batch_one_logits(composer: Composer) -> None:
    """Short rows (softmax on their own), long ones, three pools, slots given back between the rows taken."""
    generator = torch.Generator().manual_seed(5)
    vocab = len(composer.vocab)
    pools = [CachePool(composer.fast, POOL_SLOTS) for _ in range(3)]
    rows: list[FastGPT2] = []
    alone: list[FastGPT2] = []
    lengths = [*range(1, 21), *torch.randint(21, 500, (22,), generator=generator).tolist()]
    for n, length in enumerate(lengths):
        row = pools[n % 3].take()
        assert row is not None
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        twin = composer.fast.fork()
        row.forward(ids)
        twin.forward(ids)
        rows.append(row)
        alone.append(twin)
    for gone in (3, 10, 25):  # idle slots inside each pool's span of rows
        pools[gone % 3].give(rows[gone])
    live = [i for i in range(len(rows)) if i not in (3, 10, 25)]
    for step in range(4):
        stepping = live[step % 2 :]  # a different set of rows each step
        ids = torch.randint(0, vocab, (len(stepping),), generator=generator).tolist()
        batched = forward_rows([rows[i] for i in stepping], ids)
        for at, (i, token) in enumerate(zip(stepping, ids, strict=True)):
            assert torch.equal(batched[at], alone[i].forward([token])), (step, lengths[i])


STYLES = [
    ("bach", ("violin", "viola", "cello")),
    ("irish", ("flute", "harp")),
    ("classical", ("violin", "viola", "cello")),
    ("folk", ("guitar", "violin")),
    ("scottish", ("violin",)),
    ("palestrina", ("choir", "organ")),
    ("medieval", ("recorder", "harp")),
]


def test_more_pieces_than_a_pool_joining_and_leaving_play_as_alone(composer: Composer) -> None:
    """Seven styles, three seeds each, critics of 1, 2 and 3: 21 pieces over several pools, joining at
    staggered steps and ending at their own lengths, each token for token `Composer.stream`'s."""
    requests = [
        PieceRequest(style, names, 110.0, 2.0 + (seed % 3), seed, critic=1 + seed % 3)
        for (style, names), seed in itertools.product(STYLES, range(3))
    ]
    join_at = [(7 * n) % 45 for n in range(len(requests))]
    pieces: dict[int, BatchPiece] = {}
    widest = 0
    with BatchComposer(composer) as batch:
        for step in itertools.count():
            pieces |= {i: batch.add(requests[i]) for i, at in enumerate(join_at) if at == step}
            if not batch.live and len(pieces) == len(requests):
                break
            widest = max(widest, sum(len(p.caches()) for p in batch.live))
            batch.step()
        assert all(pool.idle for pool in batch._pools)
    assert widest > POOL_SLOTS  # the rows filled more than one pool
    for i, request in enumerate(requests):
        assert pieces[i].finished and pieces[i].tokens == list(composer.stream(request)), request
