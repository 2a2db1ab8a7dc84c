"""The stream outputs against real parts: ffmpeg as RTMP server, a fake Icecast, aiohttp clients, Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from browser import find_chromium, launch_chromium, wait_until_playing
from fake_concert import FakeConcert
from serving import free_port, rtmp_listener, running
from tones import BLOCK, RATE, TONE_HZ, tone, writing

from bot.web.server import make_app
from synth.ffmpeg import PIPE_BYTES, FfmpegError, FfmpegPush, output_args, redact_url
from synth.http_audio import AudioBroadcast, add_routes, mp3_frame_start

KEY = "live_4242_s3cretStreamKey"
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")


# Audio helpers


def sine_breaks(mono: np.ndarray, hz: float = TONE_HZ) -> int:
    """How many samples break the recurrence x[n+1] = 2cos(w)x[n] - x[n-1] that a gapless sine obeys."""
    x = mono.astype(np.float64)
    residual = x[2:] - 2 * math.cos(2 * math.pi * hz / RATE) * x[1:-1] + x[:-2]
    return int(np.sum(np.abs(residual) > 4))  # rounding to int16 leaves at most 2


def dominant_hz(data: bytes | Path, fmt: str | None = None) -> tuple[float, float]:
    """Decode audio with ffmpeg; its strongest frequency and its duration in seconds."""
    source = ["-f", fmt] if fmt else []
    cmd = [str(FFMPEG), "-v", "error", *source, "-i", "pipe:0" if isinstance(data, bytes) else str(data)]
    cmd += ["-map", "0:a", "-f", "s16le", "-ac", "1", "-ar", str(RATE), "pipe:1"]
    out = subprocess.run(cmd, input=data if isinstance(data, bytes) else None, capture_output=True, check=True)
    mono = np.frombuffer(out.stdout, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mono))
    return float(np.argmax(spectrum) * RATE / len(mono)), len(mono) / RATE


# Pure parts


def test_stream_keys_and_passwords_are_redacted() -> None:
    assert redact_url(f"rtmp://live.twitch.tv/app/{KEY}") == "rtmp://live.twitch.tv/app/***"
    assert (
        redact_url(f"rtmps://a.rtmp.youtube.com:443/live2/{KEY}?bw=1")
        == "rtmps://a.rtmp.youtube.com:443/live2/***?***"
    )
    assert redact_url("icecast://source:hackme@radio.example:8000/live.mp3") == (
        "icecast://source:***@radio.example:8000/live.mp3"
    )
    assert redact_url("/tmp/concert.mp3") == "/tmp/concert.mp3"


def test_output_args_suit_the_destination() -> None:
    rtmp = output_args(f"rtmp://host/app/{KEY}")
    assert {"libx264", "aac", "flv"} <= set(rtmp)
    assert rtmp[-1] == f"rtmp://host/app/{KEY}"
    assert "libopus" in output_args("icecast://source:pw@host:8000/live.opus")
    ice = output_args("icecast://source:pw@host:8000/live")
    assert "libmp3lame" in ice and "libx264" not in ice
    assert "libx264" in output_args("/tmp/out.mp4", video=True)
    assert "libx264" not in output_args("/tmp/out.mp3")


def test_mp3_frame_start_skips_to_a_frame_header() -> None:
    header = bytes([0xFF, 0xFB, 0x90, 0x64])  # MPEG-1 layer III, 128 kb/s, 44.1 kHz
    # Not headers: a lone 0xFF, a layer I header, bit rate index 15.
    assert mp3_frame_start(b"\x00\xff\x00\xff\xff\x12\x00\xff\xfb\xf0\x00" + header + b"abc") == 11
    assert mp3_frame_start(header) == 0
    assert mp3_frame_start(b"\xff\xfb\xf0\x64 bit rate index 15 is invalid") is None
    assert mp3_frame_start(b"\xff\xfb") is None


# FfmpegPush


@needs_ffmpeg
def test_rtmp_push_reaches_a_server_with_audio_and_video(tmp_path: Path) -> None:
    port = free_port()
    received = tmp_path / "received.flv"
    url = f"rtmp://127.0.0.1:{port}/app/{KEY}"
    server = rtmp_listener(str(FFMPEG), url, port, received, stderr=subprocess.PIPE)
    try:
        push = FfmpegPush(url)
        assert push.name == f"rtmp://127.0.0.1:{port}/app/***"
        push.open(RATE)
        try:
            for i in range(0, 3 * RATE, BLOCK):  # 3 s, as fast as ffmpeg takes it
                push.write(tone(i, BLOCK))
        finally:
            push.close()
        server.wait(timeout=15)
    finally:
        server.kill()
        server.wait()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "csv=p=0", received],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(probe.stdout.split()) == ["aac,audio", "h264,video"]
    hz, seconds = dominant_hz(received)
    assert abs(hz - TONE_HZ) < 2
    assert abs(seconds - 3.0) < 0.15


@needs_ffmpeg
def test_push_to_a_refused_url_fails_with_ffmpegs_reason_and_no_key() -> None:
    push = FfmpegPush(f"rtmp://127.0.0.1:{free_port()}/app/{KEY}", stall_timeout=5)
    push.open(RATE)
    try:
        with pytest.raises(FfmpegError) as caught:
            for i in range(0, 60 * RATE, BLOCK):
                push.write(tone(i, BLOCK))
    finally:
        push.close()
    message = str(caught.value)
    assert "Connection refused" in message
    assert "/app/***" in message and KEY not in message and KEY not in push.name


@needs_ffmpeg
def test_push_to_a_server_that_stops_reading_fails_instead_of_hanging() -> None:
    # A socket that listens but never accepts: the connection opens, the RTMP handshake never answers,
    # ffmpeg stops reading its input and the pipe fills up.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        push = FfmpegPush(f"rtmp://127.0.0.1:{mute.getsockname()[1]}/app/{KEY}", stall_timeout=1.0)
        push.open(RATE)
        written = 0
        try:
            # The stall is detected (no write waits forever) long before a minute of audio would have gone out.
            with pytest.raises(FfmpegError, match="took no audio for 1 s") as caught:
                for i in range(0, 60 * RATE, BLOCK):
                    push.write(tone(i, BLOCK))
                    written = i + BLOCK
        finally:
            push.close()
    assert written < 60 * RATE - BLOCK
    assert KEY not in str(caught.value)


@needs_ffmpeg
def test_push_to_a_file_writes_what_its_name_says(tmp_path: Path) -> None:
    path = tmp_path / "concert.mp3"
    push = FfmpegPush(str(path))
    assert push.name == str(path)
    push.open(RATE)
    for i in range(0, 2 * RATE, BLOCK):
        push.write(tone(i, BLOCK))
    push.close()
    push.close()  # a second close changes nothing
    assert path.read_bytes()[:3] == b"ID3"  # ffmpeg chose MP3 from the name
    hz, seconds = dominant_hz(path)
    assert abs(hz - TONE_HZ) < 2 and abs(seconds - 2.0) < 0.1


class FakeIcecast:
    """Just enough Icecast for ffmpeg's source client: PUT with Basic auth, 100 Continue, then the audio."""

    def __init__(self, password: str) -> None:
        self.auth = "Basic " + base64.b64encode(f"source:{password}".encode()).decode()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.body = bytearray()
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # aiohttp's server cannot take this request: its body has neither a length nor chunks, it runs
        # until the source hangs up, which is how Icecast sources send.
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        self.requests.append((head[0], headers))
        if headers.get("authorization") != self.auth:
            writer.write(b"HTTP/1.0 401 Authentication Required\r\nContent-Length: 0\r\n\r\n")
        else:
            # ffmpeg asks to be told to go on; an older source (no Expect) gets the final answer at once.
            # Sending both would leave a reply ffmpeg never reads, and closing a socket with unread data
            # resets the connection, which can lose the end of the audio.
            expects = headers.get("expect", "").lower() == "100-continue"
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" if expects else b"HTTP/1.0 200 OK\r\n\r\n")
            await writer.drain()
            while chunk := await reader.read(65536):
                self.body += chunk
        writer.close()
        self.done.set()


@contextlib.asynccontextmanager
async def fake_icecast(password: str) -> AsyncIterator[tuple[FakeIcecast, int]]:
    fake = FakeIcecast(password)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    async with server:
        yield fake, server.sockets[0].getsockname()[1]


def push_seconds(push: FfmpegPush, seconds: float) -> None:
    push.open(RATE)
    try:
        for i in range(0, int(seconds * RATE), BLOCK):
            push.write(tone(i, BLOCK))
    finally:
        push.close()


@needs_ffmpeg
def test_icecast_push_sends_mp3_with_source_credentials() -> None:
    async def main() -> None:
        async with fake_icecast("hackme") as (fake, port):
            push = FfmpegPush(f"icecast://source:hackme@127.0.0.1:{port}/live.mp3", audio_bitrate="128k")
            assert push.name == f"icecast://source:***@127.0.0.1:{port}/live.mp3"
            await asyncio.to_thread(push_seconds, push, 3.0)
            await asyncio.wait_for(fake.done.wait(), 5)
        request_line, headers = fake.requests[0]
        assert request_line == "PUT /live.mp3 HTTP/1.1"
        assert headers["content-type"] == "audio/mpeg"
        assert abs(len(fake.body) - 3.0 * 128000 / 8) < 3000  # a few frames more or less
        hz, seconds = dominant_hz(bytes(fake.body), "mp3")
        assert abs(hz - TONE_HZ) < 2 and abs(seconds - 3.0) < 0.1

    asyncio.run(main())


@needs_ffmpeg
def test_icecast_push_with_a_wrong_password_fails_without_showing_it() -> None:
    async def main() -> None:
        async with fake_icecast("right") as (_, port):
            push = FfmpegPush(f"icecast://source:wrongpass@127.0.0.1:{port}/live.mp3")
            with pytest.raises(FfmpegError) as caught:
                await asyncio.to_thread(push_seconds, push, 30.0)
        assert "401" in str(caught.value)
        assert "wrongpass" not in str(caught.value)

    asyncio.run(main())


# AudioBroadcast


@contextlib.asynccontextmanager
async def serve(broadcast: AudioBroadcast, page: str = "") -> AsyncIterator[str]:
    """The stream routes (and a page at /) on a free port; yields the base URL."""
    app = web.Application()
    add_routes(app, broadcast)
    if page:

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        app.router.add_get("/", index)
    async with running(app, shutdown_timeout=60.0) as url:
        yield url


async def read_for(response: aiohttp.ClientResponse, n_bytes: int) -> bytes:
    data = bytearray()
    while len(data) < n_bytes:
        chunk = await asyncio.wait_for(response.content.read(n_bytes - len(data)), 5)
        assert chunk, "the stream ended"
        data += chunk
    return bytes(data)


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_wav_stream_two_listeners_one_leaves_the_other_plays_on() -> None:
    async def main() -> None:
        broadcast = AudioBroadcast()
        async with serve(broadcast) as url, aiohttp.ClientSession() as session:
            closed = await session.get(f"{url}/stream.wav")
            assert closed.status == 503  # not open yet
            broadcast.open(RATE)
            with writing(broadcast):
                a = await session.get(f"{url}/stream.wav")
                b = await session.get(f"{url}/stream.wav")
                for r in (a, b):
                    assert r.headers["Content-Type"] == "audio/wav"
                    assert "no-store" in r.headers["Cache-Control"]
                header = await read_for(b, 44)
                riff, _, wave_, fmt, _, pcm, channels, rate, byte_rate, align, bits = struct.unpack(
                    "<4sI4s4sIHHIIHH", header[:36]
                )
                assert (riff, wave_, fmt, header[36:40]) == (b"RIFF", b"WAVE", b"fmt ", b"data")
                assert (pcm, channels, rate, byte_rate, align, bits) == (1, 2, RATE, RATE * 4, 4, 16)
                await read_for(a, 44 + RATE)
                a.close()
                await wait_until(lambda: broadcast.listeners == 1)
                after = np.frombuffer(await read_for(b, 2 * RATE * 4), dtype="<i2").reshape(-1, 2)
            assert sine_breaks(after[:, 0]) == 0, "the remaining listener heard a gap"
            assert np.abs(after).max() > 7000
            b.close()
            await wait_until(lambda: broadcast.listeners == 0)
            broadcast.close()

    asyncio.run(main())


@needs_ffmpeg
def test_mp3_stream_is_shared_by_listeners_and_encodes_the_tone() -> None:
    async def main() -> None:
        broadcast = AudioBroadcast(mp3_bitrate=128, burst=1.0, linger=0.5)
        broadcast.open(RATE)
        async with serve(broadcast) as url, aiohttp.ClientSession() as session:
            with writing(broadcast) as writer:
                a = await session.get(f"{url}/stream.mp3")
                assert a.headers["Content-Type"] == "audio/mpeg" and "no-store" in a.headers["Cache-Control"]
                assert broadcast.encoding
                await read_for(a, 24000)  # 1.5 s at 128 kb/s
                frames_before = writer.frames
                b = await session.get(f"{url}/stream.mp3")
                heard = await read_for(b, 12000)  # 0.75 s of audio, most of it from the burst
                # It heard more than was written since it joined: the rest came at once, from the burst.
                assert (writer.frames - frames_before) / RATE < 0.75, "a new listener got no recent audio"
                a.close()
                await wait_until(lambda: broadcast.listeners == 1)
                heard += await read_for(b, 2 * 16000)  # two more seconds
                b.close()
                await wait_until(lambda: broadcast.listeners == 0)
                assert broadcast.encoding  # lingers for a page that reloads
                await wait_until(lambda: not broadcast.encoding, timeout=2)
        broadcast.close()
        assert mp3_frame_start(heard) == 0
        hz, seconds = dominant_hz(heard, "mp3")
        assert abs(hz - TONE_HZ) < 2 and seconds > 2.6

    asyncio.run(main())


def hung_up(sock: socket.socket) -> bool:
    """Whether the server closed this connection: what it sent ends, or is cut, within two seconds."""
    sock.settimeout(2)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_listener_that_never_reads_neither_blocks_writes_nor_other_listeners() -> None:
    async def main() -> None:
        broadcast = AudioBroadcast(max_lag=0.5)
        broadcast.open(RATE)
        async with serve(broadcast) as url, aiohttp.ClientSession() as session:
            host, port = url.removeprefix("http://").split(":")
            stuck = socket.socket()
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so that the kernel fills up soon
            stuck.connect((host, int(port)))
            stuck.sendall(b"GET /stream.wav HTTP/1.1\r\nHost: x\r\n\r\n")
            with writing(broadcast, speed=8.0):
                await wait_until(lambda: broadcast.listeners == 1)
                reader = await session.get(f"{url}/stream.wav")
                await read_for(reader, 44)
                heard = bytearray()
                while broadcast.listeners == 2 or len(heard) < RATE * 4:
                    heard += await read_for(reader, 8192)
                    assert len(heard) < 60 * RATE * 4, "the stuck listener was never dropped"
            assert await asyncio.to_thread(hung_up, stuck), "the dropped listener's connection is still open"
            stuck.close()
            reader.close()
        broadcast.close()
        assert sine_breaks(np.frombuffer(bytes(heard), dtype="<i2")[::2]) == 0
        assert broadcast.too_slow == 1  # /metrics: concertbot_http_audio_slow_listeners

    asyncio.run(main())


def child_pids(pattern: str) -> list[int]:
    """This process's children whose command line matches `pattern`."""
    found = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


async def scraped(session: aiohttp.ClientSession, url: str, *names: str) -> list[float]:
    """The values of metrics `names` in what `/metrics` answers now."""
    async with session.get(f"{url}/metrics") as response:
        lines = (await response.text()).splitlines()
    samples = (line.partition(" ") for line in lines if not line.startswith("#"))
    values = {name: float(value) for name, _, value in samples}
    return [values[name] for name in names]


@needs_ffmpeg
def test_audio_the_mp3_encoder_could_not_take_in_time_is_counted_in_metrics() -> None:
    names = ("concertbot_http_audio_listeners", "concertbot_http_audio_dropped_seconds_total")

    async def main() -> None:
        broadcast = AudioBroadcast()
        broadcast.open(RATE)
        app = make_app(FakeConcert(), None, broadcast=broadcast)
        async with running(app) as url, aiohttp.ClientSession() as session:
            with writing(broadcast, speed=8.0) as writer:
                listener = await session.get(f"{url}/stream.mp3")
                await read_for(listener, 8000)
                assert await scraped(session, url, *names) == [1.0, 0.0]  # the encoder keeps up
                [encoder] = child_pids("libmp3lame")
                os.kill(encoder, signal.SIGSTOP)  # an encoder that falls behind: its input pipe fills
                try:
                    stopped_at = writer.frames
                    await wait_until(lambda: writer.frames - stopped_at > 9 * RATE, timeout=10)
                    [listeners, dropped] = await scraped(session, url, *names)
                    written = (writer.frames - stopped_at) / RATE
                finally:
                    os.kill(encoder, signal.SIGCONT)
                listener.close()
        broadcast.close()
        assert listeners == 1.0
        # What was written since, less what the encoder's pipe took (it held a little when ffmpeg stopped).
        pipe = PIPE_BYTES / 4 / RATE
        assert written - pipe - 1.0 < dropped <= written - pipe + 1.0

    asyncio.run(main())


def test_head_does_not_stream_and_closing_the_sink_ends_the_responses() -> None:
    async def main() -> None:
        broadcast = AudioBroadcast()
        broadcast.open(RATE)
        async with serve(broadcast) as url, aiohttp.ClientSession() as session:
            async with session.head(f"{url}/stream.mp3") as head:
                assert head.status == 200 and head.headers["Content-Type"] == "audio/mpeg"
            assert broadcast.listeners == 0 and not broadcast.encoding
            with writing(broadcast):
                listening_ = await session.get(f"{url}/stream.wav")
                await read_for(listening_, 1000)
                broadcast.close()  # the engine stops: the response ends instead of hanging
                rest = await asyncio.wait_for(listening_.content.read(), 5)
                assert len(rest) < 5 * RATE * 4
            assert broadcast.listeners == 0

    asyncio.run(main())


# A real browser

CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
@pytest.mark.parametrize("stream", ["stream.mp3", "stream.wav"])
def test_chromium_plays_the_stream_in_an_audio_element(stream: str) -> None:
    if stream.endswith(".mp3") and FFMPEG is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    # Chromium plays a paused live stream only once it judges that enough is buffered (6 s or more);
    # starting playback as soon as it can play is what a page should do, and what this one does.
    page_html = f'<!doctype html><audio id="a" src="/{stream}" autoplay muted oncanplay="this.play()"></audio>'

    async def main() -> None:
        broadcast = AudioBroadcast()
        broadcast.open(RATE)
        async with serve(broadcast, page_html) as url, launch_chromium() as browser:
            with writing(broadcast):
                page = await browser.new_page(f"{url}/")
                audio = "document.getElementById('a')"
                await wait_until_playing(page, audio, 3, 1.0, 10, f"the <audio> element with {stream}")
                assert await page.evaluate(f"!{audio}.paused && !{audio}.error")
                assert broadcast.listeners >= 1
                await page.close()
        broadcast.close()

    asyncio.run(main())
