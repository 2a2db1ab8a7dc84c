"""The web side over the real concert (not a fake): overlay in headless Chromium, API, downloads, admin."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
import uuid
from pathlib import Path

import aiohttp
import mido
import pytest
from browser import find_chromium, launch_chromium
from serving import free_port

from bot.app import Concert, run_concert
from bot.concert_view import plan_summary
from config import load_settings
from generator.decode import decode

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        find_chromium() is None, reason="needs Debian's chromium (scripts/setup.sh installs it)"
    ),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_overlay_and_api_follow_the_real_concert(tmp_path: Path):
    port = free_port()
    settings = load_settings(
        paths={"data_dir": str(tmp_path)},
        sampling={"seconds": 6.0},
        concert={"autoplay": False, "http_port": port, "admin_token": "s3cret"},
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, None, sinks=[], started=ready.set_result, namespace=f"web-{uuid.uuid4().hex[:6]}")
    )
    base = f"http://127.0.0.1:{port}"
    try:
        concert = await asyncio.wait_for(ready, 30)
        async with (
            launch_chromium("--autoplay-policy=no-user-gesture-required") as browser,
            aiohttp.ClientSession() as http,
        ):
            page = await browser.new_page(f"{base}/overlay")
            await page.wait_for("document.body.dataset.live === '1'", timeout=15)
            assert await (await http.get(f"{base}/api/now")).json() is None

            reply = await http.post(
                f"{base}/api/chat", json={"user": "ann", "text": "!compose bach violin cello"}
            )
            assert "#1 in the queue" in (await reply.json())["replies"][0]
            while concert.conductor.current is None:
                await asyncio.sleep(0.01)
            slot = concert.conductor.current
            seed = slot.record.seed
            await page.wait_for(f"document.getElementById('now-seed').textContent === '{seed}'", timeout=5)
            shown = time.monotonic()
            # The overlay changed within a second of the first sample being due at the outputs.
            assert shown - slot.started < 1.0
            assert "bach" in (await page.evaluate("document.getElementById('now-style').textContent")).lower()

            now = await (await http.get(f"{base}/api/now")).json()
            assert (now["seed"], now["style"], now["requester"]) == (seed, "bach", "ann")
            assert now["instruments"] == ["violin", "cello"]
            # The plan shown is the one the composer follows; a piece of another model has none known.
            followed = concert.session.worker.composer.plan(slot.record.recipe)
            assert followed is not None and now["form"] == followed.form
            assert now["plan"] == plan_summary(followed, slot.record.recipe.tempo)
            assert concert.conductor.plan_of(dataclasses.replace(slot.record, model_version="other")) is None
            sections = await page.evaluate("document.getElementById('now-sections').textContent")
            assert sections == followed.form.replace(" ", "")
            cadence = "document.getElementById('now-cadence').textContent"
            await page.wait_for(f"{cadence}.includes('cadence')", timeout=2)

            # Once the piece is generated, its MIDI and WAV can be downloaded from its page.
            while not slot.saved:
                await asyncio.sleep(0.05)
            midi = mido.MidiFile(file=io.BytesIO(await (await http.get(f"{base}/p/{seed}.mid")).read()))
            notes = [m for m in midi.tracks[0] if m.type == "note_on" and m.velocity > 0]
            played = decode(concert.session.worker.composer.vocab, slot.live.tokens)
            assert played and len(notes) == len(played)  # every note the concert played, none more
            wav = await http.get(f"{base}/p/{seed}.wav")
            assert wav.status == 200 and (await wav.read())[:4] == b"RIFF"
            page_html = await (await http.get(f"{base}/p/{seed}")).text()
            assert str(seed) in page_html and "bach" in page_html.lower()
            assert f"<th>Form</th><td>{followed.form} · " in page_html
            assert concert.conductor.key_of(slot.record) and "<th>Key</th>" in page_html  # the seed's key

            assert (await http.get(f"{base}/p/not-a-seed")).status == 404
            assert (await http.get(f"{base}/p/424242")).status == 404
            assert (await http.post(f"{base}/api/skip")).status == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await http.post(f"{base}/api/skip", headers=wrong)).status == 401
            right = {"Authorization": "Bearer s3cret"}
            status = "document.getElementById('now-status').textContent"
            assert (await http.post(f"{base}/api/pause", headers=right)).status == 200
            await page.wait_for(f"{status} === 'Paused'", timeout=2)
            assert (await (await http.get(f"{base}/api/now")).json())["paused"] is True
            assert (await http.post(f"{base}/api/resume", headers=right)).status == 200
            await page.wait_for(f"{status} === 'Now playing'", timeout=2)
            assert (await http.post(f"{base}/api/skip", headers=right)).status == 200
            while concert.conductor.current is not None:
                await asyncio.sleep(0.05)
            assert concert.conductor.last.record.seed == seed

            metrics = await (await http.get(f"{base}/metrics")).text()
            assert "concertbot_queue_length" in metrics and "concertbot_chat_messages_total 1.0" in metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
