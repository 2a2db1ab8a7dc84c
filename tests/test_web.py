"""The web side against a fake concert: JSON API, pages, admin, chat, metrics over real HTTP, and the overlay
in a real headless Chromium (live updates, screenshots, audio)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import shutil
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import mido
import numpy as np
import pytest
from aiohttp import web
from browser import Browser, Page, find_chromium, launch_chromium, wait_until_playing
from fake_concert import FakeConcert
from PIL import Image
from serving import running
from tones import RATE, writing

from bot.concert_view import metre, plan_summary
from bot.web import overlay as overlay_module
from bot.web.data import board_json, parse_panels, parse_seed, seeds_as_text
from bot.web.overlay import OUTBOX, PAUSE_AFTER, OverlayClient, OverlayHub, PlayClock
from bot.web.pages import form_line, top_body
from bot.web.server import make_app
from bot.web.view import BoardView, LiveNote, NowView
from generator.plan import Phrase, Plan, Section, draw_plan
from generator.sampling import PieceRequest
from synth.http_audio import AudioBroadcast

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token"
DOCS = Path(__file__).resolve().parents[1] / "docs"
# Screenshots go to pytest's temporary folder; with this set they also replace the ones in docs/ (every run
# differs a little, so refreshing them is a choice, not a side effect of running the tests).
UPDATE_DOCS = os.environ.get("CONCERTBOT_UPDATE_DOCS") == "1"
CHROMIUM = find_chromium()
FFMPEG = shutil.which("ffmpeg")
BIG_SEED = 2**53 + 1  # a JavaScript number would show it as ...992
# A reel's shape: two four-bar strains, each played twice, in 2/4; its phrases end on V and I in turn.
REEL = Plan(
    bar=16,
    bars=16,
    sections=(Section("A", 0, 4), Section("A", 4, 4, 0), Section("B", 8, 4), Section("B", 12, 4, 2)),
    phrases=(Phrase(0, 4, 7, 0), Phrase(4, 4, 0, 1), Phrase(8, 4, 7, 2), Phrase(12, 4, 0, 3)),
)
REEL_TEMPO = 96.0  # a 2/4 bar lasts 1.25 s


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def client(
    concert: FakeConcert, admin_token: str | None = TOKEN, **options: Any
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with running(make_app(concert, admin_token, **options)) as url, aiohttp.ClientSession() as session:
        yield url, session


def seed_of(value: str) -> int:
    seed = parse_seed(value)
    assert seed is not None
    return seed


# Pure parts


def test_seeds_are_1_to_19_ascii_digits_below_2_to_the_63() -> None:
    assert parse_seed("0042") == 42
    assert parse_seed(str(2**63 - 1)) == 2**63 - 1
    for bad in ("", "abc", "-5", "1e3", "12 ", "١٢٣", "12345678901234567890", str(2**63), "9" * 19):
        assert parse_seed(bad) is None, bad


def test_overlay_messages_carry_seeds_as_text() -> None:
    value = {"now": {"seed": BIG_SEED, "votes": 3}, "queue": [{"replay_seed": 7, "position": 1}]}
    assert seeds_as_text(value) == {
        "now": {"seed": str(BIG_SEED), "votes": 3},
        "queue": [{"replay_seed": "7", "position": 1}],
    }


def test_panels_default_to_all_and_keep_their_order() -> None:
    assert parse_panels(None) == ("now", "queue", "top", "roll")
    assert parse_panels("roll, NOW,bogus") == ("now", "roll")
    assert parse_panels("bogus") == ("now", "queue", "top", "roll")


def test_a_plan_is_summed_up_in_bars_and_seconds() -> None:
    assert plan_summary(REEL, REEL_TEMPO) == {
        "form": "A A B B",
        "bars": 16,
        "metre": "2/4",
        "bar_seconds": 1.25,
        "sections": [
            {"label": "A", "start": 0, "bars": 4},
            {"label": "A", "start": 4, "bars": 4},
            {"label": "B", "start": 8, "bars": 4},
            {"label": "B", "start": 12, "bars": 4},
        ],
        "phrases": [
            {"start": 0, "bars": 4, "cadence": 7, "cadence_at": 3.75},
            {"start": 4, "bars": 4, "cadence": 0, "cadence_at": 8.75},
            {"start": 8, "bars": 4, "cadence": 7, "cadence_at": 13.75},
            {"start": 12, "bars": 4, "cadence": 0, "cadence_at": 18.75},
        ],
    }
    assert [metre(steps) for steps in (32, 24, 12, 36, 6)] == ["4/4", "3/4", "3/8", "9/8", "3/16"]


def test_a_form_reads_as_a_line_with_cadences_as_degrees_of_the_key() -> None:
    reel = plan_summary(REEL, REEL_TEMPO)
    assert form_line(reel, "D") == "A A B B · 16 bars of 2/4 · phrases of 4 bars, cadences on V, I, V, I"
    air = {
        "form": "A B",
        "bars": 9,
        "metre": "3/4",
        "phrases": [{"bars": 4, "cadence": 7}, {"bars": 5, "cadence": 8}, {"bars": 1, "cadence": 0}],
    }
    assert form_line(air, "F#m") == "A B · 9 bars of 3/4 · phrases of 1–5 bars, cadences on V, VI, i"
    one = {"form": "A", "bars": 1, "metre": "4/4", "phrases": [{"bars": 1, "cadence": 0}]}
    assert form_line(one, None) == "A · 1 bar of 4/4 · one phrase of 1 bar, cadence on I"


def test_play_clock_stops_when_elapsed_stands_still() -> None:
    clock = PlayClock()

    def at(elapsed: float, seed: int = 1) -> NowView:
        return NowView(PieceRequest("bach", ("organ",), 90.0, 60.0, seed), None, 0, elapsed)

    assert clock.observe(at(10.0), at=100.0)
    assert clock.observe(at(10.0), at=100.5)  # too soon to tell
    assert not clock.observe(at(10.0), at=101.2)  # a second without progress: paused
    assert clock.observe(at(10.4), at=101.6)  # resumed
    assert clock.observe(at(10.4, seed=2), at=103.0)  # another piece


async def test_a_stalled_overlay_is_cut_off_not_buffered_forever() -> None:
    overlay = OverlayClient(web.WebSocketResponse(), "stream")
    for i in range(OUTBOX + 1):
        overlay.send(f"message {i}")
    assert overlay.stalled
    assert overlay.outbox.qsize() == 1 and overlay.outbox.get_nowait() is None  # only the hang-up remains


async def test_the_overlay_hub_tells_a_pause_by_its_own_clock() -> None:
    concert = FakeConcert(clock=lambda: 50.0)  # the piece's elapsed time stands still, as when paused
    concert.start(7, "bach", ("organ",), "ann")
    hub_time = [100.0]
    hub = OverlayHub(concert, clock=lambda: hub_time[0])

    async def ticking() -> bool:
        overlay = OverlayClient(web.WebSocketResponse(), "stream")
        await hub.join(overlay)
        message = json.loads(overlay.outbox.get_nowait())
        assert message["type"] == "now" and message["now"]["seed"] == "7"
        return bool(message["ticking"])

    assert await ticking()
    hub_time[0] += PAUSE_AFTER / 2
    assert await ticking()  # not still for long enough yet
    hub_time[0] += PAUSE_AFTER
    assert not await ticking()


# JSON API


async def test_now_is_null_when_silent_then_describes_the_piece() -> None:
    concert = FakeConcert()
    async with client(concert) as (url, http):
        async with http.get(f"{url}/api/now") as r:
            assert r.status == 200 and await r.json() is None
        concert.start(123456789, "irish", ("flute", "harp"), "ann", tempo=112, seconds=80, elapsed=5.0)
        concert.vote("bob")
        async with http.get(f"{url}/api/now") as r:
            now = await r.json()
    assert now["seed"] == 123456789 and now["style"] == "irish" and now["instruments"] == ["flute", "harp"]
    assert now["requester"] == "ann" and now["votes"] == 1 and now["url"] == "/p/123456789"
    assert 5.0 <= now["elapsed"] < 7.0 and now["seconds"] == 80
    assert now["form"] is None and now["plan"] is None  # a piece whose plan is not known


async def test_now_carries_the_form_and_plan() -> None:
    concert = FakeConcert()
    reel = plan_summary(REEL, REEL_TEMPO)
    concert.start(77, "irish", ("flute",), "ann", tempo=REEL_TEMPO, seconds=20, key="D", plan=reel)
    async with client(concert) as (url, http), http.get(f"{url}/api/now") as r:
        now = await r.json()
    assert now["form"] == "A A B B" and now["plan"] == reel


async def test_queue_lists_requests_next_first_with_their_estimated_start() -> None:
    concert = FakeConcert()
    concert.start(1, "bach", ("organ",), seconds=100, elapsed=40)
    concert.request("ann", "irish", ("flute",), seconds=60)
    concert.request("bob", "bach", ("violin", "cello"), seconds=90, replay_seed=77)
    async with client(concert) as (url, http), http.get(f"{url}/api/queue") as r:
        queue = await r.json()
    assert [(q["position"], q["requester"], q["replay_seed"]) for q in queue] == [
        (1, "ann", None),
        (2, "bob", 77),
    ]
    assert 58 < queue[0]["eta_seconds"] <= 60 and 118 < queue[1]["eta_seconds"] <= 120


async def test_leaderboard_by_period() -> None:
    concert = FakeConcert()
    concert.add_past_piece(11, "bach", ("organ",), "ann", 5, "week")
    concert.add_past_piece(22, "irish", ("flute",), None, 3, "stream")
    async with client(concert) as (url, http):
        async with http.get(f"{url}/api/leaderboard") as r:
            stream = await r.json()
        async with http.get(f"{url}/api/leaderboard?period=week&n=1") as r:
            week = await r.json()
        async with http.get(f"{url}/api/leaderboard?period=year") as r:
            assert r.status == 400 and "period" in (await r.json())["error"]
        async with http.get(f"{url}/api/leaderboard?n=0") as r:
            assert r.status == 400
    assert [(row["seed"], row["votes"], row["rank"]) for row in stream] == [(22, 3, 1)]
    assert [(row["seed"], row["url"]) for row in week] == [(11, "/p/11")]


async def test_piece_api_and_its_404() -> None:
    concert = FakeConcert()
    concert.add_past_piece(2**63 - 1, "bach", ("organ", "choir"), "ann", 4, "all")
    async with client(concert) as (url, http):
        async with http.get(f"{url}/api/pieces/{2**63 - 1}") as r:
            piece = await r.json()
        for missing in ("5", "abc", "1" * 20):
            async with http.get(f"{url}/api/pieces/{missing}") as r:
                assert r.status == 404 and r.content_type == "application/json"
                assert (await r.json())["error"] == "no such piece"
    assert piece["seed"] == 2**63 - 1 and piece["instruments"] == ["organ", "choir"] and piece["votes"] == 4
    assert piece["midi_url"] == f"/p/{2**63 - 1}.mid" and piece["complete"] is True


# Every field the API served before the views held their piece's recipe: the overlay's script and API users read
# these names, flat, so the recipe inside a view must not show in the JSON.
NOW_FIELDS = {"seed", "style", "instruments", "tempo", "seconds", "requester", "votes", "elapsed", "paused"}
NOW_FIELDS |= {"form", "plan", "title", "steer_votes", "steers", "url"}
PIECE_FIELDS = {"seed", "style", "instruments", "tempo", "seconds", "temperature", "top_p", "model_version"}
PIECE_FIELDS |= {"requester", "created_at", "votes", "complete", "key", "form", "plan", "title", "steers"}
PIECE_FIELDS |= {"url", "midi_url", "wav_url"}


async def test_now_and_piece_json_spread_the_recipe_among_their_own_fields() -> None:
    concert = FakeConcert()
    concert.start(4242, "irish", ("flute", "harp"), "ann", tempo=112, seconds=80, key="D")
    async with client(concert) as (url, http):
        async with http.get(f"{url}/api/now") as r:
            now = await r.json()
        concert.finish()
        async with http.get(f"{url}/api/pieces/4242") as r:
            piece = await r.json()
    assert set(now) == NOW_FIELDS and set(piece) == PIECE_FIELDS
    recipe = {"seed": 4242, "style": "irish", "instruments": ["flute", "harp"], "tempo": 112, "seconds": 80}
    assert {name: now[name] for name in recipe} == recipe == {name: piece[name] for name in recipe}
    assert (piece["temperature"], piece["top_p"], piece["key"]) == (1.0, 0.95, "D")


BOARD_FIELDS = {"rank", "seed", "votes", "style", "instruments", "requester", "url"}


def test_a_board_row_holds_its_piece_s_recipe_and_the_json_keeps_its_flat_fields() -> None:
    recipe = PieceRequest(seed=77, style="irish", instruments=("flute", "harp"), tempo=112.0, seconds=30.0)
    kept, gone = BoardView(1, 77, 3, recipe, "ann"), BoardView(2, 78, 1, None, None)
    rows = board_json([gone, kept])
    assert [set(row) for row in rows] == [BOARD_FIELDS, BOARD_FIELDS]
    assert (rows[0]["style"], rows[0]["instruments"], rows[0]["votes"]) == ("irish", ["flute", "harp"], 3)
    assert (rows[1]["style"], rows[1]["instruments"], rows[1]["requester"]) == ("?", [], None)
    page = top_body("all", [kept, gone])
    assert "irish" in page and "flute" in page and "?" in page


# Pages


async def test_piece_page_shows_the_recipe_and_escapes_what_chat_wrote() -> None:
    concert = FakeConcert()
    concert.add_past_piece(31337, "<script>alert(1)</script>", ("violin",), "ann", 2, "all")
    async with client(concert) as (url, http), http.get(f"{url}/p/31337") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src" not in r.headers["Content-Security-Policy"]  # default-src 'self': no inline script
        page = await r.text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="/p/31337.wav"' in page and 'href="/p/31337.mid"' in page and "!replay 31337" in page
    assert "violin" in page and "ann" in page


async def test_piece_page_and_api_show_the_key_and_form() -> None:
    concert = FakeConcert()
    reel = plan_summary(REEL, REEL_TEMPO)
    concert.start(5150, "irish", ("flute", "harp"), "ann", tempo=REEL_TEMPO, seconds=20, key="Bbm", plan=reel)
    concert.start(5151, "bach", ("organ",), "bob")  # made by another model: no plan, no key known
    async with client(concert) as (url, http):
        async with http.get(f"{url}/p/5150") as r:
            page = await r.text()
        async with http.get(f"{url}/p/5151") as r:
            other = await r.text()
        async with http.get(f"{url}/api/pieces/5150") as r:
            piece = await r.json()
    assert "<th>Key</th><td>B♭ minor</td>" in page
    assert "<th>Form</th><td>A A B B · 16 bars of 2/4 · phrases of 4 bars, cadences on V, i, V, i</td>" in page
    assert "<th>Form</th>" not in other and "<th>Key</th>" not in other
    assert piece["key"] == "Bbm" and piece["form"] == "A A B B" and piece["plan"] == reel


async def test_piece_downloads_are_real_midi_and_wav_and_wav_seeks() -> None:
    concert = FakeConcert()
    concert.start(4242, "folk", ("flute", "drums"), "ann", tempo=120)
    concert.play_notes([LiveNote(72, 73, 0.0, 0.5), LiveNote(74, 73, 0.5, 0.5), LiveNote(36, -1, 0.0, 0.25)])
    async with client(concert) as (url, http):
        async with http.get(f"{url}/p/4242.mid") as r:  # still playing: the notes so far, said to be partial
            assert r.status == 200 and r.headers["X-Concertbot-Partial"] == "1"
        async with http.get(f"{url}/p/4242.wav") as r:
            assert r.status == 404  # not complete yet
        concert.finish()
        async with http.get(f"{url}/p/4242.mid") as r:
            assert r.status == 200 and r.content_type == "audio/midi"
            assert "attachment" in r.headers["Content-Disposition"]
            midi = mido.MidiFile(file=io.BytesIO(await r.read()))
        async with http.get(f"{url}/p/4242.wav") as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            whole = await r.read()
        async with http.get(f"{url}/p/4242.wav", headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206 and r.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
            assert await r.read() == whole[100:200]
    pitches = sorted(m.note for m in midi if m.type == "note_on")
    assert pitches == [36, 72, 74]
    with wave.open(io.BytesIO(whole)) as wav:
        assert wav.getnframes() / wav.getframerate() > 1.0


@pytest.mark.parametrize(
    "path",
    ["abc", "12345678901234567890", "%D9%A1%D9%A2", "-5", "1e3", "12.mp3", "12.mid.wav", str(2**63), "404404"],
)
async def test_bad_and_unknown_seeds_get_a_404_page(path: str) -> None:
    concert = FakeConcert()
    async with client(concert) as (url, http):
        for suffix in ("", ".mid", ".wav"):
            async with http.get(f"{url}/p/{path}{suffix}") as r:
                assert r.status == 404 and r.content_type == "text/html"
                assert "Not found" in await r.text()
    assert all(seed == 404404 for seed in concert.lookups)  # malformed text never reached the view


async def test_leaderboard_page_has_period_tabs() -> None:
    concert = FakeConcert()
    concert.add_past_piece(11, "palestrina", ("choir",), "cantus", 5, "week")
    async with client(concert) as (url, http):
        async with http.get(f"{url}/top?period=week") as r:
            page = await r.text()
        async with http.get(f"{url}/top") as r:
            empty = await r.text()
        async with http.get(f"{url}/top?period=<b>") as r:
            assert r.status == 400 and "&lt;b&gt;" in await r.text()
    assert 'href="/p/11"' in page and "cantus" in page and 'period=week" class=current' in page
    assert "No votes yet" in empty


async def test_unknown_addresses_are_404_in_the_right_format() -> None:
    async with client(FakeConcert()) as (url, http):
        async with http.get(f"{url}/nothing/here") as r:
            assert r.status == 404 and r.content_type == "text/html"
        async with http.get(f"{url}/api/nothing") as r:
            assert r.status == 404 and await r.json() == {"error": "not found"}
        async with http.get(f"{url}/api/skip") as r:
            assert r.status == 405 and "POST" in r.headers["Allow"]
        async with http.get(f"{url}/healthz") as r:
            assert r.status == 200 and await r.text() == "ok"
        # A missing static file gets the same page, not an empty octet-stream; the real ones are served.
        for path in ("/static/nope.js", "/static/..%2Fserver.py", "/static/sub/overlay.js"):
            async with http.get(f"{url}{path}") as r:
                assert r.status == 404 and r.content_type == "text/html", path
                assert "Not found" in await r.text()
        async with http.get(f"{url}/static/overlay.js") as r:
            assert r.status == 200 and r.content_type == "application/javascript"
            assert "overlay" in await r.text()
        async with http.head(f"{url}/static/pages.css") as r:
            assert r.status == 200 and r.content_type == "text/css"


# Steering


@pytest.mark.parametrize("action", ["skip", "pause", "resume", "clear"])
async def test_admin_actions_need_the_token(action: str) -> None:
    concert = FakeConcert()
    async with client(concert) as (url, http):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-Token": TOKEN}):
            async with http.post(f"{url}/api/{action}", headers=headers) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        async with http.post(f"{url}/api/{action}", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["ok"] is True
    async with client(concert, admin_token=None) as (url, http):
        async with http.post(f"{url}/api/{action}", headers={"Authorization": "Bearer "}) as r:
            assert r.status == 401
        async with http.post(f"{url}/api/{action}", headers={"Authorization": "Bearer None"}) as r:
            assert r.status == 401


async def test_admin_actions_steer_the_concert() -> None:
    concert = FakeConcert()
    concert.start(1, "bach", ("organ",), elapsed=3.0)
    concert.request("ann", "irish")
    concert.request("bob", "folk")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client(concert) as (url, http):
        async with http.post(f"{url}/api/pause", headers=auth):
            assert concert.playing is not None and concert.playing.paused_at is not None
        async with http.post(f"{url}/api/resume", headers=auth):
            assert concert.playing is not None and concert.playing.paused_at is None
        async with http.post(f"{url}/api/clear", headers=auth) as r:
            assert (await r.json())["removed"] == 2 and concert.requests == []
        async with http.post(f"{url}/api/skip", headers=auth):
            assert concert.playing is None


# Local chat


async def test_local_chat_page_and_api_only_when_enabled() -> None:
    concert = FakeConcert()
    async with client(concert) as (url, http):
        for method, path in (("GET", "/chat"), ("POST", "/api/chat")):
            async with http.request(method, f"{url}{path}", json={"user": "ann", "text": "hi"}) as r:
                assert r.status in (404, 405)
    async with client(concert, local_chat=True) as (url, http):
        async with http.get(f"{url}/chat") as r:
            assert r.status == 200 and 'src="/static/chat.js"' in await r.text()
        async with http.post(f"{url}/api/chat", json={"user": "ann_1", "text": "!compose irish flute"}) as r:
            assert r.status == 200 and (await r.json())["replies"] == ["@ann_1 irish is number 1 in the queue"]
    assert [(q.requester, q.style, q.instruments) for q in concert.requests] == [("ann_1", "irish", ("flute",))]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"user": "", "text": "hi"}, "user"),
        ({"user": "a" * 26, "text": "hi"}, "user"),
        ({"user": "ann smith", "text": "hi"}, "user"),
        ({"user": "<b>", "text": "hi"}, "user"),
        ({"user": "ann", "text": "x" * 501}, "500"),
        ({"user": "ann", "text": "   "}, "text"),
        ({"user": "ann", "text": 5}, "text"),
        ({"user": "ann"}, "text"),
        (["ann", "hi"], "object"),
    ],
)
async def test_local_chat_refuses_bad_lines(body: Any, reason: str) -> None:
    concert = FakeConcert()
    async with client(concert, local_chat=True) as (url, http), http.post(f"{url}/api/chat", json=body) as r:
        assert r.status == 400 and reason in (await r.json())["error"]
    assert concert.chat_lines == []


async def test_local_chat_refuses_what_a_cross_site_form_can_send() -> None:
    concert = FakeConcert()
    async with client(concert, local_chat=True) as (url, http):
        line = '{"user": "ann", "text": "!compose bach"}'
        async with http.post(f"{url}/api/chat", data=line, headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 400
        async with http.post(
            f"{url}/api/chat", data="{not json", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400 and "JSON" in (await r.json())["error"]
    assert concert.chat_lines == []


async def raw_request(url: str, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send `head` (request line and headers, as bytes no client library would write) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"user": "ann", "text": "!compose caf\xe9"}', "application/json", "UTF-8"),
        (b'{"user": "ann", "text": "!np"}', "application/json; charset=bogus", "UTF-8"),
        (b'{"user": "ann", "text": "!np"}', "application/json; charset=latin-1", "UTF-8"),
        (b"[" * 50_000 + b"]" * 50_000, "application/json", "not valid JSON"),
        (b'{"user": "ann", "text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", "JSON"),
    ],
    ids=["not-utf-8", "bogus-charset", "latin-1", "nested-50000", "nested-in-text"],
)
async def test_local_chat_answers_a_malformed_body_with_a_short_400(
    body: bytes, content_type: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    concert = FakeConcert()
    async with (
        client(concert, local_chat=True) as (url, http),
        http.post(f"{url}/api/chat", data=body, headers={"Content-Type": content_type}) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert reason in error and len(error) < 80
    assert concert.chat_lines == []
    assert not [record for record in caplog.records if record.exc_info]  # no traceback logged


async def test_an_authorization_header_that_is_not_utf_8_is_a_401_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    concert = FakeConcert()
    concert.start(1, "bach", ("organ",))
    async with client(concert, local_chat=True) as (url, _):
        for path in (b"/api/skip", b"/api/chat"):
            head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cr\xe9t\xff\r\n"
            status, answer = await raw_request(url, head)
            assert status == 401 and "token" in answer["error"], (path, answer)
    assert concert.playing is not None  # nothing was skipped
    assert not [record for record in caplog.records if record.exc_info]


async def test_local_chat_speaks_as_the_broadcaster_only_with_the_admin_token() -> None:
    concert = FakeConcert()
    concert.start(1, "bach", ("organ",))
    async with client(concert, local_chat=True) as (url, http):
        line = {"user": "streamer", "text": "!skip"}
        async with http.post(f"{url}/api/chat", json=line) as r:
            assert r.status == 200 and (await r.json())["replies"] == ["@streamer !skip is for moderators"]
        assert concert.playing is not None
        wrong = {"Authorization": "Bearer wrong"}
        async with http.post(f"{url}/api/chat", json=line, headers=wrong) as r:
            assert r.status == 401
        assert concert.playing is not None
        right = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{url}/api/chat", json={"user": "ann", "text": "!skip"}, headers=right) as r:
            assert r.status == 200 and (await r.json())["replies"] == ["@ann skipped"]
        assert concert.playing is None


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("evil.example", None),
        ("evil.example:8080", None),
        ("127.0.0.1.evil.example", None),
        ("localhost@evil.example", None),
        ("127.0.0.1", "http://evil.example"),
        ("127.0.0.1", "null"),
        ("127.0.0.1", "file://"),
    ],
)
async def test_state_changing_requests_must_name_this_server(host: str, origin: str | None) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name, and says so in Host and Origin."""
    concert = FakeConcert()
    concert.start(1, "bach", ("organ",))
    headers = {"Host": host} | ({"Origin": origin} if origin else {})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client(concert, local_chat=True) as (url, http):
        async with http.post(f"{url}/api/chat", json={"user": "ann", "text": "!np"}, headers=headers) as r:
            assert r.status == 403 and "address" in (await r.json())["error"]
        async with http.post(f"{url}/api/skip", headers=headers | auth) as r:
            assert r.status == 403
        async with http.get(f"{url}/api/now", headers=headers) as r:
            assert r.status == 200  # reading is harmless: nothing secret, nothing changed
    assert concert.chat_lines == [] and concert.playing is not None


@pytest.mark.parametrize(
    ("host", "origin", "hosts"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080", ()),
        ("localhost:8080", "http://localhost:8080", ()),
        ("[::1]:8080", None, ()),
        ("LOCALHOST", None, ()),
        ("stage.lan:8080", "https://stage.lan", ("stage.lan",)),
        ("192.168.1.20:8080", "http://192.168.1.20:8080", ("0.0.0.0",)),
    ],
)
async def test_state_changing_requests_under_the_servers_own_names_pass(
    host: str, origin: str | None, hosts: tuple[str, ...]
) -> None:
    concert = FakeConcert()
    headers = {"Host": host} | ({"Origin": origin} if origin else {})
    async with (
        client(concert, local_chat=True, hosts=hosts) as (url, http),
        http.post(f"{url}/api/chat", json={"user": "ann", "text": "!np"}, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
    assert concert.chat_lines == [("ann", "!np")]


# Metrics


async def test_metrics_in_prometheus_text_per_app() -> None:
    concert = FakeConcert()
    concert.request("ann", "irish")
    concert.request("bob", "irish")
    concert.request("cy", "bach")
    concert.underruns = 2
    concert.generation_rtf = 3.5
    concert.start(1, "bach", ("organ",))
    concert.vote("dee")
    # Two apps in one process: each has its own registry, so neither clashes with the other.
    async with client(concert) as (url, http), client(FakeConcert()) as (other, _):
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
        async with http.get(f"{other}/metrics") as r:
            other_text = await r.text()
    lines = set(text.splitlines())
    assert {
        "concertbot_queue_length 3.0",
        "concertbot_generation_rtf 3.5",
        "concertbot_underruns_total 2.0",
        "concertbot_votes_total 1.0",
        "concertbot_chat_messages_total 0.0",
        'concertbot_requests_total{style="irish"} 2.0',
        'concertbot_requests_total{style="bach"} 1.0',
        "concertbot_overlay_clients 0.0",
    } <= lines
    assert "# TYPE concertbot_requests_total counter" in lines
    assert "concertbot_queue_length 0.0" in other_text
    # The tasks on the loop at the scrape: the soak watches it for leaks (bench/bench_soak.py).
    tasks = [float(line.split()[1]) for line in lines if line.startswith("concertbot_asyncio_tasks ")]
    assert len(tasks) == 1 and tasks[0] >= 1


# Overlay over HTTP


async def test_overlay_page_takes_panels_and_adds_audio_only_with_a_broadcast() -> None:
    async with client(FakeConcert()) as (url, http):
        async with http.get(f"{url}/?panels=queue,now&audio=1") as r:
            page = await r.text()
        async with http.get(f"{url}/stream.mp3") as r:
            assert r.status == 404
    assert 'data-panels="now queue"' in page and "<audio" not in page
    async with client(FakeConcert(), broadcast=AudioBroadcast()) as (url, http):
        async with http.get(f"{url}/overlay") as r:
            assert "<audio" not in await r.text()
        async with http.get(f"{url}/overlay?audio=1") as r:
            assert '<audio id="audio" src="/stream.mp3"' in await r.text()
        async with http.get(f"{url}/stream.wav") as r:
            assert r.status == 503  # mounted, but the broadcast is not open


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 2.0)
    return message


async def test_overlay_socket_sends_the_state_then_each_change() -> None:
    concert = FakeConcert()
    concert.add_past_piece(5, "bach", ("organ",), "ann", 4, "week")
    async with client(concert) as (url, http), http.ws_connect(f"{url}/ws?period=week") as ws:
        hello = [await receive(ws) for _ in range(3)]
        assert hello == [
            {"type": "now", "now": None, "ticking": True},
            {"type": "queue", "queue": []},
            {"type": "top", "period": "week", "top": [{**hello[2]["top"][0], "seed": "5", "votes": 4}]},
        ]
        concert.start(BIG_SEED, "irish", ("flute",), "bob")
        changed = [await receive(ws) for _ in range(3)]
        assert [m["type"] for m in changed] == ["now", "queue", "top"]
        assert changed[0]["now"]["seed"] == str(BIG_SEED) and changed[0]["now"]["requester"] == "bob"
        concert.play_notes([LiveNote(60, 73, 0.0, 0.5)])
        assert await receive(ws) == {
            "type": "notes",
            "seed": str(BIG_SEED),
            "notes": [{"pitch": 60, "program": 73, "start": 0.0, "duration": 0.5}],
        }
        async with http.ws_connect(f"{url}/ws") as late:  # an overlay (re)loaded mid-piece
            joined = [await receive(late) for _ in range(4)]
            assert [m["type"] for m in joined] == ["now", "queue", "top", "notes"]
            assert joined[3]["notes"] == [{"pitch": 60, "program": 73, "start": 0.0, "duration": 0.5}]
    async with client(concert) as (url, http), http.get(f"{url}/ws?period=decade") as r:
        assert r.status == 400


async def test_stopping_the_server_closes_open_overlays_at_once() -> None:
    async with aiohttp.ClientSession() as http:
        async with running(make_app(FakeConcert(), None)) as url:
            ws = await http.ws_connect(f"{url}/ws")
            await receive(ws)
            began = time.monotonic()
        assert time.monotonic() - began < 1.0  # not the shutdown timeout
        while (await asyncio.wait_for(ws.receive(), 1.0)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert ws.closed  # the overlay sees it go, and reconnects


# A real browser

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    async with launch_chromium() as chromium:
        yield chromium


@contextlib.asynccontextmanager
async def overlay(browser: Browser, url: str, width: int = 1920, height: int = 1080) -> AsyncIterator[Page]:
    """The overlay at `url` in a transparent viewport of `width` x `height`, once its WebSocket is open."""
    page = await browser.new_page(url)
    await browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        page.session_id,
    )
    transparent = {"color": {"r": 0, "g": 0, "b": 0, "a": 0}}
    await browser.send("Emulation.setDefaultBackgroundColorOverride", transparent, page.session_id)
    await page.wait_for(f"innerWidth === {width} && document.body.dataset.live === '1'")
    try:
        yield page
    finally:
        await page.close()


async def screenshot(page: Page) -> Image.Image:
    shot = await page.browser.send("Page.captureScreenshot", {"format": "png"}, page.session_id)
    return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGBA")


async def box(page: Page, selector: str) -> tuple[int, int, int, int]:
    """The element's bounding box as (left, top, right, bottom) in CSS pixels."""
    element = f"document.querySelector({selector!r})"
    rect = await page.evaluate(f"(r => [r.left, r.top, r.right, r.bottom])({element}.getBoundingClientRect())")
    left, top, right, bottom = (round(v) for v in rect)
    return left, top, right, bottom


def text_of(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).textContent"


class SteppedClock:
    """Monotonic seconds that stand still until the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@needs_chromium
async def test_overlay_follows_the_concert_by_its_events_and_its_clock(
    browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No refresh on a timer: whatever the page shows after a change was sent because of that change's event.
    monkeypatch.setattr(overlay_module, "RESYNC", 3600.0)
    clock = SteppedClock()
    concert = FakeConcert(clock=clock)
    async with (
        running(make_app(concert, None, clock=clock)) as url,
        overlay(browser, f"{url}/") as page,
    ):
        assert await page.evaluate("document.getElementById('now').dataset.state") == "idle"
        concert.start(BIG_SEED, "irish", ("flute", "harp"), "lofi_lena", tempo=112, seconds=90)
        await page.wait_for(f"{text_of('now-seed')} === '{BIG_SEED}'", timeout=30.0)
        assert await page.evaluate(text_of("now-style")) == "Irish"
        assert await page.evaluate(text_of("now-requester")) == "requested by lofi_lena"
        assert await page.evaluate(text_of("now-votes")) == "0"
        concert.vote("ann"), concert.vote("bob")
        await page.wait_for(f"{text_of('now-votes')} === '2'", timeout=30.0)
        assert not await page.evaluate(f"{text_of('queue-list')}.includes('newcomer')")
        concert.request("newcomer", "palestrina", ("choir",))
        await page.wait_for(f"{text_of('queue-list')}.includes('newcomer')", timeout=30.0)
        # Between messages the page counts the piece's time on by itself...
        assert await page.evaluate(text_of("now-elapsed")) == "0:00"
        await page.wait_for(f"{text_of('now-elapsed')} === '0:01'", timeout=30.0)
        # ...and the concert's clock has not moved, so the hub (on that clock, not the wall's) still calls the
        # piece sounding when the next event comes, though its elapsed time stood still for a real second.
        concert.vote("cy")
        await page.wait_for(f"{text_of('now-votes')} === '3'", timeout=30.0)
        assert await page.evaluate(text_of("now-status")) == "Now playing"
        # 75 s on the concert's clock are 1:15 on the page at the next event, however little time really passed.
        clock.now += 75.0
        concert.vote("dee")
        await page.wait_for(f"{text_of('now-votes')} === '4'", timeout=30.0)
        shown = await page.evaluate(text_of("now-elapsed"))
        assert shown.startswith("1:1"), shown
        concert.finish()
        await page.wait_for("document.getElementById('now').dataset.state === 'idle'", timeout=30.0)


CURRENT_SECTION = "[...document.querySelectorAll('#now-sections b')].findIndex(b => b.matches('.current'))"


@needs_chromium
async def test_overlay_shows_the_form_and_counts_down_to_the_next_cadence(browser: Browser) -> None:
    concert = FakeConcert()
    reel = plan_summary(REEL, 60.0)  # bars of 2 s; cadences at 6, 14, 22 and 30 s

    def play(seed: int, elapsed: float, plan: dict | None = reel) -> None:
        concert.start(seed, "irish", ("flute",), tempo=60.0, seconds=40, elapsed=elapsed, plan=plan)

    def cadence_is(text: str) -> str:
        return f"{text_of('now-cadence')} === {text!r}"

    visibility = "getComputedStyle(document.getElementById('now-form')).visibility"
    async with running(make_app(concert, None)) as url, overlay(browser, f"{url}/") as page:
        play(1, 8.2)  # in the second A, 2.9 bars before its cadence; at 10 s the page counts down by itself
        await page.wait_for(cadence_is("cadence in 3 bars"), timeout=1.5)
        assert await page.evaluate(text_of("now-sections")) == "AABB"
        assert await page.evaluate(CURRENT_SECTION) == 1 and await page.evaluate(visibility) == "visible"
        await page.wait_for(cadence_is("cadence in 2 bars"), timeout=3.0)
        play(2, 12.5)
        await page.wait_for(cadence_is("cadence in 1 bar"), timeout=1.5)
        play(3, 14.5)  # the cadence's bar
        await page.wait_for(cadence_is("cadence now"), timeout=1.5)
        assert await page.evaluate(CURRENT_SECTION) == 1
        play(4, 27.0)
        await page.wait_for(cadence_is("final cadence in 2 bars"), timeout=1.5)
        assert await page.evaluate(CURRENT_SECTION) == 3
        play(5, 31.0)
        await page.wait_for(cadence_is("final cadence"), timeout=1.5)
        play(6, 0.0, plan=None)  # no plan known: the line goes
        await page.wait_for(f"{text_of('now-seed')} === '6'", timeout=1.5)
        assert await page.evaluate(visibility) == "hidden"


def chorale(elapsed: float, tempo: float) -> list[LiveNote]:
    """Four string voices around `elapsed`: a D major progression in half notes, the top voice in eighths."""
    beat = 60 / tempo
    chords = [(50, 57, 66, 74), (45, 57, 64, 73), (47, 59, 66, 74), (43, 59, 67, 74), (45, 57, 64, 76)]
    melody = [74, 76, 78, 76, 74, 73, 71, 73, 74, 78, 79, 78, 76, 74, 73, 76]
    notes = []
    first = math.floor((elapsed - 9) / (2 * beat))
    for bar in range(first, first + 12):
        start = bar * 2 * beat
        bass, tenor, alto, _ = chords[bar % len(chords)]
        notes += [
            LiveNote(p, program, start, 2 * beat * 0.95) for p, program in ((bass, 43), (tenor, 42), (alto, 41))
        ]
        for i in range(4):
            pitch = melody[(bar * 4 + i) % len(melody)]
            notes.append(LiveNote(pitch, 40, start + i * beat / 2, beat / 2 * 0.9))
    return [n for n in notes if n.start >= 0]


def stage_a_concert(concert: FakeConcert) -> None:
    """What a concert looks like an hour in: a piece playing with votes, a queue, a leaderboard."""
    past = [
        (731904211, "classical", ("violin", "violin", "viola", "cello"), "mozartmaniac", 23),
        (118273645, "irish", ("violin",), "reel_deal", 17),
        (902114587, "bach", ("organ",), None, 12),
        (554019283, "scottish", ("flute", "harp"), "highlander", 9),
        (600321777, "palestrina", ("choir",), "cantus_firmus", 6),
        (311555019, "medieval", ("recorder", "viola", "harp"), "troubadour", 4),
    ]
    for seed, style, instruments, requester, votes in past:
        concert.add_past_piece(seed, style, instruments, requester, votes, "stream")
    bar_form = {
        "forms": [{"bar": 32, "sections": [[8, True], [12, False]], "count": 1}],
        "cadences": {"0": 2, "7": 2, "9": 1},
    }
    plan = plan_summary(draw_plan(bar_form, 150, 84, 482913075), 84)  # A A B A A B, 52 bars of 4/4
    concert.start(
        482913075, "bach", ("violin", "viola", "cello", "contrabass"), "quartet_fan", 84, 150, 47.3, plan=plan
    )
    for i in range(14):
        concert.vote(f"viewer{i}")
    concert.request("lofi_lena", "irish", ("flute", "harp"), 75)
    concert.request("nightowl", "palestrina", ("choir",), 90)
    concert.request("bassline_bob", "folk", ("clarinet", "contrabass"), 60)
    concert.request("mozartmaniac", "classical", ("violin", "viola", "cello"), 120, replay_seed=731904211)


STAGED = (
    f"{text_of('now-seed')} === '482913075'"
    f" && {text_of('now-cadence')}.startsWith('cadence in')"
    " && document.querySelectorAll('#queue-list li').length === 4"
    " && document.querySelectorAll('#top-list li').length === 6"
)
PANELS = ("#now", "#queue", "#top", "#roll")
SMALLEST_TEXT = """Math.min(...[...document.querySelectorAll('#now *, #queue *, #top *')]
    .filter(e => e.offsetParent && [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
    .map(e => parseFloat(getComputedStyle(e).fontSize)))"""  # in px, of the text shown


def opaque_share(image: Image.Image, area: tuple[int, int, int, int]) -> float:
    alpha = np.asarray(image.crop(area))[..., 3]
    return float((alpha > 200).mean())


def colourful_pixels(image: Image.Image, area: tuple[int, int, int, int]) -> int:
    rgb = np.asarray(image.crop(area))[..., :3].astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 80).sum())


@needs_chromium
async def test_overlay_screenshots_at_1080p_and_720p(browser: Browser, tmp_path: Path) -> None:
    concert = FakeConcert()
    stage_a_concert(concert)
    layouts = {}
    async with running(make_app(concert, None)) as url:
        # Notes that sounded before the overlay opened: it gets the piece's recent ones when it joins.
        concert.play_notes(chorale(47.3, 84))
        await asyncio.sleep(0.1)
        for width, height in ((1920, 1080), (1280, 720)):
            async with overlay(browser, f"{url}/overlay", width, height) as page:
                await page.wait_for(STAGED)
                await asyncio.sleep(0.5)  # a few frames of the piano roll
                image = await screenshot(page)
                for folder in (tmp_path, DOCS) if UPDATE_DOCS else (tmp_path,):
                    image.save(folder / f"overlay-{width}x{height}.png")
                boxes = {panel: await box(page, panel) for panel in PANELS}
                smallest_text = await page.evaluate(SMALLEST_TEXT)
            assert image.size == (width, height)
            for panel, (left, top, right, bottom) in boxes.items():
                assert 0 <= left < right <= width and 0 <= top < bottom <= height, panel
                assert opaque_share(image, boxes[panel]) > 0.8, f"{panel} is see-through"
            for a in PANELS:  # no panel covers another
                for b in PANELS[PANELS.index(a) + 1 :]:
                    (l1, t1, r1, b1), (l2, t2, r2, b2) = boxes[a], boxes[b]
                    assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"{a} overlaps {b}"
            now_left, now_top, now_right, now_bottom = boxes["#now"]
            assert now_right - now_left > width / 3 and now_bottom - now_top > height / 10
            left, top, right, bottom = boxes["#roll"]
            assert colourful_pixels(image, boxes["#roll"]) > 0.01 * (right - left) * (bottom - top), "no notes"
            assert np.asarray(image)[height // 6, width // 4, 3] == 0, "the page background is not transparent"
            assert smallest_text >= 11, f"text of {smallest_text} px is too small to read on stream"
            layouts[width] = boxes
    for panel in PANELS:  # the same layout at both sizes, scaled (give or take rounding in six rows of text)
        scaled = [v * 1280 / 1920 for v in layouts[1920][panel]]
        assert all(abs(a - b) <= 4 for a, b in zip(scaled, layouts[1280][panel], strict=True)), panel


@needs_chromium
async def test_overlay_shows_only_the_panels_asked_for_in_their_usual_place(browser: Browser) -> None:
    concert = FakeConcert()
    stage_a_concert(concert)
    async with running(make_app(concert, None)) as url:
        async with overlay(browser, f"{url}/overlay") as page:
            full = await box(page, "#now")
        async with overlay(browser, f"{url}/overlay?panels=now,roll") as page:
            shown = await page.evaluate(
                "['now', 'queue', 'top', 'roll'].map(p => getComputedStyle(document.getElementById(p)).display)"
            )
            assert await box(page, "#now") == full
    assert [display != "none" for display in shown] == [True, False, False, True]


@needs_chromium
async def test_chat_box_shows_the_bots_replies_and_refusals(browser: Browser) -> None:
    concert = FakeConcert()
    async with running(make_app(concert, None, local_chat=True)) as url:
        page = await browser.new_page(f"{url}/chat")
        try:
            send = "document.getElementById('chat').requestSubmit()"
            await page.evaluate(f"user.value = 'ann'; text.value = '!compose irish flute'; {send}")
            await page.wait_for("log.textContent.includes('irish is number 1 in the queue')")
            await page.evaluate(f"text.value = 'x'.repeat(600); {send}")  # past the limit the input sets
            await page.wait_for("log.textContent.includes('at most 500 characters')")
        finally:
            await page.close()
    assert concert.chat_lines == [("ann", "!compose irish flute")]


@contextlib.contextmanager
def tone(broadcast: AudioBroadcast) -> Iterator[None]:
    broadcast.open(RATE)
    try:
        with writing(broadcast):
            yield
    finally:
        broadcast.close()


@needs_chromium
@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
async def test_overlay_with_audio_plays_the_live_stream(browser: Browser) -> None:
    concert = FakeConcert()
    broadcast = AudioBroadcast(linger=0)
    audio = "document.getElementById('audio')"
    async with running(make_app(concert, None, broadcast)) as url:
        with tone(broadcast):
            async with overlay(browser, f"{url}/?audio=1&panels=now") as page:
                await wait_until_playing(page, audio, 2, 0.5, 12, "the overlay's <audio> with /stream.mp3")
                assert broadcast.listeners == 1
