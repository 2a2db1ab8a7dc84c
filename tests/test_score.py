"""The score: MusicXML from a piece's MIDI that music21 reads back as the same notes, engraved by Verovio,
served beside the piece and seen on its page in a real browser."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from fractions import Fraction

import aiohttp
import pytest
from browser import Browser, launch_chromium
from fake_concert import FakeConcert
from music21 import converter, stream
from serving import running

from bot.web.score import ScoreCache, ScoreSpec, _speller, build, heard_metre, midi_notes, musicxml, svg_pages
from bot.web.server import make_app
from generator.decode import STEPS_PER_BEAT, Note, midi_bytes, to_midi
from generator.model import load_model
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest

VIOLIN, CELLO = 40, 42
# Two bars of 2/4 and a third: a violin line with a note tied over the bar line and a chromatic note, a
# second violin line under it, and cello chords with a note that overlaps them (a second cello voice).
NOTES = [
    Note(0, 67, 8, VIOLIN),
    Note(8, 69, 20, VIOLIN),  # from beat 2 of bar 1 into bar 2: a tie
    Note(28, 70, 4, VIOLIN),  # B flat in D minor
    Note(32, 72, 16, VIOLIN),
    Note(40, 61, 8, VIOLIN),  # C sharp, the raised seventh, while the first violin holds its C
    Note(0, 48, 32, CELLO),
    Note(0, 52, 32, CELLO),
    Note(16, 55, 16, CELLO),
    Note(32, 50, 16, CELLO),
]
SPEC = ScoreSpec("The Lark on the Hill", ("violin", "cello"), 100.0, "Dm", "2/4")


def sounding(score: stream.Score) -> Counter[tuple[int, Fraction]]:
    """(MIDI pitch, onset in quarter notes) of every note the score sounds, a tied note once."""
    out: Counter[tuple[int, Fraction]] = Counter()
    for part in score.parts:
        for element in part.stripTies().flatten().notes:
            for p in element.pitches:
                out[(int(p.midi), Fraction(element.offset).limit_denominator(64))] += 1
    return out


def heard_notes(notes: list[Note]) -> Counter[tuple[int, Fraction]]:
    return Counter((n.pitch, Fraction(n.start, STEPS_PER_BEAT)) for n in notes)


def parsed(xml: bytes) -> stream.Score:
    return converter.parseData(xml.decode("utf-8"), format="musicxml")


def test_the_musicxml_reads_back_as_the_midi_notes_in_parts_keys_and_bars() -> None:
    midi = midi_bytes(to_midi(NOTES, SPEC.tempo))
    score = parsed(musicxml(midi_notes(midi), SPEC))
    assert sounding(score) == heard_notes(NOTES)
    assert [p.partName for p in score.parts] == ["Violin 1", "Violin 2", "Cello 1", "Cello 2"]
    first = score.parts[0]
    assert first.recurse().getElementsByClass("KeySignature").first().sharps == -1
    assert first.recurse().getElementsByClass("TimeSignature").first().ratioString == "2/4"
    assert [c.sign for c in (p.recurse().getElementsByClass("Clef").first() for p in score.parts)] == [
        "G",
        "G",
        "F",
        "F",
    ]
    names = [n.pitch.name for n in score.parts[0].recurse().notes if n.isNote]
    assert "B-" in names and "A#" not in names  # spelt in D minor
    assert [n.pitch.name for n in score.parts[1].recurse().notes] == ["C#"]
    tied = [n for n in first.recurse().notes if n.tie is not None]
    assert [(n.pitch.name, n.tie.type) for n in tied] == [("A", "start"), ("A", "stop")]  # across bars 1-2
    assert len(first.getElementsByClass("Measure")) == 3 == len(score.parts[3].getElementsByClass("Measure"))


@pytest.mark.parametrize(
    ("key", "pc", "name"),
    [("F", 10, "B-"), ("Dm", 1, "C#"), ("Dm", 11, "B"), ("E", 3, "D#"), ("Bb", 3, "E-"), ("C", 6, "F#"),
     ("Gm", 6, "F#"), ("Ab", 1, "D-"), (None, 8, "G#")],
)  # fmt: skip
def test_notes_are_spelt_in_the_key(key: str | None, pc: int, name: str) -> None:
    assert _speller(key)(pc) == name


@pytest.fixture(scope="module")
def real_piece() -> tuple[list[Note], ScoreSpec]:
    """A 20-second Bach quartet by the shipped model, as the concert would compose it."""
    loaded = load_model()
    instruments, tempo = style_defaults(loaded, "bach")
    request = PieceRequest("bach", instruments, tempo, 20.0, seed=4242)
    piece = Composer(loaded).compose(request)
    return piece.notes, ScoreSpec("Lobt Gott, du meine Seele", instruments, tempo, "G", "4/4")


def test_a_real_piece_reads_back_with_every_note_and_verovio_engraves_it(
    real_piece: tuple[list[Note], ScoreSpec],
) -> None:
    notes, spec = real_piece
    assert len(notes) > 40
    score = build(midi_bytes(to_midi(notes, spec.tempo)), spec)
    assert sounding(parsed(score.musicxml)) == heard_notes(notes)
    assert len(score.svg) >= 1 and all(page.startswith("<svg") for page in score.svg)
    assert "Lobt Gott" in score.svg[0] and "Violin" in score.svg[0]
    assert score.svg[0].count('class="note"') > 20  # notes engraved, not an empty staff


def test_verovio_refuses_what_is_not_musicxml() -> None:
    with pytest.raises(ValueError, match="Verovio"):
        svg_pages(b"<not-a-score/>")


# Served: the real web app over a fake concert, its piece's notes as the MIDI download gives them.


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def concert_with_piece() -> FakeConcert:
    concert = FakeConcert()
    concert.add_past_piece(77, "irish", ("piano",), "ann", 2, "week")
    concert.pieces[77] = replace(concert.pieces[77], title="The Lark on the Hill", key="G")
    concert.start(88, "bach", ("organ",), "bob")  # playing, not complete: no score yet
    return concert


@pytest.mark.anyio
async def test_the_piece_page_links_the_score_and_its_musicxml_download() -> None:
    concert = concert_with_piece()
    async with running(make_app(concert, None)) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/p/77") as page:
            body = await page.text()
        assert '<img src="/p/77.svg"' in body and 'href="/p/77.musicxml"' in body

        async with session.get(f"{url}/p/77.musicxml") as got:
            assert got.status == 200
            assert got.content_type == "application/vnd.recordare.musicxml+xml"
            assert got.headers["Content-Disposition"] == 'attachment; filename="concertbot-77.musicxml"'
            xml = await got.read()
        async with session.get(f"{url}/p/77.mid") as got:
            midi = await got.read()
        score = parsed(xml)
        assert sounding(score) == heard_notes(sorted(midi_notes(midi)))  # type: ignore[arg-type]
        assert score.metadata.bestTitle == "The Lark on the Hill"

        lookups = concert.lookups.count(77)
        async with session.get(f"{url}/p/77.svg") as got:
            assert got.status == 200 and got.content_type == "image/svg+xml"
            assert (await got.text()).startswith("<svg")
        assert concert.lookups.count(77) == lookups + 1  # the piece looked up, its score built once, cached

        async with session.get(f"{url}/p/88.svg") as got:
            assert got.status == 404  # still being composed
        async with session.get(f"{url}/p/88") as got:
            assert ".svg" not in await got.text()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    from browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    async with launch_chromium() as browser:
        yield browser


@pytest.mark.anyio
async def test_a_browser_sees_the_engraved_score_on_the_piece_page() -> None:
    concert = concert_with_piece()
    async with running(make_app(concert, None)) as url, chromium() as browser:
        page = await browser.new_page(f"{url}/p/77")
        shown = "document.querySelector('figure.score img')"
        await page.wait_for(f"{shown} && {shown}.complete && {shown}.naturalWidth > 0", timeout=30.0)
        box = await page.evaluate(f"JSON.stringify({shown}.getBoundingClientRect())")
        assert '"width":' in box and await page.evaluate(f"{shown}.getBoundingClientRect().height > 100")
        await page.close()


@pytest.mark.anyio
async def test_two_visitors_at_once_build_the_score_once_and_later_ones_get_it_from_the_cache() -> None:
    cache = ScoreCache(size=1)
    asked: list[int] = []
    midi = midi_bytes(to_midi(NOTES, SPEC.tempo))

    def source(seed: int):
        async def give() -> tuple[bytes, ScoreSpec] | None:
            asked.append(seed)
            await asyncio.sleep(0)  # the second visitor arrives while the first one's build is under way
            return (midi, SPEC) if seed != 404 else None

        return give

    first, second = await asyncio.gather(cache.get(1, source(1)), cache.get(1, source(1)))
    assert first is second and first is not None and asked == [1]
    assert await cache.get(1, source(1)) is first and asked == [1]
    assert await cache.get(404, source(404)) is None
    await cache.get(2, source(2))  # the cache keeps one: piece 1 is built again when asked for
    await cache.get(1, source(1))
    assert asked == [1, 404, 2, 1]


def test_a_jig_is_written_in_six_eight_and_a_waltz_in_three_four() -> None:
    # Quarter-eighth figures over a 24-step bar: a jig. Half note then quarter: a waltz.
    jig = [
        Note(bar * 24 + at, 67, length, VIOLIN)
        for bar in range(4)
        for at, length in ((0, 8), (8, 4), (12, 8), (20, 4))
    ]
    waltz = [Note(bar * 24 + at, 67, length, VIOLIN) for bar in range(4) for at, length in ((0, 16), (16, 8))]
    for notes, heard in ((jig, "6/8"), (waltz, "3/4")):
        spec = replace(SPEC, instruments=("violin",), metre="3/4")
        xml = musicxml(midi_notes(midi_bytes(to_midi(notes, spec.tempo))), spec)
        score = parsed(xml)
        assert score.parts[0].recurse().getElementsByClass("TimeSignature").first().ratioString == heard
        assert sounding(score) == heard_notes(notes)
    assert heard_metre([], "2/4") == "2/4"


@pytest.mark.anyio
async def test_the_real_concert_serves_the_score_of_the_piece_it_played(tmp_path) -> None:
    import uuid

    from serving import free_port

    from bot.app import Concert, run_concert
    from config import load_settings
    from generator.decode import decode

    port = free_port()
    settings = load_settings(
        paths={"data_dir": str(tmp_path)},
        sampling={"seconds": 6.0},
        concert={"autoplay": False, "http_port": port, "admin_token": "s3cret"},
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(
            settings, None, sinks=[], started=ready.set_result, namespace=f"score-{uuid.uuid4().hex[:6]}"
        )
    )
    base = f"http://127.0.0.1:{port}"
    try:
        concert = await asyncio.wait_for(ready, 30)
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/api/chat", json={"user": "ann", "text": "!compose irish flute"})
            async with asyncio.timeout(60):
                while concert.conductor.last is None or not concert.conductor.last.saved:
                    await asyncio.sleep(0.05)
            record = await concert.store.load_piece(concert.conductor.last.record.seed)
            assert record is not None and record.tokens and record.title
            async with http.get(f"{base}/p/{record.seed}") as got:
                page = await got.text()
            assert f"<h1>{record.title}</h1>" in page.replace("&#x27;", "'")
            assert f'<img src="/p/{record.seed}.svg"' in page
            async with http.get(f"{base}/p/{record.seed}.musicxml") as got:
                assert got.status == 200
                score = parsed(await got.read())
            assert sounding(score) == heard_notes(decode(concert.conductor.loaded.vocab, record.tokens))
            assert score.metadata.bestTitle == record.title
            assert [p.partName for p in score.parts] == ["Flute"]
            async with http.get(f"{base}/p/{record.seed}.svg") as got:
                assert got.status == 200 and (await got.text()).count('class="note"') > 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
