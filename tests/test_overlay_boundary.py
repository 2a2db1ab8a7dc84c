"""At a piece boundary the overlay says what comes next, never "The stage is quiet" or "Nothing queued" while
requests wait: a running concert (real store, conductor and engine) with three requests of short pieces, read
through the overlay's own feed (/ws) and, where Chromium is installed, in the real overlay page."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import find_chromium, launch_chromium
from chat_rig import HAS_REDIS, running_concert, viewer
from serving import free_port

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379"),
]

REQUESTS = {"ann": "!compose irish flute", "bob": "!compose bach violin cello", "cy": "!compose folk harp"}
# Records what the overlay shows each time it changes: the now panel's state, its idle heading, queue rows.
WATCH = """
window.seen = [];
const look = () => {
  const $ = (id) => document.getElementById(id);
  const shown = [$('now').dataset.state, $('idle-title').textContent, $('queue-list').children.length,
    $('idle-next').textContent];
  const last = window.seen[window.seen.length - 1];
  if (!last || shown.some((v, i) => v !== last[i])) window.seen.push(shown);
};
new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
  characterData: true});
look();
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _feed(url: str, until: str) -> list[dict[str, Any]]:
    """The overlay feed's messages until a piece requested by `until` is playing."""
    messages = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        async for frame in ws:
            message = json.loads(frame.data)
            messages.append(message)
            if message["type"] == "now" and (message["now"] or {}).get("requester") == until:
                return messages
    raise AssertionError("the feed closed")


@pytest.mark.timeout(240)
async def test_between_pieces_the_overlay_names_the_next_request(tmp_path: Path) -> None:
    port = free_port()
    options = {"autoplay": False, "viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0}
    async with running_concert(
        tmp_path, seconds=6.0, http_port=port, http_host="127.0.0.1", **options
    ) as concert:
        for login, text in REQUESTS.items():
            (ack,) = await concert.commands.handle(viewer(login, text))
            assert "in the queue" in ack.text
        page_seen: list[list[Any]] = []
        chromium = find_chromium()
        async with launch_chromium() if chromium else _nothing() as browser:
            page = await browser.new_page(f"http://127.0.0.1:{port}/overlay") if browser else None
            if page is not None:
                await page.wait_for("document.body.dataset.live === '1'")
                await page.evaluate(WATCH)
            messages = await asyncio.wait_for(_feed(f"ws://127.0.0.1:{port}/ws", until="cy"), 180)
            if page is not None:
                page_seen = await page.evaluate("window.seen")

    now: dict[str, Any] | None = None
    started: set[str] = set()
    boundaries = 0
    for message in messages:
        if message["type"] == "now":
            now = message["now"]
            if now is not None:
                started.add(now["requester"])
        elif message["type"] == "queue":
            shown = {q["requester"] for q in message["queue"]} | ({now["requester"]} if now else set())
            waiting = set(REQUESTS) - started
            assert waiting <= shown, (now, message["queue"])  # no request vanishes before it plays
            if now is None and waiting:
                boundaries += 1
                assert message["queue"][0]["position"] == 0  # the one being composed comes first
    assert boundaries >= 1  # the feed was read across a piece boundary
    assert started == set(REQUESTS)

    if chromium:
        idle = [shown for shown in page_seen if shown[0] == "idle"]
        assert idle, page_seen  # the page did show a boundary
        assert not [s for s in idle if s[1] == "The stage is quiet"], page_seen
        assert all(s[1].startswith("Next: ") and s[2] > 0 and "requested by" in s[3] for s in idle), idle


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_: object) -> None:
        return None
