"""One clock for the whole concert (issue 14): `run_concert(clock=...)` is the clock the engine, the conductor,
the chat cooldowns and the overlay all keep time by.

The concert is the real one (shipped model, FluidSynth, the Redis server on 127.0.0.1:6379); only its clock is
the test's, and it moves only when the test moves it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from chat_rig import HAS_REDIS, REDIS_URL, drop_namespace, playing, started, viewer
from serving import free_port

from bot.app import Concert
from config import load_settings

WAIT = 4.0  # the viewer cooldown and the steering vote window, in seconds of the concert's clock


class SteppedClock:
    """Monotonic seconds that stand still until `step` moves them."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


async def _run_until_playing(concert: Concert, clock: SteppedClock) -> None:
    """Move the clock at about real speed until a piece sounds (the engine paces itself by it), then stop."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.05)
            clock.step(0.05)

    ticking = asyncio.create_task(tick())
    try:
        await playing(concert)
        # Past the pre-buffer, so that the piece is rendering when the clock stops.
        async with asyncio.timeout(60):
            while concert.conductor.elapsed() < 0.5:
                await asyncio.sleep(0.05)
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)


async def _now_messages_after(base: str, wait: float) -> list[dict[str, object]]:
    """The overlay's "now" messages, read until one arrives at least `wait` real seconds after the call."""
    since = time.monotonic()
    seen = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/ws") as ws:
        async with asyncio.timeout(60):
            while True:
                message = json.loads(await ws.receive_str())
                if message["type"] != "now":
                    continue
                seen.append(message)
                if time.monotonic() - since >= wait:
                    return seen


@pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")
@pytest.mark.anyio
async def test_cooldowns_steering_votes_and_the_overlay_keep_the_concerts_clock(tmp_path: Path):
    port = free_port()
    namespace = f"clock-{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 240.0},  # one piece outlasts the test
        concert={
            "redis_url": REDIS_URL,
            "http_port": port,
            "viewer_cooldown_seconds": WAIT,
            "global_cooldown_seconds": 0.0,
            "error_reply_seconds": 0.0,
            "steer_window_seconds": WAIT,
        },
        outputs={"device": "off"},
    )
    clock = SteppedClock()
    try:
        async with started(settings, namespace, clock=clock) as concert:
            await _run_until_playing(concert, clock)

            async def say(login: str, text: str) -> list[str]:
                return [r.text for r in await concert.commands.handle(viewer(login, text))]

            # The clock stands still, so the piece's elapsed time does; on the concert's clock no time passes
            # either, so the overlay keeps calling it playing (on a clock of its own it would say paused once
            # a real second went by with the elapsed time still).
            messages = await _now_messages_after(f"http://127.0.0.1:{port}", wait=1.5)
            assert messages[-1]["now"] is not None
            assert [m["ticking"] for m in messages] == [True] * len(messages)

            # A viewer's cooldown runs out when the concert's clock moves, not before, however long it takes.
            assert (await say("ann", "!compose bach"))[0].startswith("your bach")
            assert await say("ann", "!compose irish") == [f"one request at a time: try again in {WAIT:.0f} s"]
            await asyncio.sleep(WAIT + 0.5)  # real time alone does not end it
            assert await say("ann", "!compose irish") == [f"one request at a time: try again in {WAIT:.0f} s"]
            assert (await say("bob", "!faster")) == [f"!faster: 1/2 votes, {WAIT:.0f} s left"]
            clock.step(WAIT + 0.5)
            assert (await say("ann", "!compose irish"))[0].startswith("your irish")

            # The conductor closes the steering vote by the same clock: it ran out with the cooldown.
            async with asyncio.timeout(30):
                while "the vote for !faster ran out (1/2)" not in concert.local_replies:
                    await asyncio.sleep(0.05)
    finally:
        await drop_namespace(namespace)
