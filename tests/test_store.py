"""The bot's Redis store, against the real server on 127.0.0.1:6379 and against the embedded one.

Every behaviour test runs twice: once on a real server (a namespace of its own, deleted afterwards) and once on
the embedded server in a temporary data folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from bot.state.embedded_redis import PIDFILE, socket_path
from bot.state.keys import Keys, iso_week, token
from bot.state.store import (
    BoardEntry,
    Flags,
    NowPlaying,
    PieceRecord,
    PlayWindow,
    QueueLimits,
    QueueRefused,
    SeedConflictError,
    SongRequest,
    Store,
    StoreError,
    VoteOutcome,
    open_store,
    pack_tokens,
)
from generator.sampling import PieceRequest

REAL_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]


def at(text: str) -> float:
    """Seconds since the epoch of a UTC time written like "2024-01-07 23:59:59"."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclass
class Backend:
    url: str | None
    data_dir: Path
    namespace: str

    def run(self, body: Callable[[Store], Awaitable[Any]], limits: QueueLimits | None = None) -> Any:
        """Open a store on this backend, run `body` with it, close it."""

        async def main() -> Any:
            async with open_store(self.url, self.data_dir, self.namespace, limits) as store:
                return await body(store)

        return asyncio.run(main())

    def raw(self) -> aioredis.Redis:
        """A plain client on the same server, for looking at key names."""
        if self.url is not None:
            return aioredis.Redis.from_url(self.url)
        return aioredis.Redis(unix_socket_path=str(socket_path((self.data_dir / "redis").resolve())))


@pytest.fixture(params=["real", "embedded"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    if request.param == "embedded":
        yield Backend(None, tmp_path, namespace)
        return
    client = redis.Redis.from_url(REAL_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.skip(f"no Redis server at {REAL_URL} ({error}); start one with `redis-server --port 6379`")
    yield Backend(REAL_URL, tmp_path, namespace)
    stale = list(client.scan_iter(match=Keys(namespace).pattern(), count=1000))
    if stale:
        client.delete(*stale)
    client.close()


def ask(user: str, style: str, priority: bool = False) -> SongRequest:
    return SongRequest(user_id=user, login=user.lower(), style=style, priority=priority)


async def drain(store: Store) -> list[str]:
    """Pop everything; the styles in the order they came out."""
    out = []
    while (request := await store.pop_next(now=0.0)) is not None:
        out.append(request.style)
    return out


# The queue


def test_round_robin_plays_everyones_first_request_first(backend: Backend) -> None:
    async def body(store: Store) -> tuple[list[tuple[int, str]], list[str]]:
        for user, styles in [("A", ["A1", "A2", "A3"]), ("B", ["B1"]), ("C", ["C1", "C2"])]:
            for style in styles:
                await store.enqueue(ask(user, style))
        listed = [(e.position, e.request.style) for e in await store.queue()]
        return listed, await drain(store)

    listed, played = backend.run(body)
    assert listed == [(1, "A1"), (2, "B1"), (3, "C1"), (4, "A2"), (5, "C2"), (6, "A3")]
    assert played == ["A1", "B1", "C1", "A2", "C2", "A3"]


def test_round_robin_newcomers_and_those_just_served(backend: Backend) -> None:
    async def body(store: Store) -> list[str]:
        for user, style in [("A", "A1"), ("B", "B1"), ("C", "C1")]:
            await store.enqueue(ask(user, style))
        played = await store.pop_next(now=1.0)
        assert played is not None and played.style == "A1"
        # A has just been served this round, so asks for the next one; D has had nothing yet, so joins this one.
        await store.enqueue(ask("A", "A2"))
        await store.enqueue(ask("D", "D1"))
        return [e.request.style for e in await store.queue()]

    assert backend.run(body) == ["B1", "C1", "D1", "A2"]


def test_priority_lane_plays_first_in_arrival_order(backend: Backend) -> None:
    async def body(store: Store) -> tuple[list[int], list[str]]:
        positions = [
            (await store.enqueue(ask("A", "A1"))).position,
            (await store.enqueue(ask("B", "B1"))).position,
            (await store.enqueue(ask("M", "M1", priority=True))).position,
            (await store.enqueue(ask("R", "R1", priority=True))).position,
            # The per-viewer cap (1 here) does not hold for the priority lane.
            (await store.enqueue(ask("M", "M2", priority=True))).position,
        ]
        return positions, await drain(store)

    positions, played = backend.run(body, QueueLimits(max_per_viewer=1, max_length=10))
    assert positions == [1, 2, 1, 2, 3]
    assert played == ["M1", "R1", "M2", "A1", "B1"]


def test_caps_and_length_refuse_with_a_reason(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.enqueue(ask("A", "A1"))
        await store.enqueue(ask("A", "A2"))
        with pytest.raises(QueueRefused, match="already have 2 requests in the queue") as capped:
            await store.enqueue(ask("A", "A3"))
        assert capped.value.reason == "viewer_cap"
        await store.enqueue(ask("B", "B1"))
        with pytest.raises(QueueRefused, match=r"queue is full \(3 requests\)") as full:
            await store.enqueue(ask("C", "C1"))
        assert full.value.reason == "full"
        with pytest.raises(QueueRefused) as full_priority:
            await store.enqueue(ask("M", "M1", priority=True))
        assert full_priority.value.reason == "full"
        await store.pop_next(now=0.0)
        assert (await store.enqueue(ask("C", "C1"))).position == 2
        assert [e.request.style for e in await store.queue()] == ["B1", "C1", "A2"]

    backend.run(body, QueueLimits(max_per_viewer=2, max_length=3))


def test_blocked_viewers_are_ignored(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.enqueue(ask("Troll", "T1"))
        await store.enqueue(ask("Troll", "T2"))
        await store.enqueue(ask("A", "A1"))
        assert await store.block("TROLL") == 2
        assert [e.request.style for e in await store.queue()] == ["A1"]
        with pytest.raises(QueueRefused) as refused:
            await store.enqueue(ask("Troll", "T3", priority=True))
        assert refused.value.reason == "blocked"
        assert await store.is_blocked("troll") and await store.blocked() == ["troll"]
        assert await store.unblock("troll") and not await store.unblock("troll")
        assert (await store.enqueue(ask("Troll", "T4"))).position == 2

    backend.run(body)


def test_cancel_remove_and_clear(backend: Backend) -> None:
    async def body(store: Store) -> None:
        for user, style in [("A", "A1"), ("B", "B1"), ("A", "A2"), ("C", "C1"), ("B", "B2")]:
            await store.enqueue(ask(user, style))
        cancelled = await store.cancel_latest("A")
        assert cancelled is not None and cancelled.style == "A2" and cancelled.user_id == "A"
        assert await store.cancel_latest("nobody") is None
        assert await store.remove_viewer("b") == 2
        assert [e.request.style for e in await store.queue()] == ["A1", "C1"]
        # With A2 withdrawn, A's next request belongs to the next round again, not the one after.
        await store.enqueue(ask("A", "A3"))
        await store.enqueue(ask("D", "D1"))
        assert [e.request.style for e in await store.queue()] == ["A1", "C1", "D1", "A3"]
        assert await store.clear_queue() == 4
        assert await store.queue() == [] and await store.pop_next(now=0.0) is None

    backend.run(body)


def test_concurrent_poppers_never_get_the_same_request(backend: Backend) -> None:
    async def body(store: Store) -> None:
        ids = {(await store.enqueue(ask(f"viewer{i}", f"S{i}"))).request.id for i in range(30)}
        # Three stores, three connection pools: pops from many connections at once, as from several tasks.
        async with (
            open_store(backend.url, backend.data_dir, backend.namespace) as second,
            open_store(backend.url, backend.data_dir, backend.namespace) as third,
        ):
            popped = await asyncio.gather(*(s.pop_next(now=1.0) for s in [store, second, third] * 15))
        got = [r.id for r in popped if r is not None]
        assert sorted(got) == sorted(ids)  # every request once, none twice, none lost
        playing = await store.now_playing()
        assert playing is not None and playing.request is not None and playing.request.id in ids
        assert await store.queue() == []

    backend.run(body, QueueLimits(max_per_viewer=1, max_length=100))


# Votes and leaderboards


def test_500_concurrent_voters_are_counted_once_each(backend: Backend) -> None:
    now = at("2024-03-01 20:00:00")

    async def body(store: Store) -> None:
        await store.start_playing(424242, now)
        votes = [store.vote(424242, str(1000 + i), "stream1", now) for i in range(500)]
        votes += [store.vote(424242, "local:twice", "stream1", now) for _ in range(20)]
        outcomes = await asyncio.gather(*votes)
        assert outcomes.count(VoteOutcome.COUNTED) == 501
        assert outcomes.count(VoteOutcome.ALREADY_VOTED) == 19
        assert await store.votes(424242) == 501
        for period in ("stream", "week", "all"):
            assert await store.top(period, "stream1", now) == [BoardEntry(424242, 501)]

    backend.run(body)


def test_votes_only_for_pieces_that_played(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.vote(7, "1", "s", 0.0) is VoteOutcome.NOT_PLAYED
        assert await store.top("all", "s", 0.0) == []

    backend.run(body)


def test_leaderboards_per_stream_week_and_all_time(backend: Backend) -> None:
    sunday, monday = at("2024-01-07 23:59:59"), at("2024-01-08 00:00:00")

    async def body(store: Store) -> None:
        await store.start_playing(11, sunday - 60)
        await store.start_playing(22, sunday - 30)
        for viewer in ["1", "2", "3"]:
            await store.vote(11, viewer, "stream-sunday", sunday)
        for viewer in ["4", "5"]:
            await store.vote(22, viewer, "stream-monday", monday)
        await store.vote(11, "6", "stream-monday", monday)

        assert await store.top("week", "", sunday) == [BoardEntry(11, 3)]
        assert await store.top("week", "", monday) == [BoardEntry(22, 2), BoardEntry(11, 1)]
        assert await store.top("all", "", monday) == [BoardEntry(11, 4), BoardEntry(22, 2)]
        assert await store.top("stream", "stream-sunday", monday) == [BoardEntry(11, 3)]
        assert await store.top("stream", "stream-monday", monday) == [BoardEntry(22, 2), BoardEntry(11, 1)]
        assert await store.top("stream", "stream-next", monday) == []
        assert await store.top("all", "", monday, n=1) == [BoardEntry(11, 4)]

    backend.run(body)


def test_iso_weeks_are_utc_and_iso() -> None:
    assert iso_week(at("2024-01-07 23:59:59")) == "2024-W01"
    assert iso_week(at("2024-01-08 00:00:00")) == "2024-W02"
    assert iso_week(at("2021-01-01 12:00:00")) == "2020-W53"  # ISO years start on a Monday


def test_voting_window() -> None:
    playing, done = PlayWindow(100.0, None), PlayWindow(100.0, 200.0)
    assert not playing.voting_open(99.0, grace=30.0)
    assert playing.voting_open(1000.0, grace=30.0)
    assert done.voting_open(230.0, grace=30.0)
    assert not done.voting_open(230.5, grace=30.0)


# What is playing, and flags


def test_now_playing_and_play_windows(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.now_playing() is None
        await store.enqueue(replace(ask("A", "A1"), requested_at=5.0))
        request = await store.pop_next(now=10.0)
        playing = await store.now_playing()
        assert playing is not None and playing.request == request and playing.popped_at == 10.0
        assert playing.seed is None
        await store.start_playing(99, now=12.5)
        assert await store.now_playing() == NowPlaying(request, seed=99, popped_at=10.0, started_at=12.5)
        assert await store.play_window(99) == PlayWindow(12.5, None)
        assert await store.finish_playing(99, now=72.5)
        assert await store.now_playing() is None
        assert await store.play_window(99) == PlayWindow(12.5, 72.5)
        assert not await store.finish_playing(12345, now=80.0)
        assert await store.play_window(12345) is None
        # An autoplay piece: nothing was popped, so no request.
        await store.start_playing(100, now=90.0)
        assert await store.now_playing() == NowPlaying(request=None, seed=100, started_at=90.0)

    backend.run(body)


def test_flags_change_one_at_a_time(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.flags() == Flags(paused=False, autoplay=True, stream_id="")
        assert await store.set_flags(paused=True) == Flags(paused=True, autoplay=True)
        assert await store.set_flags(autoplay=False, stream_id="local:2024-03-01") == Flags(
            paused=True, autoplay=False, stream_id="local:2024-03-01"
        )
        assert await store.set_flags(paused=False) == Flags(False, False, "local:2024-03-01")
        assert await store.flags() == Flags(False, False, "local:2024-03-01")

    backend.run(body)


# Pieces


PIECE = PieceRecord(
    PieceRequest("bach", ("piano", "violin"), 96.0, 60.0, seed=2**63 - 1, temperature=0.9, top_p=0.95),
    model_version="cpu-small-2000",
    requester="alice",
    created_at=1700000000.25,
    tokens=(1, 0, 65535, 300, 300, 2),
)


def _remade(record: PieceRecord, **recipe: Any) -> PieceRecord:
    """The record with some of its recipe changed."""
    return replace(record, recipe=replace(record.recipe, **recipe))


def test_a_recipe_has_one_serialised_form() -> None:
    every = PieceRequest(
        "irish",
        ("flute", "cello", "oboe"),
        120.0,
        30.0,
        9,
        0.8,
        0.9,
        False,
        "D",
        False,
        False,
        3,
        (("oboe", "flute"),),
    )
    assert all(getattr(every, f) != d for f, d in [("voice_leading", True), ("plan", True), ("critic", 1)])
    assert every.to_dict()["sounds"] == {"oboe": "flute"}  # an object, as JSON readers expect
    assert PieceRequest.from_dict(json.loads(json.dumps(every.to_dict()))) == every
    old = {"style": "bach", "instruments": ["piano"], "tempo": 96.0, "seconds": 60.0, "seed": 1}
    assert PieceRequest.from_dict(old) == PieceRequest("bach", ("piano",), 96.0, 60.0, 1)  # defaults fill in
    with pytest.raises(TypeError):  # a name the recipe does not have: not silently dropped
        PieceRequest.from_dict({**old, "loudness": 3})


def test_piece_round_trip_and_seed_conflicts(backend: Backend) -> None:
    wide = replace(_remade(PIECE, seed=123456789), tokens=(70000, 5, 2**32 - 1))

    async def body(store: Store) -> None:
        assert await store.load_piece(PIECE.seed) is None
        await store.save_piece(PIECE)
        await store.save_piece(wide)
        assert await store.load_piece(PIECE.seed) == PIECE
        assert await store.load_piece(wide.seed) == wide
        # The same piece saved again by someone else, later: no conflict, and the first requester keeps it.
        await store.save_piece(replace(PIECE, requester="bob", created_at=1800000000.0))
        assert await store.load_piece(PIECE.seed) == PIECE
        with pytest.raises(SeedConflictError, match=str(PIECE.seed)):
            await store.save_piece(_remade(PIECE, style="irish"))
        with pytest.raises(SeedConflictError):
            await store.save_piece(replace(PIECE, tokens=(1, 0, 65535, 300, 301, 2)))
        with pytest.raises(SeedConflictError):
            await store.save_piece(replace(PIECE, model_version="retrained"))
        with pytest.raises(SeedConflictError):
            await store.save_piece(_remade(PIECE, key="D"))  # a key asked for makes another piece
        with pytest.raises(SeedConflictError):
            await store.save_piece(_remade(PIECE, plan=False))  # so does a piece made without its plan
        assert await store.load_piece(PIECE.seed) == PIECE
        keyed = _remade(PIECE, seed=4242, key="F#m", critic=2, voice_leading=False)
        await store.save_piece(keyed)
        assert await store.load_piece(4242) == keyed  # every recipe field comes back
        doubled = _remade(
            PIECE, seed=4343, instruments=("violin", "clarinet"), sounds=(("clarinet", "violin"),)
        )
        await store.save_piece(doubled)
        assert await store.load_piece(4343) == doubled  # and how its parts sound
        with pytest.raises(SeedConflictError):  # heard otherwise, it is another piece to a listener
            await store.save_piece(replace(doubled, recipe=replace(doubled.recipe, sounds=())))

    backend.run(body)


def test_a_piece_stored_before_keys_loads_and_keeps_its_checksum(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.save_piece(PIECE)
        # What a bot from before keys wrote: the same recipe without the field.
        redis_key = store.keys.piece(PIECE.seed)
        recipe = json.loads(await store._redis.hget(redis_key, "recipe"))
        recipe.pop("key", None)
        await store._redis.hset(redis_key, "recipe", json.dumps(recipe))
        assert await store.load_piece(PIECE.seed) == PIECE
        await store.save_piece(replace(PIECE, requester="later"))  # same identity as before: no conflict

    backend.run(body)


# Two pieces' hash fields exactly as the store wrote them before the recipe was one PieceRequest (HEAD c5cc0af,
# where PieceRecord listed the recipe's fields one by one): the identities are that code's checksums.
BEFORE_RECIPE = {
    "98fe559ed283392fc070ad17a7139e5500cade5cb6d891bca2f6c663135d0dd2": (
        '{"seed": 9223372036854775807, "style": "bach", "instruments": ["piano", "violin"], "tempo": 96.0, '
        '"seconds": 60.0, "temperature": 0.9, "top_p": 0.95, "model_version": "cpu-small-2000", "requester": '
        '"alice", "created_at": 1700000000.25, "strict_instruments": true, "key": null, "title": "", '
        '"critic": 1}'
    ),
    "0990178e420968c6cc7247cf13e5dcfeb63132f438f35a2584a051dfeb7aab01": (
        '{"seed": 9223372036854775807, "style": "bach", "instruments": ["piano", "violin"], "tempo": 96.0, '
        '"seconds": 60.0, "temperature": 0.9, "top_p": 0.95, "model_version": "cpu-small-2000", "requester": '
        '"alice", "created_at": 1700000000.25, "strict_instruments": true, "key": "Em", "title": "The Lark on '
        'the Hill", "critic": 2}'
    ),
}


@pytest.mark.parametrize("identity", list(BEFORE_RECIPE), ids=["plain", "key-critic-title"])
def test_a_piece_stored_before_the_recipe_type_loads_the_same(backend: Backend, identity: str) -> None:
    async def body(store: Store) -> None:
        packed, encoding, checksum = pack_tokens(PIECE.tokens)
        redis_key = store.keys.piece(PIECE.seed)
        await store._redis.hset(
            redis_key,
            mapping={
                "identity": identity,
                "recipe": BEFORE_RECIPE[identity],
                "tokens": packed,
                "encoding": encoding,
                "count": len(PIECE.tokens),
                "tokens_sha": checksum,
                "steers": "[]",
            },
        )
        loaded = await store.load_piece(PIECE.seed)
        assert loaded is not None and loaded.identity() == identity
        assert loaded.tokens == PIECE.tokens  # the replay plays what was written
        assert loaded.recipe.voice_leading and loaded.recipe.plan  # as every piece then was made
        if identity == "0990178e420968c6cc7247cf13e5dcfeb63132f438f35a2584a051dfeb7aab01":
            assert (loaded.recipe.key, loaded.recipe.critic, loaded.title) == ("Em", 2, "The Lark on the Hill")
        else:
            assert loaded == PIECE
        await store.save_piece(replace(loaded, requester="later"))  # the same piece: no conflict
        with pytest.raises(SeedConflictError):
            await store.save_piece(_remade(loaded, tempo=97.0))
        assert await store._redis.hget(redis_key, "identity") == identity.encode()

    backend.run(body)


def test_claiming_a_seed_before_the_tokens_exist(backend: Backend) -> None:
    claim = replace(_remade(PIECE, seed=31337), tokens=())

    async def body(store: Store) -> None:
        await store.save_piece(claim)
        with pytest.raises(SeedConflictError):
            await store.save_piece(_remade(claim, tempo=120.0))
        assert await store.load_piece(31337) == claim
        await store.save_piece(replace(claim, tokens=PIECE.tokens))
        assert await store.load_piece(31337) == replace(claim, tokens=PIECE.tokens)
        await store.save_piece(claim)  # a late claim does not wipe the tokens
        assert (await store.load_piece(31337)) == replace(claim, tokens=PIECE.tokens)

    backend.run(body)


def test_tokens_are_packed_small() -> None:
    tokens = tuple((i * 7919) % 400 for i in range(6000))  # a 400-token vocabulary, little repetition
    packed, encoding, _ = pack_tokens(tokens)
    assert encoding == "u2" and len(packed) < 2 * len(tokens)
    assert pack_tokens(tokens)[2] != pack_tokens(tokens[:-1])[2]
    with pytest.raises(ValueError):
        pack_tokens((1, -1))


# Key names


HOSTILE = ["*", "a:b", "a", "with space", "new\nline", "x" * 10_000, "local:alice", "{ns}:*", "\ud800", ""]
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]+(:[a-z]+)+(:[0-9]{19}|:[0-9]{4}-W[0-9]{2}|:h[0-9a-f]{32}|:[0-9]{1,20})?")


def test_hostile_ids_never_reach_key_names(backend: Backend) -> None:
    async def body(store: Store) -> list[str]:
        await store.start_playing(5, 0.0)
        for user in HOSTILE:
            await store.enqueue(SongRequest(user_id=user, login=user, style="bach"))
            with pytest.raises(QueueRefused):  # each id is its own viewer, capped on its own
                await store.enqueue(SongRequest(user_id=user, login=user, style="bach"))
            assert await store.vote(5, user, stream_id=user, now=0.0) is VoteOutcome.COUNTED
            await store.block(user + "!")
        await store.set_flags(stream_id=HOSTILE[5])
        assert (await store.flags()).stream_id == HOSTILE[5]
        assert await store.votes(5) == len(HOSTILE)
        listed = await store.queue()
        assert [e.request.user_id for e in listed] == HOSTILE  # stored exactly, newlines and all
        cancelled = await store.cancel_latest("a:b")
        assert cancelled is not None and cancelled.user_id == "a:b"
        assert await store.remove_viewer("new\nline") == 1
        raw = backend.raw()
        names = [name.decode() async for name in raw.scan_iter(match=store.keys.pattern())]
        await raw.aclose()
        return names

    names = backend.run(body, QueueLimits(max_per_viewer=1, max_length=100))
    assert len(names) >= 10
    for name in names:
        assert KEY_NAME.fullmatch(name) and len(name) < 100, name


def test_tokens_for_ids() -> None:
    assert token("123456789") == "123456789"
    assert token("local:alice") == token("local:alice") != token("local:alicf")
    assert token("0123") != token("123")
    assert re.fullmatch(r"h[0-9a-f]{32}", token("x" * 10_000))
    assert token("1" * 21) != "1" * 21  # longer than any Twitch id: hashed, so keys stay short


def test_namespace_is_checked() -> None:
    from config.errors import ConfigError

    with pytest.raises(ConfigError, match="namespace"):
        Keys("bad:*")


# Lifecycle and persistence


def test_unreachable_server_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    async def main() -> None:
        async with open_store("redis://:hunter2@127.0.0.1:1/0", tmp_path):
            pass

    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://:\*\*\*@127.0.0.1:1/0") as error:
        asyncio.run(main())
    assert "hunter2" not in str(error.value)


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from bot.state.store import open_store, PieceRecord, SongRequest
    from generator.sampling import PieceRequest

    async def main():
        async with open_store(None, Path(sys.argv[1]), "sigkill") as store:
            for user, style in [("1", "bach"), ("2", "irish"), ("1", "jazz"), ("3", "folk")]:
                await store.enqueue(SongRequest(user, "u" + user, style, requested_at=1.5))
            await store.pop_next(now=10.0)
            recipe = PieceRequest("bach", ("piano",), 96.0, 60.0, seed=77)
            await store.save_piece(PieceRecord(recipe, "v1", "u1", 9.0, tokens=tuple(range(500))))
            await store.start_playing(77, now=11.0)
            for viewer in range(25):
                await store.vote(77, str(viewer), "stream-x", now=12.0)
            await store.set_flags(paused=True, stream_id="stream-x")
            print("ready", flush=True)
            time.sleep(60)  # blocks the loop: the kill lands with everything written and nothing closed

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("kill_server_too", [False, True], ids=["bot-killed", "bot-and-redis-killed"])
def test_sigkill_mid_concert_keeps_everything(tmp_path: Path, kill_server_too: bool) -> None:
    pidfile = tmp_path / "redis" / PIDFILE
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        server = int(pidfile.read_text())
        assert _running(server), "the embedded server outlives a SIGKILLed bot"
        if kill_server_too:
            # Not even a chance to flush: what survives is what the append-only file already had.
            os.kill(server, signal.SIGKILL)
            _wait_gone(server)

        async def check(store: Store) -> int:
            assert [e.request.style for e in await store.queue()] == ["irish", "folk", "jazz"]
            playing = await store.now_playing()
            assert playing is not None and playing.request is not None
            assert (playing.request.style, playing.seed, playing.started_at) == ("bach", 77, 11.0)
            assert await store.votes(77) == 25
            assert await store.top("stream", "stream-x", 12.0) == [BoardEntry(77, 25)]
            assert await store.top("week", "", 12.0) == [BoardEntry(77, 25)]
            piece = await store.load_piece(77)
            assert piece is not None and piece.tokens == tuple(range(500))
            assert await store.flags() == Flags(paused=True, autoplay=True, stream_id="stream-x")
            assert await store.vote(77, "3", "stream-x", 13.0) is VoteOutcome.ALREADY_VOTED
            return int(pidfile.read_text())

        serving = Backend(None, tmp_path, "sigkill").run(check)
        assert (serving == server) is not kill_server_too  # the leftover server is adopted when it lives
        assert not _running(serving), "a clean exit stops the server"
        assert (tmp_path / "redis" / "concertbot.aof").stat().st_size > 0
    finally:
        child.kill()
        if pidfile.exists() and _running(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(pid)
