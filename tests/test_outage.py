"""The concert while its Redis server is killed and started again: the real server, the real concert, real HTTP.

Music already handed to the engine plays on; what needs Redis says it is unavailable, in one log line rather
than a traceback per try, and everything works again once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from chat_rig import concert_on
from redis_server import REDIS_SERVER, RedisServer

from bot.app import Concert
from bot.chat.message import ChatMessage

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


UNAVAILABLE = "the queue is unavailable right now; try again in a minute"
JOURNALLED = "your irish for flute is noted: it joins the queue once the store is back"


def line(login: str, text: str) -> ChatMessage:
    return ChatMessage(f"local:{login}", login, login, text, message_id=f"m-{uuid.uuid4().hex[:8]}")


async def until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still not {what or predicate} after {timeout} s"
        await asyncio.sleep(0.05)


async def queued(concert: Concert, login: str, text: str, timeout: float = 30.0) -> str:
    """Ask until the request is queued (the first try after a restart may meet a connection that died)."""
    deadline = time.monotonic() + timeout
    while True:
        replies = await concert.chat(line(login, text))
        if replies and "in the queue" in replies[0].text:
            return replies[0].text
        assert time.monotonic() < deadline, f"{text!r} never queued; last replies {replies}"
        await asyncio.sleep(0.2)


async def queue_length(http: aiohttp.ClientSession, base: str) -> float:
    """The queue length the overlay feed last saw, as /metrics reports it (only that feed sets it)."""
    async with http.get(f"{base}/metrics") as r:
        match = re.search(r"^concertbot_queue_length (\S+)$", await r.text(), re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def records(caplog: pytest.LogCaptureFixture, logger: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and (level is None or r.levelno == level)]


async def test_the_overlay_feed_rides_out_a_redis_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        async with concert_on(redis, tmp_path) as (concert, base), aiohttp.ClientSession() as http:
            await queued(concert, "ann", "!compose bach violin")
            await until(lambda: concert.conductor.current is not None, what="playing")
            await queued(concert, "bob", "!compose irish flute")
            deadline = time.monotonic() + 10
            while await queue_length(http, base) != 1:
                assert time.monotonic() < deadline, "the feed never saw bob's request"
                await asyncio.sleep(0.1)

            redis.kill()
            await until(lambda: records(caplog, "bot.concert_view", logging.WARNING), what="warned")
            await asyncio.sleep(4.0)  # an outage of several retries, the wait between them growing
            redis.start()

            await until(lambda: records(caplog, "bot.concert_view", logging.INFO), what="resumed")
            await queued(concert, "cat", "!compose folk")
            deadline = time.monotonic() + 10
            while await queue_length(http, base) != 2:  # the feed publishes again
                assert time.monotonic() < deadline, "the feed did not come back after Redis did"
                await asyncio.sleep(0.1)

    view_log = records(caplog, "bot.concert_view")
    assert [r.levelno for r in view_log] == [logging.WARNING, logging.INFO], [r.getMessage() for r in view_log]
    assert "not answering" in view_log[0].getMessage() and not view_log[0].exc_info


async def test_api_pages_and_chat_say_unavailable_during_a_redis_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        async with concert_on(redis, tmp_path) as (concert, base), aiohttp.ClientSession() as http:
            await queued(concert, "ann", "!compose bach violin")
            await until(lambda: concert.conductor.current is not None, what="playing")
            seed = concert.conductor.current.record.seed

            redis.kill()
            paths = ["/api/now", "/api/queue", "/api/leaderboard?period=week", f"/api/pieces/{seed}"]
            for path in paths:
                async with http.get(base + path) as r:
                    assert r.status == 503, path
                    assert await r.json() == {"error": "state unavailable: Redis is not answering"}
            async with http.get(f"{base}/p/{seed}") as r:
                assert r.status == 503 and "text/html" in r.content_type
            # A request is kept in memory and written once Redis is back (tests/test_outage_journal.py).
            async with http.post(f"{base}/api/chat", json={"user": "bob", "text": "!compose irish flute"}) as r:
                assert r.status == 200 and (await r.json())["replies"] == [f"@bob {JOURNALLED}"]
            for text in ("!queue", f"!replay {seed}"):
                replies = await concert.chat(line("cat", text))
                assert [reply.text for reply in replies] == [UNAVAILABLE], text
            assert concert.conductor.current.record.seed == seed  # the music never stopped

            redis.start()
            await until(lambda: not concert.commands.journal, what="bob's request written")
            await queued(concert, "cat", "!compose folk")
            async with http.get(f"{base}/api/queue") as r:
                assert r.status == 200 and [e["requester"] for e in await r.json()] == ["bob", "cat"]

    web_log = records(caplog, "bot.web.server", logging.WARNING)
    assert len(web_log) == len(paths) + 1 and all("not answering" in r.getMessage() for r in web_log)
    chat_log = records(caplog, "bot.chat.handlers")
    assert [r.levelno for r in chat_log] == [logging.WARNING, logging.INFO]  # once away, once back
    # Nothing logged a traceback: an outage is said once, where it is met.
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_redis_outage_at_a_piece_boundary_leaves_no_dead_air(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        # 12-s pieces: the next is chosen 8 s before the end (conductor.LEAD_SECONDS), so after Redis is gone.
        async with concert_on(redis, tmp_path, seconds=12.0, autoplay=True) as (concert, _):
            conductor = concert.conductor
            await until(lambda: conductor.current is not None, what="playing")
            first = conductor.current.record.seed

            redis.kill()  # the piece ends while Redis is away
            assert conductor.upcoming is None and conductor.elapsed() < 4.0  # nothing chosen yet
            await until(
                lambda: conductor.current is not None and conductor.current.record.seed != first,
                timeout=60,
                what="a new piece during the outage",
            )
            during = conductor.current.record.seed
            # No dead air: the next piece was handed to the engine before the first one ended (it used to wait
            # ~13 s for Redis), so it follows after the engine's usual gap.
            [ended] = [e for e in concert.session.events if e.piece_id == str(first) and e.kind == "end"]
            assert conductor.current.live.requested_at < ended.at
            redis.start()

            # The piece played while Redis was away is saved, tokens and all, once it is back.
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(Exception):
                    record = await concert.store.load_piece(during)
                    if record is not None and record.tokens:
                        break
                assert time.monotonic() < deadline, "the piece played during the outage was never saved"
                await asyncio.sleep(0.2)

    conductor_log = records(caplog, "bot.concert.conductor")
    assert not [r for r in conductor_log if r.exc_info], [r.getMessage() for r in conductor_log]
    assert [r.levelno for r in conductor_log if r.levelno >= logging.WARNING] == [logging.WARNING]
