"""No viewer's command lost to a Redis outage: the journal keeps them, and writes them once Redis is back.

The journal's rules on literals; the store's write-once on a real redis-server whose reply is lost on the way
back (a TCP proxy cuts the connection after the command reached Redis); and the real concert while its real
Redis is killed, restarted, killed again in the middle of writing the journal, and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from itertools import count
from pathlib import Path

import aiohttp
import pytest
from chat_rig import concert_on
from prometheus_client import CollectorRegistry, generate_latest
from redis_server import REDIS_SERVER, RedisServer

from bot.app import Concert
from bot.chat.commands import CommandError
from bot.chat.journal import (
    FULL,
    NOTED,
    WAITING,
    Journal,
    JournalCollector,
    JournalledRequest,
    JournalWriter,
    Written,
)
from bot.chat.message import ChatMessage
from bot.state.store import QueueLimits, SongRequest, StoreUnavailable, open_store

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ask(user: str, style: str = "bach", priority: bool = False) -> SongRequest:
    return SongRequest(user_id=f"local:{user}", login=user, style=style, priority=priority)


def numbered() -> Callable[[], str]:
    ids = count(1)
    return lambda: f"id{next(ids)}"


# The journal's rules


def test_the_journal_keeps_requests_in_order_one_per_viewer() -> None:
    journal = Journal(new_id=numbered())
    journal.add_request(ask("ann", "bach"))
    journal.add_request(ask("bob", "irish"))
    with pytest.raises(CommandError, match=re.escape(WAITING)):
        journal.add_request(ask("ann", "folk"))
    # A moderator's or a redemption's request is exempt, as in the store's per-viewer cap.
    journal.add_request(ask("ann", "folk", priority=True))
    assert [(e.id, e.request.login, e.request.style) for e in journal if isinstance(e, JournalledRequest)] == [
        ("id1", "ann", "bach"),
        ("id2", "bob", "irish"),
        ("id3", "ann", "folk"),
    ]
    assert (journal.journalled, journal.dropped) == (3, 0)


def test_no_more_requests_than_the_queue_takes() -> None:
    journal = Journal(limit=10, max_requests=2)
    journal.add_request(ask("ann"))
    journal.add_request(ask("bob"))
    with pytest.raises(CommandError, match=re.escape("the queue is full (2 requests)")):
        journal.add_request(ask("cat"))
    journal.add_vote(1, "local:cat", "s1", 0.0)  # votes still have room
    assert (len(journal), journal.dropped) == (3, 1)


def test_one_vote_per_viewer_and_piece() -> None:
    journal = Journal()
    journal.add_vote(7, "local:ann", "s1", 100.0)
    journal.add_vote(8, "local:ann", "s1", 101.0)  # another piece
    journal.add_vote(7, "local:bob", "s1", 102.0)
    with pytest.raises(CommandError, match="you already voted for 7"):
        journal.add_vote(7, "local:ann", "s1", 103.0)
    assert len(journal) == 3


def test_past_the_bound_a_command_is_dropped_with_a_plain_reply(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(limit=3)
    for user in ("a", "b", "c"):
        journal.add_request(ask(user))
    for user in ("d", "e"):
        with pytest.raises(CommandError) as refused:
            journal.add_request(ask(user))
        assert str(refused.value) == FULL
    with pytest.raises(CommandError, match=re.escape(FULL)):
        journal.add_vote(1, "local:f", "s1", 0.0)
    assert (len(journal), journal.journalled, journal.dropped) == (3, 3, 3)
    assert len([r for r in caplog.records if r.name == "bot.chat.journal"]) == 1  # once, not per command

    head = journal.first()
    assert head is not None
    journal.done(head)
    journal.add_request(ask("g"))  # room again
    assert [e.request.login for e in journal if isinstance(e, JournalledRequest)] == ["b", "c", "g"]


def test_cancel_takes_back_a_waiting_request_but_not_one_being_written() -> None:
    journal = Journal()
    journal.add_request(ask("ann", "bach"))
    journal.add_request(ask("bob", "irish"))
    head = journal.first()  # the writer is writing ann's
    assert journal.withdraw("local:ann") is None
    withdrawn = journal.withdraw("local:bob")
    assert withdrawn is not None and withdrawn.style == "irish"
    assert journal.withdraw("local:bob") is None
    assert head is not None
    journal.done(head)
    assert (len(journal), journal.flushed) == (0, 1)


def test_only_the_head_is_ever_done() -> None:
    journal = Journal()
    journal.add_request(ask("ann"))
    journal.add_request(ask("bob"))
    second = list(journal)[1]
    with pytest.raises(ValueError):
        journal.done(second)
    journal.done(next(iter(journal)), refused=True)
    assert (journal.flushed, journal.refused, len(journal)) == (0, 1, 1)


# Write-once against a real redis-server


class ReplyCutter:
    """A TCP proxy in front of Redis: once armed, the next command goes through and its reply never comes back
    (the client's connection is cut), as when Redis or the network dies between running a command and
    answering it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.cut = asyncio.Event()  # set once Redis has answered the command the client never heard about
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> ReplyCutter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        cutting = False

        async def down() -> None:
            while data := await up_r.read(65536):
                if cutting:
                    up_w.close()
                    self.cut.set()
                    return
                client_w.write(data)
                await client_w.drain()

        answers = asyncio.create_task(down())
        try:
            while data := await client_r.read(65536):
                if self.armed:
                    self.armed, cutting = False, True
                    client_w.transport.abort()  # before the command is sent: its answer cannot reach the client
                up_w.write(data)
                await up_w.drain()
                if cutting:
                    break
            if not cutting:
                up_w.close()  # the client left: so does the proxy
            await answers
        finally:
            answers.cancel()
            client_w.close()


@needs_redis
@pytest.mark.anyio
async def test_a_request_whose_reply_was_lost_is_written_once(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        async with (
            ReplyCutter(redis.port) as proxy,
            open_store(proxy.url, tmp_path, namespace=f"once-{uuid.uuid4().hex[:6]}") as store,
        ):
            journal = Journal()
            for user in ("ann", "bob", "cat"):
                journal.add_request(ask(user))

            def after(written: Written) -> None:
                proxy.armed = True  # ann's went through; bob's will reach Redis, its answer will not come back

            with pytest.raises(StoreUnavailable):
                await JournalWriter(journal, store, after).flush()
            await asyncio.wait_for(proxy.cut.wait(), 10)
            assert [e.request.login for e in await store.queue()] == ["ann", "bob"]  # bob's is in Redis
            assert [e.request.login for e in journal if isinstance(e, JournalledRequest)] == ["bob", "cat"]

            assert await JournalWriter(journal, store, lambda _: None).flush() == 2
            assert [e.request.login for e in await store.queue()] == ["ann", "bob", "cat"]
            assert (len(journal), journal.flushed, journal.refused) == (0, 3, 0)

            # The id is what makes the write once, not the request: the same request asked anew is queued.
            assert await store.enqueue_once(ask("cat", "irish"), "another id") is not None
            assert await store.enqueue_once(ask("cat", "irish"), "another id") is None
            assert [e.request.login for e in await store.queue()] == ["ann", "bob", "cat", "cat"]


@needs_redis
@pytest.mark.anyio
async def test_what_the_store_refuses_is_counted_and_told(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        async with open_store(redis.url, tmp_path, "refused", QueueLimits(max_length=2)) as store:
            await store.block("eve")
            journal = Journal()
            for user in ("ann", "eve", "bob", "cat"):
                journal.add_request(ask(user))
            # A piece that started while Redis was away: Redis never heard of its start, the conductor did.
            journal.add_vote(123, "local:dan", "s1", 0.0)
            outcomes: list[Written] = []
            assert await JournalWriter(journal, store, outcomes.append).flush() == 5
            assert [e.request.login for e in await store.queue()] == ["ann", "bob"]
            assert [w.refused for w in outcomes] == [
                None,
                "",
                None,
                "the queue is full (2 requests); try again in a few minutes",
                None,
            ]
            assert outcomes[-1].counted_vote and await store.votes(123) == 1
            assert (journal.flushed, journal.refused) == (3, 2)

    registry = CollectorRegistry()
    registry.register(JournalCollector(journal))
    metrics = generate_latest(registry).decode()
    assert 'concertbot_journal_commands_total{outcome="refused"} 2.0' in metrics
    assert "concertbot_journal_waiting 0.0" in metrics


@needs_redis
@pytest.mark.anyio
async def test_stopping_mid_outage_says_what_was_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        async with open_store(redis.url, tmp_path, "stopped") as store:
            redis.kill()
            journal = Journal()
            writer = asyncio.create_task(JournalWriter(journal, store, lambda _: None).run())
            journal.add_request(ask("ann"))
            journal.add_vote(5, "local:bob", "s1", 0.0)
            await asyncio.sleep(1.0)  # a few tries against the dead server
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            redis.start()  # for open_store's own goodbye
    said = [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records if r.name == "bot.chat.journal"]
    assert said == [(logging.WARNING, "the concert stops with 2 commands of the outage never written", None)]


# The real concert


def line(login: str, text: str) -> ChatMessage:
    return ChatMessage(f"local:{login}", login, login, text, message_id=f"m-{uuid.uuid4().hex[:8]}")


async def until(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "", step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        await asyncio.sleep(step)


async def say(concert: Concert, login: str, text: str) -> list[str]:
    return [reply.text for reply in await concert.chat(line(login, text))]


STYLES = ("bach", "irish", "folk")
CROWD = 150  # enough requests that a kill lands while the journal is being written


@needs_redis
@pytest.mark.anyio
async def test_commands_during_an_outage_are_answered_and_queued_in_order_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        async with (
            concert_on(redis, tmp_path, max_queue=500) as (concert, base),
            aiohttp.ClientSession() as http,
        ):
            store, journal = concert.store, concert.commands.journal
            assert (await say(concert, "ann", "!compose bach violin"))[0].startswith("your bach")
            await until(lambda: concert.conductor.current is not None, what="playing")
            playing = concert.conductor.current
            assert playing is not None
            seed = playing.record.seed

            redis.kill()
            assert await say(concert, "bob", "!compose irish flute") == [f"your irish for flute is {NOTED}"]
            typo = await say(concert, "cat", "!compose bahc")
            assert len(typo) == 1 and "Did you mean bach?" in typo[0]  # validated first, as ever
            assert (await say(concert, "cat", "!compose bach cello"))[0].endswith(NOTED)
            assert await say(concert, "bob", "!compose folk") == [WAITING]  # one request per viewer
            assert await say(concert, "dan", "!vote") == [
                f"your vote for {seed} is noted; it counts once the store is back"
            ]
            assert await say(concert, "dan", "!vote") == [f"you already voted for {seed}"]
            assert (await say(concert, "eve", "!compose folk"))[0].endswith(NOTED)
            assert await say(concert, "eve", "!cancel") == ["your folk request is withdrawn"]
            assert await say(concert, "eve", "!compose irish harp") == [f"your irish for harp is {NOTED}"]
            assert await say(concert, "fay", "!queue") == [
                "the queue is unavailable right now; try again in a minute"
            ]
            for i in range(CROWD):
                replies = await say(concert, f"v{i:03d}", f"!compose {STYLES[i % 3]}")
                assert len(replies) == 1 and replies[0].endswith(NOTED), replies
            # Every reply went out once, each to its viewer (local chat prints them as Twitch would send them).
            assert len(concert.local_replies) == len(set(concert.local_replies))
            assert len(journal) == 4 + CROWD

            redis.start()
            # Killed again while the journal is being written: after a few entries, with most still waiting.
            await until(lambda: len(journal) < 4 + CROWD - 5, timeout=20, what="writing", step=0)
            redis.kill()
            left = len(journal)
            assert 0 < left < 4 + CROWD
            await asyncio.sleep(1.0)
            redis.start()
            await until(lambda: not journal, timeout=60, what="the journal written")

            queued = [(e.request.login, e.request.style) for e in await store.queue()]
            expected = [("bob", "irish"), ("cat", "bach"), ("eve", "irish")]
            expected += [(f"v{i:03d}", STYLES[i % 3]) for i in range(CROWD)]
            assert queued == expected  # in arrival order, none lost, none twice
            assert await store.votes(seed) == 1
            assert concert.commands.votes == 1

            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
            n = 4 + CROWD + 1  # eve's withdrawn one was journalled too
            for outcome, value in (("journalled", n), ("flushed", n - 1), ("refused", 0), ("dropped", 0)):
                assert f'concertbot_journal_commands_total{{outcome="{outcome}"}} {float(value)}' in metrics
            assert "concertbot_journal_waiting 0.0" in metrics

            # Normal play resumes from the real queue: a request now gets its place at once.
            assert (await say(concert, "gus", "!compose folk"))[0].startswith("your folk for")
            assert "in the queue" in concert.local_replies[-1]

    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    journal_log = [r.getMessage() for r in caplog.records if r.name == "bot.chat.journal"]
    assert journal_log == [f"Redis is back: {n - 1} commands kept during the outage are written"], journal_log
    chat_log = [r.levelno for r in caplog.records if r.name == "bot.chat.handlers"]
    assert chat_log == [logging.WARNING, logging.INFO]  # away once, back once: not a line per command
