"""A new streamer's first hour: errors in plain words, the piece page's key and title, the link to the local
chat, and the MIDI of the piece playing before it is all composed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import mido
import pytest
from browser import Browser, Page, find_chromium, launch_chromium
from conftest import write_midi
from fake_concert import FakeConcert
from serving import free_port, running
from typer.testing import CliRunner

from bot.app import Concert, run_concert
from bot.cli import app
from bot.web.server import make_app
from bot.web.view import LiveNote
from config import UnknownNameError, load_settings
from generator.corpus import midi_problem
from generator.decode import decode
from generator.model import load_model

runner = CliRunner()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


TUNE = [(i * 4, 60 + (i * 5) % 12, 4) for i in range(40)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Unknown styles


def test_an_unknown_style_names_the_styles_the_model_has(tiny_model, tmp_path):
    model = tiny_model / "best"
    styles = load_model(model).vocab.styles
    assert "scottish" not in styles
    out = tmp_path / "x.mid"
    result = runner.invoke(app, ["compose", "scottish", "--model", str(model), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    assert result.output.splitlines() == [
        f"error: unknown style 'scottish': this model has {', '.join(styles)}."
    ]


def test_a_misspelt_style_is_still_offered_its_closest_name(tiny_model, tmp_path):
    args = ["compose", "bahc", "--model", str(tiny_model / "best"), "--out", str(tmp_path / "x.mid")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "this model has anthems, bach, irish. Did you mean bach?" in _one_line(result.output)


def test_a_model_of_many_styles_is_not_listed_in_full():
    from generator.styles import resolve_style

    many = [f"my_folder_style_{i}" for i in range(30)]  # a user's own folders, say
    with pytest.raises(UnknownNameError) as caught:
        resolve_style("my_folder_style_x", many)
    assert "this model has" not in str(caught.value) and "Did you mean my_folder_style_" in str(caught.value)


# Broken MIDI files in a data build


def _broken_files(folder: Path) -> dict[str, str]:
    """A user's folder: two good tunes, then one file of each kind of breakage, with the reason each gets."""
    write_midi(folder / "anthems" / "good.mid", TUNE, program=56)
    write_midi(folder / "anthems" / "also_good.mid", [(s, p + 2, n) for s, p, n in TUNE], program=57)
    (folder / "anthems" / "notes.mid").write_text("Remember to buy strings.\n")
    (folder / "anthems" / "nothing.mid").write_bytes(b"")
    whole = (folder / "anthems" / "good.mid").read_bytes()
    (folder / "anthems" / "cut.mid").write_bytes(whole[: len(whole) // 2])  # a download that stopped halfway
    return {
        "notes.mid": "not a MIDI file",
        "nothing.mid": "empty file",
        "cut.mid": "truncated",
    }


def test_each_broken_midi_file_is_named_with_its_reason_and_the_build_goes_on(tmp_path):
    folder = tmp_path / "mine"
    expected = _broken_files(folder)
    out = tmp_path / "dataset"
    args = ["data", "build", "--no-corpus", "--midi", str(folder), "--workers", "1", "--out", str(out)]
    env = {"CONCERTBOT_PATHS__DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "MiniMidi" not in result.output and "Invaild" not in result.output
    lines = result.output.splitlines()
    for name, reason in expected.items():
        said = [line for line in lines if line.startswith(f"skipped mine/anthems/{name}: ")]
        assert len(said) == 1 and said[0].split(": ", 1)[1].startswith(reason), (name, said)
    summary = next(line for line in lines if line.startswith("skipped 3 pieces"))
    for reason in expected.values():
        assert f"1 {reason}" in summary
    # The build went on: both good tunes are in the data set, and the table says what each column counts.
    header = next(line for line in lines if "style" in line and "pieces" in line)
    for column in ("held out (pieces)", "notes", "tokens", "hours of music"):
        assert column in header
    assert " valid " not in header
    cells = next([c.strip() for c in line.split("│")] for line in lines if "│ anthems" in line)
    assert cells[2:4] == ["2", "1"]  # two pieces, one of them held out (every style of two holds one out)


def test_midi_problems_are_read_from_the_bytes(tmp_path):
    write_midi(tmp_path / "good.mid", TUNE)
    whole = (tmp_path / "good.mid").read_bytes()
    assert midi_problem(whole) is None
    assert midi_problem(b"") == "empty file"
    assert midi_problem(b"RIFF\x00\x00") == "not a MIDI file (it does not start with MThd)"
    assert midi_problem(whole[:10]) == "truncated (the file ends 4 bytes into its header)"
    assert midi_problem(whole[:-5]) == "truncated (track 1 of 1 is 5 bytes short)"
    assert midi_problem(whole[:14]) == "truncated (the header names 1 track, the file holds 0)"
    assert midi_problem(whole[:14] + b"e th\x00\x00").startswith("damaged (no chunk starts at byte 14")


@pytest.mark.parametrize("name", ["nothing.mid", "cut.mid", "notes.mid"])
def test_a_broken_file_gets_its_reason_from_the_extractor_too(tmp_path, name):
    from generator.corpus import extract_midi

    reason = _broken_files(tmp_path)[name]
    result = extract_midi(str(tmp_path / "anthems" / name), name, "anthems")
    assert result.pieces == [] and result.skipped[0][1].startswith(reason)


# The web side: the piece page, the link to the local chat, the notes composed so far


@contextlib.asynccontextmanager
async def serving(concert: FakeConcert, local_chat: bool) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with running(make_app(concert, None, local_chat=local_chat)) as url, aiohttp.ClientSession() as http:
        yield url, http


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        return await r.text()


@pytest.mark.anyio
async def test_the_piece_page_shows_the_key_and_the_title_when_there_is_one() -> None:
    concert = FakeConcert()
    concert.start(6001, "irish", ("flute",), "ann", key="D")
    concert.pieces[6001] = dataclasses.replace(concert.pieces[6001], title="The <Morning> Reel")
    concert.start(6002, "bach", ("organ",), "bob", key="F#m")
    async with serving(concert, local_chat=False) as (url, http):
        titled = await _text(http, f"{url}/p/6001")
        plain = await _text(http, f"{url}/p/6002")
    assert "<th>Key</th><td>D major</td>" in titled and "<th>Key</th><td>F♯ minor</td>" in plain
    assert "<h1>The &lt;Morning&gt; Reel</h1>" in titled and "<title>The &lt;Morning&gt; Reel · 6001" in titled
    assert '<p class="kicker">irish · Piece' in titled  # the style still shows, above the title
    assert "<h1>bach</h1>" in plain


@pytest.mark.anyio
async def test_pages_link_to_the_local_chat_in_local_mode_only() -> None:
    concert = FakeConcert()
    concert.start(6003, "irish", ("flute",), "ann")
    pages = ("/p/6003", "/top", "/p/404404", "/no/such/page")
    async with serving(concert, local_chat=True) as (url, http):
        local = {path: await _text(http, url + path) for path in pages}
        overlay = await _text(http, f"{url}/overlay")
        assert "Lines typed here" in await _text(http, f"{url}/chat")  # the link leads somewhere
    async with serving(concert, local_chat=False) as (url, http):
        twitch = {path: await _text(http, url + path) for path in pages}
        twitch_overlay = await _text(http, f"{url}/overlay")
    for path in pages:
        assert '<a href="/chat">Local chat</a>' in local[path], path
        assert 'href="/chat"' not in twitch[path], path
    assert 'in <a href="/chat">the local chat</a>' in local["/p/6003"]  # where to type !replay
    # On the overlay the link is there but hidden; overlay.js shows it only outside OBS.
    assert 'id="chat-link"' in overlay and "hidden" in overlay.split('id="chat-link"')[1].split(">")[0]
    assert "chat-link" not in twitch_overlay


@pytest.mark.anyio
@pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
async def test_the_overlay_shows_the_chat_link_in_a_browser_but_not_in_obs() -> None:
    concert = FakeConcert()
    shown = "getComputedStyle(document.getElementById('chat-link')).display !== 'none'"
    async with running(make_app(concert, None, local_chat=True)) as url, launch_chromium() as browser:
        page = await browser.new_page(f"{url}/overlay")
        await page.wait_for("document.body.dataset.live === '1'")
        assert await page.evaluate(shown) is True
        await page.close()
        # OBS's browser source defines window.obsstudio before the page's scripts run.
        obs = await _tab_with_script(browser, "window.obsstudio = {pluginVersion: '2.1.0'}", f"{url}/overlay")
        await obs.wait_for("window.obsstudio !== undefined && document.body.dataset.live === '1'")
        assert await obs.evaluate(shown) is False
        await obs.close()


async def _tab_with_script(browser: Browser, script: str, url: str) -> Page:
    """A new tab that runs `script` in every document before the page's own scripts, opened at `url`."""
    target = await browser.send("Target.createTarget", {"url": "about:blank"})
    attached = await browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
    page = Page(browser, target["targetId"], attached["sessionId"])
    await browser.send("Page.enable", {}, page.session_id)
    await browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": script}, page.session_id)
    await browser.send("Page.navigate", {"url": url}, page.session_id)
    await page.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")
    return page


@pytest.mark.anyio
async def test_the_midi_of_the_piece_playing_is_its_notes_so_far_marked_partial() -> None:
    concert = FakeConcert()
    concert.start(6004, "folk", ("flute",), "ann", tempo=120)
    concert.play_notes([LiveNote(72, 73, 0.0, 0.5), LiveNote(74, 73, 0.5, 0.5)])
    async with serving(concert, local_chat=False) as (url, http):
        page = await _text(http, f"{url}/p/6004")
        async with http.get(f"{url}/p/6004.mid") as r:
            assert r.status == 200 and r.headers["X-Concertbot-Partial"] == "1"
            assert r.headers["Cache-Control"] == "no-store"  # the next download holds more
            assert 'filename="concertbot-6004-partial.mid"' in r.headers["Content-Disposition"]
            partial = mido.MidiFile(file=io.BytesIO(await r.read()))
        concert.finish()
        async with http.get(f"{url}/p/6004.mid") as r:
            assert r.status == 200 and "X-Concertbot-Partial" not in r.headers
            assert 'filename="concertbot-6004.mid"' in r.headers["Content-Disposition"]
        concert.start(6005, "folk", ("flute",), "ann")
        await concert.skip()  # cut before it was composed: not being composed, so nothing to offer
        async with http.get(f"{url}/p/6005.mid") as r:
            assert r.status == 404
    assert 'href="/p/6004.mid"' in page and "notes so far" in page
    assert sorted(m.note for m in partial if m.type == "note_on") == [72, 74]


@pytest.mark.anyio
async def test_the_real_concert_offers_the_notes_composed_so_far_as_partial_midi(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings(
        paths={"data_dir": str(tmp_path)},
        sampling={"seconds": 90.0},  # composed a few seconds ahead of the sound: far from done when asked
        concert={"autoplay": False, "http_port": port},
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, None, sinks=[], started=ready.set_result, namespace=f"fh-{uuid.uuid4().hex[:6]}")
    )
    base = f"http://127.0.0.1:{port}"
    try:
        concert = await asyncio.wait_for(ready, 60)
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/api/chat", json={"user": "ann", "text": "!compose bach violin cello"})
            # A style the model does not have: the reply in chat names those it has.
            async with http.post(f"{base}/api/chat", json={"user": "bob", "text": "!compose zydeco"}) as r:
                reply = (await r.json())["replies"][0]
            styles = ", ".join(concert.conductor.loaded.vocab.styles)
            assert f"unknown style 'zydeco': this model has {styles}." in reply and len(reply) <= 500
            while concert.conductor.current is None or len(concert.conductor.current.live.tokens) < 40:
                await asyncio.sleep(0.05)
            slot = concert.conductor.current
            seed = slot.record.seed
            page = await _text(http, f"{base}/p/{seed}")
            before = list(slot.live.tokens)
            async with http.get(f"{base}/p/{seed}.mid") as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Concertbot-Partial"] == "1"
                midi = mido.MidiFile(file=io.BytesIO(await r.read()))
            after = list(slot.live.tokens)
            assert not slot.live.complete  # the test asked while the piece was being composed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    vocab = concert.session.worker.composer.vocab
    composed, by_then = decode(vocab, before), decode(vocab, after)
    pitches = Counter(m.note for m in midi if m.type == "note_on" and m.velocity > 0)
    assert composed and len(composed) <= sum(pitches.values()) <= len(by_then)
    assert not Counter(n.pitch for n in composed) - pitches  # every note composed before the request is there
    markers = [m.text for m in midi if m.type == "marker"]
    assert markers and markers[0].startswith("partial:")
    assert "notes so far" in page and "<th>Key</th>" in page and "<th>Form</th>" in page


def test_local_mode_says_where_the_chat_box_is(tmp_path):
    port = free_port()
    env = {
        "CONCERTBOT_PATHS__DATA_DIR": str(tmp_path / "data"),
        "CONCERTBOT_HTTP_PORT": str(port),
        "COLUMNS": "200",
    }
    result = runner.invoke(app, ["run", "--local", "--device", "off", "--seconds", "1"], env=env, input="")
    assert result.exit_code == 0, result.output
    assert f"local chat in a browser: http://127.0.0.1:{port}/chat" in result.output.splitlines()
