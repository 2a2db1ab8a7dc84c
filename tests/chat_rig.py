"""A whole running concert for tests that drive chat commands directly: the real command handlers, conductor,
engine and a real Redis server (127.0.0.1:6379, each test in its own namespace, removed afterwards).

    async with running_concert(tmp_path) as concert:
        replies = await concert.commands.handle(viewer("ada", "!vote"))
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from redis_server import RedisServer
from serving import free_port, listening

from bot.app import Concert, run_concert
from bot.chat.message import ChatMessage
from bot.state.keys import Keys
from config import Settings, load_settings

REDIS_URL = "redis://127.0.0.1:6379/0"
HAS_REDIS = listening(6379)

# The shapes of the key names `bot.state.keys.Keys` builds from seeds, weeks and tokens; with its fixed names,
# every key the bot may make. A key outside them is one that viewer input built.
KEY_SHAPES = re.compile(
    r"(piece|played|votes):[0-9]{19}|board:week:[0-9]{4}-W[0-9]{2}|board:stream:(h[0-9a-f]{32}|[0-9]{1,20})"
)
_ids = itertools.count(1)


def viewer(login: str, text: str, moderator: bool = False) -> ChatMessage:
    """A chat line from `login`, with a fresh message id as Twitch would give it."""
    return ChatMessage(f"id-{login}", login, login, text, message_id=f"m{next(_ids)}", is_moderator=moderator)


@asynccontextmanager
async def running_concert(tmp_path: Path, seconds: float = 240.0, **concert: Any) -> AsyncIterator[Concert]:
    """The concert with local chat, no outputs and no web server, until the block ends.

    `seconds` is the length of each piece; `concert` overrides `[concert]` settings (`http_port` starts the
    web side on 127.0.0.1); autoplay is on, so a piece plays (and can be voted for) soon.
    """
    namespace = f"rig-{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": seconds},  # by default one piece outlasts the test: nothing else is composed
        concert={"redis_url": REDIS_URL, "http_port": 0, **concert},
        outputs={"device": "off"},
    )
    try:
        async with started(settings, namespace) as running:
            yield running
    finally:
        await drop_namespace(namespace)


@asynccontextmanager
async def started(
    settings: Settings, namespace: str, timeout: float = 60.0, **run: Any
) -> AsyncIterator[Concert]:
    """The concert of `settings` (no Twitch, no outputs) from its start to the end of the block; a concert
    that fails to start raises why. `run`: more arguments for `run_concert` (its `clock`)."""
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, None, sinks=[], started=ready.set_result, namespace=namespace, **run)
    )
    try:
        done, _ = await asyncio.wait([ready, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # it failed to start: show why
        if not ready.done():
            raise TimeoutError(f"the concert did not start within {timeout:g} s")
        yield ready.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def concert_on(
    redis: RedisServer, tmp_path: Path, seconds: float = 120.0, autoplay: bool = False, **concert: Any
) -> AsyncIterator[tuple[Concert, str]]:
    """A local-chat concert on `redis` with its web side and no cooldowns; yields it and the web side's base
    URL. `concert` overrides more `[concert]` settings.

    By default the first piece plays all through the test, so requests stay queued.
    """
    port = free_port()
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": seconds},
        concert={
            "autoplay": autoplay,
            "redis_url": redis.url,
            "http_port": port,
            "viewer_cooldown_seconds": 0.0,
            "global_cooldown_seconds": 0.0,
            "error_reply_seconds": 0.0,
            **concert,
        },
        outputs={"device": "off"},
    )
    async with started(settings, f"web-{uuid.uuid4().hex[:6]}") as running:
        yield running, f"http://127.0.0.1:{port}"


def stray_keys(namespace: str, keys: list[str]) -> list[str]:
    """The keys of `namespace` that `bot.state.keys.Keys` would never make."""
    fixed = {value for value in vars(Keys(namespace)).values() if isinstance(value, str) and ":" in value}
    prefix = namespace + ":"
    return [k for k in keys if k not in fixed and not KEY_SHAPES.fullmatch(k.removeprefix(prefix))]


async def namespace_keys(namespace: str) -> list[str]:
    client = redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
    finally:
        await client.aclose()


async def drop_namespace(namespace: str) -> None:
    client = redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def playing(concert: Concert, timeout: float = 60.0) -> int:
    """Wait until a piece plays; its seed."""
    async with asyncio.timeout(timeout):
        while concert.conductor.current is None:
            await asyncio.sleep(0.05)
    return concert.conductor.current.record.seed
