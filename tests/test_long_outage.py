"""Issue 14's first row as it was found: the Redis server killed under a playing concert and started again 30 s
later, an overlay connected to `/ws` all the while. The overlay's piano roll and leaderboard must come back
(before the fix they stopped for good, and nothing was logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chat_rig import concert_on
from redis_server import REDIS_SERVER, RedisServer
from test_outage import line, queued, records, until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program"),
]

OUTAGE = 30.0  # seconds, as in the issue: past the updates' longest wait between tries


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Overlay:
    """What an overlay hears over `/ws`, kept in arrival order while it reads, as OBS does."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.heard: list[dict[str, Any]] = []
        self._reading = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            self.heard.append(json.loads(frame.data))

    def since(self, mark: int, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.heard[mark:] if m["type"] == kind]

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading


async def test_the_roll_and_the_leaderboard_come_back_after_redis_is_away_30_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        async with (
            concert_on(redis, tmp_path, seconds=240.0) as (concert, base),
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{base.replace('http', 'ws', 1)}/ws") as ws,
        ):
            overlay = Overlay(ws)
            try:
                await queued(concert, "ann", "!compose bach violin")
                await until(lambda: overlay.since(0, "notes"), timeout=60, what="the roll drawing")
                seed = str(concert.conductor.current.record.seed)

                redis.kill()
                await until(lambda: records(caplog, "bot.concert_view", logging.WARNING), what="warned")
                await asyncio.sleep(OUTAGE)
                redis.start()
                await until(lambda: records(caplog, "bot.concert_view", logging.INFO), timeout=30, what="back")

                mark = len(overlay.heard)
                await until(lambda: overlay.since(mark, "notes"), timeout=15, what="the roll moving again")
                assert {m["seed"] for m in overlay.since(mark, "notes")} == {seed}
                # Counted at once, or (a connection that died with the server) kept and written by the journal.
                [reply] = await concert.chat(line("bob", "!vote"))
                assert reply.text.startswith(f"your vote for {seed} is "), reply.text
                await until(
                    lambda: any(
                        row["seed"] == seed and row["votes"] == 1
                        for m in overlay.since(mark, "top")
                        for row in m["top"]
                    ),
                    timeout=15,
                    what="the leaderboard showing bob's vote",
                )
            finally:
                await overlay.close()

    view_log = records(caplog, "bot.concert_view")
    assert [r.levelno for r in view_log] == [logging.WARNING, logging.INFO], [r.getMessage() for r in view_log]
    assert not [r for r in caplog.records if r.exc_info]  # said once each way, no traceback
