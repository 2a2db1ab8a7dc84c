"""Issue 14's first row in the page itself: the overlay open in a real headless Chromium while the Redis server
is killed under a playing concert and started again 30 s later. The page must go on drawing the piece's roll and
show a vote cast after the outage on its leaderboard (test_long_outage checks the same on `/ws`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from browser import find_chromium, launch_chromium
from chat_rig import concert_on
from redis_server import REDIS_SERVER, RedisServer
from test_long_outage import OUTAGE
from test_outage import line, queued, records, until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server program"),
    pytest.mark.skipif(find_chromium() is None, reason="needs Chromium"),
]

# Counts the notes the page is handed, in the page's own message dispatch (overlay.js's `handlers`).
COUNT_NOTES = """window.notesHeard = 0;
const addNotesFirst = handlers.notes;
handlers.notes = (message) => { window.notesHeard += message.notes.length; addNotesFirst(message); };
true"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_the_overlay_page_draws_the_roll_and_the_leaderboard_after_redis_is_away_30_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as redis:
        async with (
            concert_on(redis, tmp_path, seconds=240.0) as (concert, base),
            launch_chromium() as browser,
        ):
            page = await browser.new_page(f"{base}/overlay")
            await page.wait_for("document.body.dataset.live === '1'", timeout=30)
            await page.evaluate(COUNT_NOTES)
            await queued(concert, "ann", "!compose bach violin")
            await page.wait_for("window.notesHeard > 0 && roll.drawn > 0", timeout=90)
            current = concert.conductor.current
            assert current is not None
            seed = str(current.record.seed)
            assert await page.evaluate("document.getElementById('now-seed').textContent") == seed

            redis.kill()
            await until(lambda: records(caplog, "bot.concert_view", logging.WARNING), what="warned")
            await asyncio.sleep(OUTAGE)
            redis.start()
            await until(lambda: records(caplog, "bot.concert_view", logging.INFO), timeout=30, what="back")

            heard = await page.evaluate("window.notesHeard")
            await page.wait_for(f"window.notesHeard > {heard} && roll.drawn > 0", timeout=30)
            assert await page.evaluate("document.getElementById('now-seed').textContent") == seed
            [reply] = await concert.chat(line("bob", "!vote"))
            assert reply.text.startswith(f"your vote for {seed} is "), reply.text
            board = "document.getElementById('top-list').textContent"
            await page.wait_for(f"{board}.includes('#{seed}') && {board}.includes('▲ 1')", timeout=30)
            assert await page.evaluate("document.body.dataset.live") == "1"  # the page never gave up

    assert not [r for r in caplog.records if r.exc_info]  # no traceback
