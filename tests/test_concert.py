"""The whole concert end to end: real twitchio against the fake Twitch, real Redis, real engine into a file."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fake_twitch import FakeTwitch
from serving import free_port, listening

from bot.app import Concert, run_concert
from config import load_settings
from synth.outputs import FileSink
from synth.render import rms_dbfs

pytestmark = pytest.mark.anyio
PIECE_SECONDS = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch() as server:
        yield server


async def _start(
    fake: FakeTwitch, tmp_path: Path, redis_url: str | None, seconds: float = PIECE_SECONDS
) -> tuple[asyncio.Task, Concert]:
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": seconds},
        concert={
            "autoplay": False,
            "redis_url": redis_url,
            "viewer_cooldown_seconds": 0.0,
            "global_cooldown_seconds": 0.0,
            "http_port": 0,
        },
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(
            settings,
            fake.settings(),
            sinks=[FileSink(tmp_path / "concert.wav")],
            started=ready.set_result,
            namespace=f"test-{uuid.uuid4().hex[:8]}",
        )
    )
    return task, await asyncio.wait_for(ready, 30)


async def _wait(predicate, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "redis_url",
    [
        pytest.param(None, id="embedded"),
        pytest.param(
            "redis://127.0.0.1:6379/0",
            id="server",
            marks=pytest.mark.skipif(not listening(6379), reason="no Redis server on 127.0.0.1:6379"),
        ),
    ],
)
async def test_request_vote_top_replay_and_reconnect(fake: FakeTwitch, tmp_path: Path, redis_url: str | None):
    task, concert = await _start(fake, tmp_path, redis_url)
    try:
        asked = await fake.say("ada", "!compose bach violin in e minor")
        ack = await fake.wait_for_sent(lambda m: m.reply_to == asked, timeout=10)
        assert "#1 in the queue" in ack.text and "bach in Em" in ack.text

        playing = await fake.wait_for_sent(lambda m: "now playing" in m.text, timeout=20)
        assert "@ada" in playing.text and "bach in Em for violin" in playing.text
        seed = int(re.search(r"seed (\d+)", playing.text).group(1))

        # Many viewers vote at once, one of them twice: each counts once.
        voters = [f"viewer{i}" for i in range(30)]
        await asyncio.gather(*(fake.say(v, "!vote") for v in voters), fake.say("viewer0", "!vote"))
        await _wait(lambda: concert.commands.messages >= 32, 10)
        assert await concert.store.votes(seed) == 30

        await _wait(lambda: concert.conductor.last is not None and concert.conductor.last.record.seed == seed)
        first = concert.conductor.last
        await _wait(lambda: first.saved, 10)

        top = await fake.say("ada", "!top")
        board = await fake.wait_for_sent(lambda m: m.reply_to == top, timeout=10)
        assert f"#1 {seed} (bach, 30)" in board.text and "top of the stream" in board.text
        top = await fake.say("ada", "!top all")
        board = await fake.wait_for_sent(lambda m: m.reply_to == top, timeout=10)
        assert f"top of all time: #1 {seed} (bach, 30)" in board.text

        # The socket drops; the bot reconnects and keeps answering, and the replay is the same piece.
        await fake.drop_socket()
        again = await fake.say("bob", f"!replay {seed}")
        ack = await fake.wait_for_sent(lambda m: m.reply_to == again, timeout=15)
        assert str(seed) in ack.text and "#1" in ack.text
        await _wait(
            lambda: concert.conductor.current is not None and concert.conductor.current.live is not first.live
        )
        replay = concert.conductor.current
        assert replay.record.seed == seed
        # The key asked for, stored, and replayed with the piece.
        assert replay.record.recipe.key == first.record.recipe.key == "Em"
        await _wait(lambda: concert.conductor.last is replay, 20)  # played to its end
        assert replay.live.tokens == first.live.tokens  # the very same notes
        assert replay.live.replay is not None  # played from the stored tokens, not sampled again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    audio, rate = soundfile.read(tmp_path / "concert.wav", dtype="int16")
    assert len(audio) / rate > 2 * PIECE_SECONDS
    loud = np.abs(audio).max(axis=1) > 1000
    assert loud.mean() > 0.3  # the piece is in the recording, not silence
    assert rms_dbfs(audio[loud]) > -40


async def test_a_quartet_asked_for_in_chat_plays_two_violins(fake: FakeTwitch, tmp_path: Path):
    task, concert = await _start(fake, tmp_path, None)
    try:
        asked = await fake.say("ada", "!compose classical violin violin viola cello")
        ack = await fake.wait_for_sent(lambda m: m.reply_to == asked, timeout=10)
        assert "classical for violin, violin, viola, cello is #1" in ack.text
        playing = await fake.wait_for_sent(lambda m: "now playing" in m.text, timeout=20)
        assert "for violin, violin, viola, cello at" in playing.text
        recipe = concert.conductor.current.record.recipe
        # The model's parts are four programs; the one that stands in for the second violin sounds as one.
        assert recipe.programs() == [40, 41, 42, 71] and recipe.sound_programs() == {71: 40}
        np_asked = await fake.say("bob", "!np")
        np_said = await fake.wait_for_sent(lambda m: m.reply_to == np_asked, timeout=10)
        assert "for violin, violin, viola, cello" in np_said.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_bad_input_gets_one_short_reply_and_the_concert_goes_on(fake: FakeTwitch, tmp_path: Path):
    task, concert = await _start(fake, tmp_path, None)
    try:
        cases = [
            ("ann", "!compose bahc violin", "Did you mean bach"),
            ("bea", "!compose bach violin viola cello flute oboe horn harp", "at most 6 instruments"),
            ("cy", "!compose bach 999", "tempo 999 is out of range"),
            ("dee", "!replay abc", "is not a seed"),
            ("eve", "!replay 777", "no piece has seed 777"),
            ("fay", "!skip", "for moderators"),
            ("gus", "!compose trumpets", "unknown style"),
            ("kim", "!compose irish violin in H", "unknown key"),
        ]
        # A piece cut short before its tokens were saved, by a model that has been replaced since.
        from bot.state.store import PieceRecord
        from generator.sampling import PieceRequest

        await concert.store.save_piece(
            PieceRecord(PieceRequest("bach", ("violin",), 90.0, 30.0, seed=555), "an-old-model")
        )
        cases.append(("jo", "!replay 555", "cut short"))
        for login, text, expected in cases:
            asked = await fake.say(login, text)
            reply = await fake.wait_for_sent(lambda m, asked=asked: m.reply_to == asked, timeout=10)
            assert expected in reply.text, (text, reply.text)
            assert len(reply.text) <= 200
        # Garbage and other bots' commands get no reply at all; a second mistake within the window neither.
        before = len(fake.sent)
        for text in ("!uptime", "hello", "!" * 600, "\u202e!compose", "!compose " + "x" * 490):
            await fake.say("hal", text)
        again = await fake.say("ann", "!compose bahc")
        await _wait(lambda: concert.commands.messages >= len(cases) + 6, 10)
        await asyncio.sleep(0.5)
        assert all(m.reply_to != again for m in fake.sent)
        assert len([m for m in fake.sent[before:] if m.reply_to]) <= 1  # at most hal's one overlong-style reply
        # And the bot still works.
        asked = await fake.say("ivy", "!compose irish flute")
        ack = await fake.wait_for_sent(lambda m: m.reply_to == asked, timeout=10)
        assert "#1 in the queue" in ack.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_moderators_steer_and_redemptions_jump_the_queue(fake: FakeTwitch, tmp_path: Path):
    task, concert = await _start(fake, tmp_path, None, seconds=120.0)  # long enough that only a skip ends it
    store = concert.store

    async def ask(login: str, text: str, moderator: bool = False) -> str:
        asked = await fake.say(login, text, moderator=moderator)
        return (await fake.wait_for_sent(lambda m: m.reply_to == asked, timeout=10)).text

    try:
        assert "#1" in await ask("ann", "!compose bach violin")
        await fake.wait_for_sent(lambda m: "now playing" in m.text, timeout=20)
        assert "#1" in await ask("bob", "!compose irish flute")
        assert "#2" in await ask("cat", "!compose folk")
        # A redemption goes to the priority lane, ahead of everyone's normal requests.
        await fake.redeem("zed", "palestrina choir")
        await _wait(lambda: concert.commands.messages >= 4, 10)
        queue = await store.queue()
        assert [e.request.login for e in queue] == ["zed", "bob", "cat"]
        assert queue[0].request.priority and queue[0].request.style == "palestrina"

        assert "removed 1" in await ask("mia", "!remove @bob", moderator=True)
        assert "ignored" in await ask("mia", "!block cat", moderator=True)
        assert [e.request.login for e in await store.queue()] == ["zed"]
        await fake.say("cat", "!compose bach")  # blocked: no reply, no request
        assert "cleared (1" in await ask("mia", "!clear", moderator=True)
        assert await store.queue() == []
        assert "autoplay off" in await ask("mia", "!autoplay off", moderator=True)
        assert not (await store.flags()).autoplay

        assert "paused" in await ask("mia", "!pause", moderator=True)
        assert (await store.flags()).paused and concert.session.engine.paused
        assert "resumed" in await ask("mia", "!resume", moderator=True)
        assert not (await store.flags()).paused

        # Voteskip: 5 viewers chatted (ann, bob, cat, zed, mia), so it takes max(3, half of 5 rounded up) = 3.
        playing = concert.conductor.current.record.seed
        for login in ("ann", "bob"):
            await fake.say(login, "!voteskip")
        await _wait(lambda: len(concert.conductor.current.voteskips) == 2, 10)
        await asyncio.sleep(0.5)
        assert concert.conductor.current.record.seed == playing  # two are not enough
        await fake.say("zed", "!voteskip")
        await _wait(
            lambda: concert.conductor.last is not None and concert.conductor.last.record.seed == playing
        )
        assert concert.conductor.last.ended - concert.conductor.last.started < 60  # cut short, not ended
        assert concert.conductor.last.record.seed == playing
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server program")
async def test_the_concert_survives_its_redis_server_restarting(tmp_path: Path):
    from bot.chat.message import ChatMessage

    port = free_port()

    def start_redis() -> subprocess.Popen:
        # appendfsync always: under "everysec" a busy disk lets Redis acknowledge a write it has not yet put in
        # the file, and a kill a few milliseconds later loses it; that is Redis's documented bargain, not ours.
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        args += ["--appendfsync", "always", "--dir", str(tmp_path)]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return server

    def line(login: str, text: str, n: int) -> ChatMessage:
        return ChatMessage(f"local:{login}", login, login, text, message_id=f"m{n}")

    server = start_redis()
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 90.0},  # long enough that cat's piece is never taken as next during the test
        concert={
            "autoplay": False,
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "http_port": 0,
            "global_cooldown_seconds": 0.0,
        },
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_concert(settings, None, sinks=[], started=ready.set_result))
    try:
        concert = await asyncio.wait_for(ready, 30)
        replies = await concert.chat(line("ann", "!compose bach violin", 1))
        assert "#1 in the queue" in replies[0].text
        await _wait(lambda: concert.conductor.current is not None)
        playing = concert.conductor.current.record.seed
        assert "#1 in the queue" in (await concert.chat(line("cat", "!compose folk", 2)))[0].text

        server.kill()
        server.wait()
        await asyncio.sleep(1.5)  # the conductor meets the dead server meanwhile
        assert not task.done()  # ... and does not give up
        server = start_redis()
        assert concert.conductor.current.record.seed == playing  # the music never stopped

        for n in range(3, 9):  # a connection that died with the old server may fail once
            replies = await concert.chat(line("bob", "!compose irish flute", n))
            if replies and "unavailable" not in replies[0].text:
                break
            await asyncio.sleep(0.5)
        assert concert.conductor.upcoming is None  # so the queue alone holds cat's request
        assert replies and "#2 in the queue" in replies[0].text  # cat's request survived the crash
        queue = await concert.store.queue()
        assert [e.request.login for e in queue] == ["cat", "bob"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.kill()
        server.wait()


async def test_mistakes_are_answered_before_cooldowns_and_web_chat_needs_the_token(tmp_path: Path):
    import aiohttp

    from bot.chat.message import ChatMessage

    port = free_port()
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 60.0},
        concert={
            "autoplay": False,
            "http_port": port,
            "admin_token": "s3cret",
            "global_cooldown_seconds": 600.0,  # every request below falls inside the first one's cooldown
        },
        outputs={"device": "off"},
    )
    ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_concert(settings, None, sinks=[], started=ready.set_result, namespace=f"cd-{uuid.uuid4().hex[:6]}")
    )

    async def say(login: str, text: str) -> list[str]:
        replies = await concert.chat(ChatMessage(f"local:{login}", login, login, text, message_id=login))
        return [reply.text for reply in replies]

    try:
        concert = await asyncio.wait_for(ready, 60)
        assert "#1 in the queue" in (await say("ann", "!compose bach violin"))[0]
        # Each mistake is named, though the request would have had to wait anyway.
        assert "Did you mean bach" in (await say("bob", "!compose bahc"))[0]
        assert "tempo 999 is out of range" in (await say("cy", "!compose bach 999"))[0]
        for login, seed in (("dee", "⒐"), ("eve", "²"), ("fay", "#١٢")):
            assert (await say(login, f"!replay {seed}")) == [
                f"'{seed}' is not a seed; seeds are numbers like 123456789"
            ]
        assert "one request at a time" in (await say("gus", "!compose irish flute"))[0]  # a good one waits

        base = f"http://127.0.0.1:{port}"
        line = {"user": "streamer", "text": "!pause"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/chat", json=line) as r:
                assert (await r.json())["replies"] == ["@streamer !pause is for moderators"]
            async with http.post(f"{base}/api/chat", json=line, headers={"Host": "rebound.example"}) as r:
                assert r.status == 403
            assert not concert.session.engine.paused and not (await concert.store.flags()).paused
            auth = {"Authorization": "Bearer s3cret"}
            async with http.post(f"{base}/api/chat", json=line, headers=auth) as r:
                assert (await r.json())["replies"] == ["@streamer paused; !resume to go on"]
            assert concert.session.engine.paused and (await concert.store.flags()).paused
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
