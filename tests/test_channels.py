"""Several channels in one deployment (`[[channels]]`): each its own queue, votes, leaderboard and audio, one
model and one Redis between them. The real concert, the real Redis server (127.0.0.1:6379), real FluidSynth
and WAV recordings, real HTTP."""

from __future__ import annotations

import asyncio
import socket
import uuid
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from chat_rig import HAS_REDIS, REDIS_URL, drop_namespace, namespace_keys, playing, stray_keys, viewer
from serving import free_port

from bot.app import Concert, run_concert
from config import Settings, load_settings
from config.errors import ConfigError
from config.settings import channel_plans

NO_COOLDOWNS = {"viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0, "error_reply_seconds": 0.0}


def test_without_channels_one_channel_keeps_the_namespace_and_the_settings() -> None:
    settings = load_settings(outputs={"device": "off"})
    (plan,) = channel_plans(settings, "concertbot", "somestreamer")
    assert (plan.name, plan.namespace, plan.twitch_channel) == ("default", "concertbot", "somestreamer")
    assert plan.settings is settings  # a single streamer's bot runs exactly as before


def test_channels_get_their_namespace_and_their_overrides() -> None:
    settings = load_settings(
        concert={"max_queue": 50},
        channels=[
            {"name": "north", "twitch_channel": "nordic", "concert": {"http_port": 8081, "max_queue": 5}},
            {"name": "south", "concert": {"http_port": 0}, "sampling": {"critic": 1}},
        ],
    )
    north, south = channel_plans(settings, "cb", "ignored")
    assert (north.namespace, north.twitch_channel, north.settings.concert.max_queue) == (
        "cb.north",
        "nordic",
        5,
    )
    assert (south.namespace, south.twitch_channel, south.settings.concert.max_queue) == ("cb.south", None, 50)
    assert (north.settings.sampling.critic, south.settings.sampling.critic) == (settings.sampling.critic, 1)
    assert north.settings.channels == [] and north.settings.concert.http_port == 8081


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ([{"name": "a"}, {"name": "b"}], "both want http_port 8080"),
        (
            [{"name": "a", "concert": {"http_port": 0}}, {"name": "a", "concert": {"http_port": 0}}],
            "repeated: a",
        ),
        ([{"name": "a", "concert": {"redis_url": "redis://x"}}], "redis_url is shared"),
        ([{"name": "a", "concert": {"max_queue": 0}}], "channel 'a': max_queue = 0"),
        ([{"name": "a", "concert": {"no_such": 1}}], "channel 'a': \\[concert\\] has no no_such"),
        ([{"name": "A:B"}], "channels.0.name"),
    ],
)
def test_bad_channels_are_refused_at_start_up(channels: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(channels=channels)


pytestmark_redis = pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")


@asynccontextmanager
async def deployment(settings: Settings, namespace: str) -> AsyncIterator[dict[str, Concert]]:
    """Every channel of `settings` running, by name, until the block ends (and the recordings are closed)."""
    ready: asyncio.Future[dict[str, Concert]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, None, namespace=namespace, channels_started=ready.set_result)
    )
    try:
        either: list[asyncio.Future[Any]] = [ready, task]
        done, _ = await asyncio.wait(either, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        if not ready.done():
            raise TimeoutError("the channels did not start within 90 s")
        yield ready.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def samples(path: Path) -> tuple[np.ndarray, int]:
    """A recording's samples (frames x 2) and its rate; none when it was never written."""
    if not path.exists():
        return np.zeros((0, 2), np.int16), 44100
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
        return data, w.getframerate()


async def recorded(path: Path, frames: int, timeout: float = 60.0) -> None:
    """Wait until the recording at `path` holds `frames` frames (16-bit stereo)."""
    async with asyncio.timeout(timeout):
        while not path.exists() or path.stat().st_size < 44 + 4 * frames:
            await asyncio.sleep(0.1)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytestmark_redis
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_channels_do_not_see_each_others_queue_votes_board_or_audio(tmp_path: Path) -> None:
    base = f"chan-{uuid.uuid4().hex[:8]}"
    ports = {"north": free_port(), "south": free_port()}
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 120.0},  # the first piece outlasts the test: the next request stays queued
        concert={"redis_url": REDIS_URL, "autoplay": False, **NO_COOLDOWNS},
        outputs={"device": "off"},
        channels=[
            {
                "name": name,
                "outputs": {"device": "off", "record": str(tmp_path / f"{name}.wav")},
                "concert": {"http_port": port},
            }
            for name, port in ports.items()
        ],
    )
    try:
        async with deployment(settings, base) as channels:
            north, south = channels["north"], channels["south"]
            assert north.session.renderer is not south.session.renderer
            await north.chat(viewer("ada", "!compose bach violin cello"))
            seed = await playing(north)
            await north.chat(viewer("bob", "!compose irish flute"))
            await north.chat(viewer("cyd", "!vote"))
            # South heard none of it: nothing plays there, its queue and board are empty, a vote has no piece.
            assert south.conductor.current is None
            assert [e.request.login for e in await north.store.queue()] == ["bob"]
            assert await south.store.queue() == []
            assert (await north.store.votes(seed), await south.store.votes(seed)) == (1, 0)
            north_top = await north.store.top("all", north.conductor.stream_id, north.conductor.wall())
            assert [e.seed for e in north_top] == [seed]
            assert await south.store.top("all", south.conductor.stream_id, south.conductor.wall()) == []
            assert [r.text for r in await south.chat(viewer("cyd", "!vote"))] == [
                "nothing to vote for right now"
            ]
            # Each channel's web side, on its own port, shows its own concert.
            north_url, south_url = (f"http://127.0.0.1:{p}" for p in ports.values())
            assert [q["requester"] for q in await get_json(f"{north_url}/api/queue")] == ["bob"]
            assert await get_json(f"{south_url}/api/queue") == []
            assert (await get_json(f"{north_url}/api/now"))["seed"] == seed
            assert await get_json(f"{south_url}/api/now") is None
            # Let north's piece sound for two seconds past its start before the recordings close.
            start = next(e for e in list(north.session.events) if e.kind == "start")
            await recorded(tmp_path / "north.wav", start.frame + 2 * settings.synth.sample_rate)
        north_audio, _ = samples(tmp_path / "north.wav")
        south_audio, _ = samples(tmp_path / "south.wav")
        assert np.abs(north_audio[start.frame :].astype(np.int32)).max() > 100  # the piece is heard in north
        assert not south_audio.any()  # and south stayed silent
        for name in ports:
            keys = await namespace_keys(f"{base}.{name}")
            assert keys and stray_keys(f"{base}.{name}", keys) == []
        assert await namespace_keys(base) == []  # nothing under the bare namespace: every key is a channel's
    finally:
        for name in ports:
            await drop_namespace(f"{base}.{name}")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_channels_share_one_embedded_redis_in_the_data_folder(tmp_path: Path) -> None:
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 120.0},
        concert={"autoplay": False, "http_port": 0, **NO_COOLDOWNS},
        outputs={"device": "off"},
        channels=[{"name": "north"}, {"name": "south"}],
    )
    async with deployment(settings, "concertbot") as channels:
        north, south = channels["north"], channels["south"]
        await north.chat(viewer("ada", "!compose bach violin cello"))
        await north.chat(viewer("bob", "!compose irish flute"))
        assert len(await north.store.queue()) >= 1 and await south.store.queue() == []
        # One server, started in the data folder, under a namespace each.
        assert north.store.where == south.store.where and str(tmp_path / "data" / "redis") in north.store.where
        assert (north.store.keys.namespace, south.store.keys.namespace) == (
            "concertbot.north",
            "concertbot.south",
        )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_channel_whose_port_is_taken_stops_the_start_before_anything_plays(tmp_path: Path) -> None:
    taken_port = free_port()
    with socket.create_server(("127.0.0.1", taken_port)):
        settings = load_settings(
            paths={"data_dir": str(tmp_path / "data")},
            concert={"redis_url": "redis://127.0.0.1:1/0"},  # never reached: the port is claimed first
            outputs={"device": "off"},
            channels=[
                {"name": "north", "concert": {"http_port": free_port()}},
                {"name": "south", "concert": {"http_port": taken_port}},
            ],
        )
        with pytest.raises(ConfigError, match=f"http_port = {taken_port}"):
            await run_concert(settings, None, sinks=[])
