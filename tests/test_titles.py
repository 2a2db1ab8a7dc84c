"""Titles: learnt from the corpus's own, drawn by the seed, never a real one, never a blocked word."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import music21
import pytest
from fake_twitch import FakeTwitch
from serving import listening

from bot.state.store import PieceRecord, Store, open_store
from generator import titles
from generator.model import DEFAULT_MODEL_DIR
from generator.sampling import PieceRequest
from generator.styles import CORPUS_STYLES

SHIPPED = DEFAULT_MODEL_DIR / titles.FILE_NAME
STYLES = [s.name for s in CORPUS_STYLES]
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def model() -> titles.TitleModel:
    return titles.load(SHIPPED)


@pytest.fixture(scope="module")
def abc_titles() -> dict[str, list[str]]:
    """The real titles of the ABC books (the chorales too), read from music21's corpus as shipped."""
    return titles.corpus_titles(metadata=False)


def test_the_shipped_model_is_small_and_learnt_from_thousands_of_titles(model: titles.TitleModel) -> None:
    assert SHIPPED.stat().st_size < 200_000
    assert sum(model.learnt_from.values()) > 10_000
    assert {model.family_of(style) for style in STYLES} == {
        "irish",
        "scottish",
        "german",
        "chorale",
        "nickname",
        "renaissance",
        "mass",
    }


def test_the_same_seed_gives_the_same_title_in_another_process(model: titles.TitleModel) -> None:
    seeds = [0, 1, 42, 2**63 - 1, 123456789]
    here = {style: [model.draw(seed, style) for seed in seeds] for style in STYLES}
    script = (
        "import json, sys\n"
        "from generator import titles\n"
        f"m = titles.load(titles.Path({str(SHIPPED)!r}))\n"
        f"print(json.dumps({{s: [m.draw(n, s) for n in {seeds!r}] for s in {STYLES!r}}}))\n"
    )
    # Another hash salt: a title that depended on hash() of a string would differ.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    assert json.loads(out.stdout) == here
    assert len({t for ts in here.values() for t in ts}) > 30  # seeds and styles do change the title


def test_titles_are_never_a_corpus_title(model: titles.TitleModel, abc_titles: dict[str, list[str]]) -> None:
    real = {titles.normalised(t) for family in abc_titles.values() for t in family}
    # Every T: line as it is written too, whatever the cleaning made of it.
    corpus = Path(music21.__file__).parent / "corpus"
    for path in corpus.glob("*/*.abc"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("T:"):
                real.add(titles.normalised(line[2:]))
    assert len(real) > 11000
    for style in ("irish", "scottish", "folk", "bach", "classical"):
        drawn = {model.draw(seed, style) for seed in range(5000)}
        assert len(drawn) > 2000, style  # not one title for every seed
        copied = [t for t in drawn if titles.normalised(t) in real]
        assert copied == [], style


def test_no_blocked_word_and_two_to_six_words_in_100000_draws(model: titles.TitleModel) -> None:
    for i in range(100_000):
        style = STYLES[i % len(STYLES)]
        title = model.draw(i * 7919, style)
        assert not titles.blocked(title), title
        assert 2 <= len(title.split()) <= 6, title


def test_the_blocklist_takes_whole_words_and_stems() -> None:
    assert titles.blocked("The Darkey's Dream")
    assert titles.blocked("DIE MORDFRANZOSEN")
    assert titles.blocked("Fucking Reel")
    assert not titles.blocked("Cooney's Hornpipe")  # "coon" only as a whole word
    assert not titles.blocked("Es scheinen die Sternlein so hell")


def test_a_blocked_title_teaches_no_word_but_is_known() -> None:
    data = titles.learn({"irish": ["The Savage Lad", "The Merry Lad", "The Green Hill", "Merry Hill"]})
    assert "Savage" not in data["families"]["irish"]["words"]
    model = titles.TitleModel(data)
    drawn = {model.draw(seed, "irish") for seed in range(200)}
    assert drawn == {"The Merry Hill", "Merry Lad"}  # the walks that are no real title


def test_a_family_with_nothing_new_to_say_falls_back_to_a_numbered_title() -> None:
    model = titles.TitleModel(titles.learn({"irish": ["The Echo", "The Echo"]}))
    assert model.draw(1234567, "irish") == "Piece 4567"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Lamentation of Owen Roe O'Neill, The", "The Lamentation of Owen Roe O'Neill"),
        ("Miss Plaudy's -- Reel", "Miss Plaudy's Reel"),
        ("Der treue Husar (19b), S. 83", "Der treue Husar"),
        ("Quick Step.", "Quick Step"),
        ("St. Patrick's Day", "St. Patrick's Day"),
        ("bwv175.7.mxl", None),
        ("Op. 59 No. 3  Movement 3", None),
    ],
)
def test_corpus_titles_are_cleaned_as_a_listener_would_say_them(raw: str, clean: str | None) -> None:
    assert titles.clean_title(raw) == clean


def test_the_renaissance_scores_name_pieces_not_sections_of_the_mass() -> None:
    assert titles.sung_title("Kyrie: O Sacra Virgo Beata") == "O Sacra Virgo Beata"
    assert titles.sung_title("Agnus II") is None
    assert titles.sung_title("Con Gran Furor - Madrigal") == "Con Gran Furor"


def test_a_broken_model_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "titles.json"
    broken.write_text("{not json")
    with pytest.raises(titles.TitleError, match=r"titles\.json"):
        titles.load(broken)
    with pytest.raises(titles.TitleError, match="data titles"):
        titles.load(tmp_path / "missing.json")


# The title in the store, in chat and in !replay: the real Redis, the real concert against the fake Twitch.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    url = REDIS_URL if listening(6379) else None
    async with open_store(url, tmp_path, namespace=namespace) as opened:
        yield opened
        keys = [key async for key in opened._redis.scan_iter(match=opened.keys.pattern())]
        if keys:
            await opened._redis.delete(*keys)


def _record(seed: int, title: str) -> PieceRecord:
    return PieceRecord(PieceRequest("irish", ("flute",), 112.0, 30.0, seed=seed), "m", title=title)


@pytest.mark.anyio
async def test_a_title_finds_the_first_piece_of_that_name_in_any_case(store: Store) -> None:
    await store.save_piece(_record(11, "The Lark on the Hill"))
    await store.save_piece(_record(22, "The Lark on the Hill"))  # drawn again by another seed: 11 keeps it
    await store.save_piece(_record(33, "Missa O Venus bant"))
    assert await store.seed_of_title("the lark ON the hill") == 11
    assert await store.seed_of_title("  The Lark on the Hill!  ") == 11
    assert await store.seed_of_title("missa o venus bant") == 33
    assert await store.seed_of_title("The Lark") is None
    assert await store.seed_of_title("!!!") is None
    assert (await store.load_piece(22)).title == "The Lark on the Hill"  # the record keeps its own name


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch() as server:
        yield server


@pytest.mark.anyio
async def test_a_piece_is_announced_by_its_title_and_replayed_by_it(fake: FakeTwitch, tmp_path: Path) -> None:
    from test_concert import _start, _wait

    task, concert = await _start(fake, tmp_path, REDIS_URL if listening(6379) else None)
    try:
        await fake.say("ada", "!compose irish flute")
        playing = await fake.wait_for_sent(lambda m: "now playing" in m.text, timeout=30)
        seed = int(re.search(r"seed (\d+)", playing.text).group(1))
        record = await concert.store.load_piece(seed)
        assert record is not None and record.title == titles.load(SHIPPED).draw(seed, "irish")
        assert f"now playing {record.title}, irish in " in playing.text

        await _wait(lambda: concert.conductor.last is not None and concert.conductor.last.saved, 30)
        again = await fake.say("bob", f"!replay {record.title.upper()}")
        ack = await fake.wait_for_sent(lambda m: m.reply_to == again, timeout=15)
        assert f"piece {seed} ({record.title}, irish) plays again" in ack.text
        await _wait(lambda: concert.conductor.current is not None, 30)
        assert concert.conductor.current.record.seed == seed

        unknown = await fake.say("cy", "!replay The Tune Nobody Wrote")
        reply = await fake.wait_for_sent(lambda m: m.reply_to == unknown, timeout=15)
        assert "no piece is called 'The Tune Nobody Wrote'" in reply.text and len(reply.text) <= 200
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.anyio
async def test_the_overlay_shows_the_title_of_the_piece_playing() -> None:
    from dataclasses import replace

    from browser import find_chromium, launch_chromium
    from fake_concert import FakeConcert
    from serving import running

    from bot.web.server import make_app

    if find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    concert = FakeConcert()
    concert.start(31, "irish", ("flute",), "ann")
    concert.pieces[31] = replace(concert.pieces[31], title="The Lark on the Hill")
    async with running(make_app(concert, None)) as url, launch_chromium() as browser:
        page = await browser.new_page(f"{url}/overlay")
        await page.wait_for("document.body.dataset.live === '1'", timeout=15)
        title = "document.getElementById('now-title').textContent"
        await page.wait_for(f"{title} === 'The Lark on the Hill'", timeout=10)
        concert.start(32, "bach", ("organ",))  # a piece without a title: the line is empty, not stale
        await page.wait_for(f"{title} === ''", timeout=10)
        await page.close()
