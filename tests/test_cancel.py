"""A stop is a stop: the conductor's wait for engine events never swallows a cancel (Ctrl-C, SIGTERM, a test's
teardown), even when an event arrives in the same turn of the loop."""

from __future__ import annotations

import asyncio

import pytest

from bot.concert.conductor import next_event

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the bot runs on asyncio, whose wait_for is the trap


async def test_a_cancel_that_meets_an_event_stops_the_wait_and_keeps_the_event() -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    waiting = asyncio.create_task(next_event(events, 5.0))
    await asyncio.sleep(0)  # it is waiting on the queue
    events.put_nowait("piece ended")
    waiting.cancel()  # the same turn: asyncio.wait_for on 3.11 would return the event and drop this
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert events.qsize() == 1  # nothing lost either


async def test_an_event_or_nothing_after_the_timeout() -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    assert await next_event(events, 0.01) is None
    events.put_nowait("started")
    assert await next_event(events, 5.0) == "started"
