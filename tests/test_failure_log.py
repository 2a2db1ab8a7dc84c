"""Retrying loops say a failure once when it starts and once when it ends: bot.state.outage.FailureLog on its
own, and the overlay hub with an overlay connected while its real Redis server is killed and started again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from chat_rig import concert_on
from redis_server import REDIS_SERVER, RedisServer
from test_outage import queued, records, until

from bot.state.outage import FailureLog, stop_if_cancelled
from bot.state.store import StoreUnavailable

LOGGER = "test.failure_log"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in records(caplog, LOGGER)]


def test_each_run_of_failures_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    loop = FailureLog(logging.getLogger(LOGGER), "updates")
    loop.worked()  # working from the start: nothing to say
    for _ in range(5):
        loop.failed(StoreUnavailable("Redis is not answering"))
    for _ in range(3):
        loop.failed(OSError("No space left on device"))  # failing in another way is news, once
    loop.worked()
    loop.worked()
    loop.failed(StoreUnavailable("Redis is not answering"))  # a new outage
    assert said(caplog) == [
        (logging.WARNING, "updates paused: Redis is not answering; retrying", False),
        (logging.ERROR, "updates failed; retrying", True),  # not expected: with its traceback
        (logging.INFO, "updates resumed", False),
        (logging.WARNING, "updates paused: Redis is not answering; retrying", False),
    ]


@pytest.mark.anyio
@pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program")
@pytest.mark.timeout(180)
async def test_the_overlay_hub_says_a_redis_outage_once_and_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hub_log = "bot.web.overlay"
    with RedisServer(tmp_path / "redis") as redis:
        async with concert_on(redis, tmp_path) as (concert, base), aiohttp.ClientSession() as http:
            await queued(concert, "ann", "!compose bach violin")
            await until(lambda: concert.conductor.current is not None, what="playing")
            async with http.ws_connect(f"{base.replace('http', 'ws', 1)}/ws") as overlay:
                messages: list[dict[str, object]] = []

                async def read() -> None:  # an overlay that keeps reading, as OBS does
                    async for frame in overlay:
                        messages.append(json.loads(frame.data))

                reader = asyncio.create_task(read())
                try:
                    await until(lambda: any(m["type"] == "now" and m["now"] for m in messages), what="now sent")
                    redis.kill()
                    await until(lambda: records(caplog, hub_log, logging.WARNING), what="the hub warned")
                    await asyncio.sleep(6.0)  # three of the hub's refreshes (RESYNC) fail meanwhile
                    redis.start()
                    await until(lambda: records(caplog, hub_log, logging.INFO), timeout=30, what="resumed")
                    since = len(messages)
                    await queued(concert, "bob", "!compose irish flute")
                    deadline = time.monotonic() + 15
                    while not any(  # the overlay is told about bob's request: the hub reads Redis again
                        m["type"] == "queue" and "bob" in json.dumps(m["queue"]) for m in messages[since:]
                    ):
                        assert time.monotonic() < deadline, "the overlay never heard of bob's request"
                        await asyncio.sleep(0.1)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader

    hub = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in records(caplog, hub_log)]
    assert [level for level, _, _ in hub] == [logging.WARNING, logging.INFO], hub
    assert "overlay refreshes paused" in hub[0][1] and "not answering" in hub[0][1] and not hub[0][2]
    assert hub[1][1] == "overlay refreshes resumed"


@pytest.mark.anyio
async def test_a_loop_stops_on_a_cancel_that_asyncio_wait_for_swallowed() -> None:
    """The race of CPython gh-86296, which redis-py's socket writes go through: a cancel arriving in the same
    turn of the loop as the awaited result. On Python 3.11 wait_for returns the result and the cancel is lost;
    the loop's `stop_if_cancelled` still ends it, where a bare loop would go round forever."""
    loop = asyncio.get_running_loop()
    turns = 0
    waiting: list[asyncio.Future[None]] = []

    async def retrying(check: bool) -> None:
        nonlocal turns
        while True:
            if check:
                stop_if_cancelled()
            turns += 1
            if turns > 50:
                return  # went round long after its cancel: the cancel was lost
            answer: asyncio.Future[None] = loop.create_future()
            waiting.append(answer)
            await asyncio.wait_for(answer, 5)

    for check in (False, True):
        turns = 0
        task = asyncio.create_task(retrying(check))
        for _ in range(50):  # let it reach its first wait
            if waiting:
                break
            await asyncio.sleep(0)
        answer = waiting.pop()
        answer.set_result(None)  # the write finishes ...
        task.cancel()  # ... as Ctrl-C arrives, in the same turn
        while len(waiting) < 1 and not task.done():  # answer every later wait at once
            await asyncio.sleep(0)
        while not task.done():
            if waiting:
                waiting.pop().set_result(None)
            await asyncio.sleep(0)
        if check:
            assert task.cancelled(), "stop_if_cancelled let the loop go on"
            assert turns == 1
        elif not task.cancelled():
            assert turns > 50  # this Python drops the cancel (3.11): the bare loop ran on
