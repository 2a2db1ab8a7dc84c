"""The conductor on its own clocks, and a failing loop said once: the real conductor, model, store and session.

The session is never opened, so its engine renders nothing: the test says when a piece starts and ends, with
the stepped clock's time, as the engine would. Redis is a real `redis-server` of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis_server import REDIS_SERVER, RedisServer
from test_outage import records, until

from bot.app import Concert
from bot.chat.handlers import ChatCommands
from bot.concert.conductor import Conductor
from bot.concert.player import LiveSession
from bot.concert_view import LiveConcertView
from bot.state.store import open_store
from config import Settings, load_settings
from generator.model import LoadedModel, load_model
from synth.engine import EngineEvent

pytestmark = [
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program"),
    pytest.mark.timeout(60),
]
LOGGER = "bot.concert.conductor"
WALL = 1_800_000_000.0  # unix time, standing still: only the monotonic clock moves


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    conductor: Conductor
    concert: Concert
    said: list[str]
    redis: aioredis.Redis

    async def engine_says(self, kind: str, seed: int) -> None:
        """An engine event for the piece at the clock's time, as the render thread hands it over; returns once
        the conductor has taken it in."""
        self.conductor.changed.clear()
        self.conductor.on_engine_event(EngineEvent(kind, str(seed), self.conductor.clock(), 0))
        await asyncio.wait_for(self.conductor.changed.wait(), 30)


@contextlib.asynccontextmanager
async def conductor_on(
    server: RedisServer, tmp_path: Path, loaded: LoadedModel, clock: Callable[[], float], **settings: object
) -> AsyncIterator[Rig]:
    """A started (not yet running) conductor on `server`; autoplay on, one long piece at a time."""
    s: Settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 240.0},  # no second piece is due while the test runs
        concert={"redis_url": server.url, **settings},
        outputs={"device": "off"},
    )
    said: list[str] = []
    async with open_store(server.url, tmp_path, "conductor") as store:
        with contextlib.closing(LiveSession(s, loaded, [], clock=clock)) as session:
            conductor = Conductor(
                s, loaded, store, session, lambda text, _: said.append(text), lambda: WALL, rng=random.Random(7)
            )
            await conductor.start()
            concert = Concert(s, store, session, conductor, ChatCommands(s, conductor, store), lambda r: None)
            client = aioredis.from_url(server.url)
            try:
                yield Rig(conductor, concert, said, client)
            finally:
                await client.aclose()


@contextlib.asynccontextmanager
async def running(conductor: Conductor) -> AsyncIterator[None]:
    """The conductor's loop for the block; on leaving, checks that a cancel stops it, as Ctrl-C would."""
    task = asyncio.create_task(conductor.run())
    try:
        yield
    finally:
        task.cancel()
        stopped, _ = await asyncio.wait([task], timeout=30)
        assert stopped, "the conductor played on after it was cancelled"


@pytest.mark.anyio
async def test_elapsed_time_vote_grace_and_steering_windows_run_on_the_conductors_clock(
    tmp_path: Path, loaded: LoadedModel
) -> None:
    clock = Clock(5000.0)
    with RedisServer(tmp_path / "redis") as server:
        async with conductor_on(server, tmp_path, loaded, clock) as rig, running(rig.conductor):
            conductor = rig.conductor
            await until(lambda: conductor.upcoming is not None, what="a piece chosen")
            assert conductor.upcoming is not None
            seed = conductor.upcoming.record.seed
            await rig.engine_says("start", seed)
            assert conductor.current is not None and conductor.elapsed() == 0.0
            clock.now += 7.25
            assert conductor.elapsed() == 7.25  # nothing rendered (the engine knows no position): the clock's

            # A steering vote opens 15 s on the clock; the overlay shows when it closes in unix time.
            reply, passed = conductor.steer("id-ann", "faster", "", 12, clock(), False)
            assert (reply, passed) == ("!faster: 1/3 votes, 15 s left", False)
            clock.now += 5.0
            now = await LiveConcertView(rig.concert).now()
            assert now is not None and now.elapsed == round(7.25 + 5.0, 1)
            assert now.steer_votes == ({"steer": "!faster", "votes": 1, "needed": 3, "closes_at": WALL + 10.0},)
            clock.now += 9.5
            conductor.changed.clear()
            assert conductor.open_steer_votes(clock()) != []  # half a second left
            assert "ran out" not in " ".join(rig.said)
            clock.now += 0.5  # the window is over: the conductor's loop closes it and says so
            await asyncio.wait_for(conductor.changed.wait(), 30)
            assert rig.said[-1] == "the vote for !faster ran out (1/3)"
            assert (await LiveConcertView(rig.concert).now()).steer_votes == ()  # type: ignore[union-attr]

            # A !vote counts for the piece that ended for the grace time after its end, on the same clock.
            grace = conductor.settings.concert.vote_grace_seconds
            assert conductor.vote_target(grace) == seed
            await rig.engine_says("end", seed)
            assert conductor.current is None and conductor.last is not None
            clock.now += grace
            assert conductor.vote_target(grace) == seed
            clock.now += 0.5
            assert conductor.vote_target(grace) is None
            # Leaving cancels the loop while it writes the piece's end to Redis: it stops all the same.


async def oom_refusals(client: aioredis.Redis) -> int:
    """How many commands the server refused for want of memory since it started."""
    stats = await client.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


@pytest.mark.anyio
async def test_a_conductor_that_keeps_failing_says_so_once_with_its_traceback_and_once_when_it_recovers(
    tmp_path: Path, loaded: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with RedisServer(tmp_path / "redis") as server:
        async with conductor_on(server, tmp_path, loaded, Clock(5000.0)) as rig:
            # Redis full (maxmemory, no eviction): it answers, and refuses every write with an OOM error. Not an
            # outage: the conductor cannot claim a seed for its next piece, and tries again every second.
            await rig.redis.config_set("maxmemory", "1")
            async with running(rig.conductor):
                await until(lambda: records(caplog, LOGGER, logging.ERROR), what="a failure said")
                refused = await oom_refusals(rig.redis)
                async with asyncio.timeout(30):
                    while await oom_refusals(rig.redis) < refused + 4:  # four more tries, each refused
                        await asyncio.sleep(0.1)
                assert rig.conductor.upcoming is None
                await rig.redis.config_set("maxmemory", "0")
                await until(lambda: rig.conductor.upcoming is not None, what="a piece, Redis having room")
                await until(lambda: records(caplog, LOGGER, logging.INFO), what="the recovery said")
    said = [(r.levelno, r.getMessage(), r.exc_info) for r in records(caplog, LOGGER)]
    assert [(level, message) for level, message, _ in said] == [
        (logging.ERROR, "the conductor failed; retrying"),
        (logging.INFO, "the conductor resumed"),
    ]
    traceback = said[0][2]
    assert traceback is not None and "command not allowed when used memory > 'maxmemory'" in str(traceback[1])
