"""Live audio over HTTP for a plain `<audio src=...>` element: one shared MP3 encoder, any number of listeners.

`AudioBroadcast` is an `AudioSink` on the engine's side and a pair of aiohttp handlers on the web side:
`GET /stream.mp3` (encoded by one ffmpeg process, started when the first MP3 listener arrives and stopped
a while after the last one leaves) and `GET /stream.wav` (raw PCM behind a WAV header, no ffmpeg needed).
Bytes from the engine's and the encoder's threads reach the event loop through `_post` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

import numpy as np
from aiohttp import web

from synth.ffmpeg import FfmpegError, FfmpegProcess, find_ffmpeg, pcm_bytes

log = logging.getLogger(__name__)

Kind = Literal["mp3", "wav"]
CONTENT_TYPES: dict[Kind, str] = {"mp3": "audio/mpeg", "wav": "audio/wav"}
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    "Accept-Ranges": "none",  # a live stream cannot seek; this stops players from asking
}
UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming WAV writers put in the RIFF and data sizes
READ_BYTES = 16384
IDLE_CHECK = 1.0  # seconds without audio after which a handler checks that its client is still there


def wav_header(sample_rate: int, channels: int = 2) -> bytes:
    """A 44-byte header for 16-bit PCM WAV of unknown length, for a stream that never ends."""
    block_align = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block_align, block_align, 16)
    return (
        b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
        b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", UNKNOWN_SIZE)
    )


def mp3_frame_start(data: bytes) -> int | None:
    """Where the first plausible MP3 (MPEG layer III) frame header starts in `data`; None if there is none."""
    i = data.find(b"\xff")
    while 0 <= i <= len(data) - 4:
        b1, b2 = data[i + 1], data[i + 2]
        if (
            b1 & 0xE0 == 0xE0  # the rest of the 11-bit frame sync
            and (b1 >> 3) & 3 != 1  # MPEG version: 1 is reserved
            and (b1 >> 1) & 3 == 1  # layer III
            and b2 >> 4 not in (0, 15)  # bit rate: "free" and "bad"
            and (b2 >> 2) & 3 != 3  # sample rate: 3 is reserved
        ):
            return i
        i = data.find(b"\xff", i + 1)
    return None


class _Listener:
    """One HTTP client's backlog: filled on the event loop by the broadcast, drained by its handler."""

    def __init__(self, kind: Kind, limit: int) -> None:
        self.kind = kind
        self.limit = limit  # bytes of backlog before the client counts as too slow
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.ended = False
        # A client that joins mid-stream must start on a frame boundary or some decoders refuse the stream.
        self.synced = kind != "mp3"
        self.transport: asyncio.Transport | None = None  # to hang up on a client that stopped reading
        self._wake = asyncio.Event()

    def push(self, data: bytes) -> bool:
        """Queue `data`; False (and nothing queued) if the backlog would pass the limit."""
        if not self.synced:
            start = mp3_frame_start(data)
            if start is None:
                return True
            data, self.synced = data[start:], True
        if self.size + len(data) > self.limit:
            return False
        self.chunks.append(data)
        self.size += len(data)
        self._wake.set()
        return True

    def end(self) -> None:
        """No more data: the handler ends the response at once, dropping any backlog."""
        self.ended = True
        self._wake.set()

    async def next(self, idle: float) -> bytes | None:
        """The next bytes to send; b"" after `idle` s without any; None once the listener has ended."""
        if not self.chunks and not self.ended:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()
        if self.ended:  # ended early (too slow, or the sink closed): drop the backlog rather than send it
            return None
        if not self.chunks:
            return b""
        data = self.chunks.popleft()
        self.size -= len(data)
        return data


class _Mp3Encoder:
    """The shared ffmpeg MP3 encoder and the thread that passes its output on as it comes."""

    def __init__(
        self,
        ffmpeg: str,
        sample_rate: int,
        bitrate_kbps: int,
        deliver: Callable[[_Mp3Encoder, bytes], None],
        died: Callable[[_Mp3Encoder, str], None],
    ) -> None:
        args = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error"]
        args += ["-f", "s16le", "-ar", str(sample_rate), "-ac", "2", "-i", "pipe:0"]
        args += ["-c:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k", "-f", "mp3"]
        # No Xing or ID3 header (a live stream has no length to announce), and every packet out at once: the
        # default 32 KiB output buffer would add two seconds of delay at 128 kb/s.
        args += ["-write_xing", "0", "-id3v2_version", "0", "-flush_packets", "1", "pipe:1"]
        self.process = FfmpegProcess(args, "the MP3 stream", stdout=True)
        self.stopping = False
        self._deliver = deliver
        self._died = died
        self._thread = threading.Thread(target=self._pump, name="mp3 encoder output", daemon=True)

    def start(self) -> None:
        """Start passing the encoder's output on."""
        self._thread.start()

    def _pump(self) -> None:
        fd = self.process.stdout_fd
        while chunk := os.read(fd, READ_BYTES):
            self._deliver(self, chunk)
        if not self.stopping:
            self._died(self, str(self.process.failure()))
        self.process.close()

    def stop(self) -> None:
        """Close the encoder's input; it exits and its thread ends on their own, without waiting here."""
        self.stopping = True
        self.process.end_input()

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the output thread (which waits for ffmpeg) to finish."""
        self._thread.join(timeout)


class AudioBroadcast:
    """An `AudioSink` that serves the live audio to any number of HTTP listeners.

    Listeners join and leave at any time; one that falls more than `max_lag` seconds behind (a stalled
    connection, a paused tab) is disconnected, so no listener ever holds up the engine or the others.
    `write` never waits: it queues bytes for the event loop and offers them to the MP3 encoder, which drops
    what it cannot take at once. `close` ends every listener's response.

    Mount the streams with `add_routes(app, broadcast)`; they answer 503 while the sink is not open.
    """

    name = "http audio"

    def __init__(
        self,
        *,
        mp3_bitrate: int = 128,
        max_lag: float = 4.0,
        burst: float = 2.0,
        linger: float = 30.0,
        ffmpeg: str | None = None,
    ) -> None:
        """Prepare an idle broadcast; ffmpeg is looked for only when someone asks for MP3.

        Args:
            mp3_bitrate: the MP3 stream's bit rate in kb/s.
            max_lag: seconds of audio a listener may have waiting before it is disconnected.
            burst: seconds of recent MP3 a new listener gets at once, as Icecast's burst-on-connect does:
                Chromium starts playing only after about 2 s of MP3 has arrived, and starts with that much
                in hand instead of at the very edge of the stream. The cost is as much extra delay.
            linger: seconds the encoder keeps running after the last MP3 listener left, so that a page
                that reloads (an OBS browser source) finds the burst ready.
            ffmpeg: the ffmpeg executable; found on PATH by default.
        """
        self.mp3_bitrate = mp3_bitrate
        self.max_lag = max_lag
        self.burst_bytes = int(burst * mp3_bitrate * 125)
        self.linger = linger
        # What an operator watches in /metrics: audio the MP3 encoder could not take at once (a glitch every
        # MP3 listener hears), and listeners cut off for falling more than `max_lag` behind.
        self.dropped_seconds = 0.0
        self.too_slow = 0
        self._ffmpeg = ffmpeg
        # Shared by the engine's thread and the event loop; held only for quick, non-blocking steps.
        self._lock = threading.Lock()
        self._rate: int | None = None  # set while open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wav_listeners = 0
        self._encoder: _Mp3Encoder | None = None
        self._listeners: set[_Listener] = set()  # event loop only
        self._recent: deque[bytes] = deque()  # the last `burst` seconds of MP3, event loop only
        self._recent_size = 0
        self._linger: asyncio.TimerHandle | None = None

    @property
    def listeners(self) -> int:
        """How many clients are connected now."""
        return len(self._listeners)

    @property
    def encoding(self) -> bool:
        """Whether the shared MP3 encoder runs (while someone listens to MP3, and `linger` s after)."""
        return self._encoder is not None

    # The engine's side: called from the sink's thread.

    def open(self, sample_rate: int) -> None:
        """Start accepting listeners at this sample rate."""
        with self._lock:
            self._rate = sample_rate

    def write(self, block: np.ndarray) -> None:
        """Pass one block to the WAV listeners and the MP3 encoder; never waits."""
        data = pcm_bytes(block)
        with self._lock:  # also keeps `_stop_encoder` from closing the pipe under this write
            loop, wav, encoder, rate = self._loop, self._wav_listeners > 0, self._encoder, self._rate
            if encoder is not None and rate is not None:
                # A dead encoder is reported by its output thread, which also ends the MP3 listeners.
                with contextlib.suppress(FfmpegError):
                    dropped = len(data) - encoder.process.offer(data)
                    if dropped:
                        self.dropped_seconds += dropped / (len(data) // len(block)) / rate
        if wav and loop is not None:
            self._post(loop, "wav", data)

    def close(self) -> None:
        """Stop the encoder and end every listener's response; safe to repeat."""
        with self._lock:
            self._rate = None
            loop, encoder, self._encoder = self._loop, self._encoder, None
        if encoder is not None:
            encoder.stop()
            encoder.join()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone, and its listeners with it
                loop.call_soon_threadsafe(self.hang_up)

    def _post(
        self, loop: asyncio.AbstractEventLoop, kind: Kind, data: bytes, encoder: _Mp3Encoder | None = None
    ) -> None:
        """Hand bytes from a worker thread to the listeners, on the event loop: this module's one seam."""
        try:
            loop.call_soon_threadsafe(self._fan_out, kind, data, encoder)
        except RuntimeError:  # the loop was closed: nobody is listening any more
            with self._lock:
                if self._loop is loop:
                    self._loop = None

    # The web side: everything below runs on the event loop.

    async def serve(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        """The aiohttp handler body for one listener of `kind`: streams until either side ends."""
        rate = self._rate
        if rate is None:
            raise web.HTTPServiceUnavailable(text="the concert's audio is not playing right now\n")
        headers = {"Content-Type": CONTENT_TYPES[kind], **NO_CACHE}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        listener = self._join(kind, rate)
        listener.transport = request.transport
        response = web.StreamResponse(headers=headers)
        try:
            await response.prepare(request)
            if kind == "wav":
                await response.write(wav_header(rate))
            while (chunk := await listener.next(IDLE_CHECK)) is not None:
                if chunk:
                    await response.write(chunk)
                elif request.transport is None or request.transport.is_closing():
                    break  # it left while no audio flowed, so no write could notice
        except ConnectionResetError:
            pass  # the listener went away: the usual end of a live stream
        finally:
            self._leave(listener)
        return response

    def _join(self, kind: Kind, rate: int) -> _Listener:
        if kind == "wav":
            limit = int(self.max_lag * rate * 4)
        else:  # the burst arrives all at once, on top of the lag allowed
            limit = int(self.max_lag * self.mp3_bitrate * 125) + self.burst_bytes
        listener = _Listener(kind, limit)
        if kind == "mp3":
            self._start_encoder(rate)
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            for chunk in self._recent:
                listener.push(chunk)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._wav_listeners += kind == "wav"
        self._listeners.add(listener)
        log.info("%s listener joined; %d now", kind, len(self._listeners))
        return listener

    def _leave(self, listener: _Listener) -> None:
        if listener not in self._listeners:
            return
        self._listeners.remove(listener)
        listener.end()
        with self._lock:
            self._wav_listeners -= listener.kind == "wav"
        if listener.kind == "mp3" and not any(other.kind == "mp3" for other in self._listeners):
            if self.linger > 0 and self._encoder is not None:
                self._linger = asyncio.get_running_loop().call_later(self.linger, self._stop_encoder)
            else:
                self._stop_encoder()
        log.info("%s listener left; %d now", listener.kind, len(self._listeners))

    def _start_encoder(self, rate: int) -> None:
        if self._encoder is not None:
            return
        try:
            ffmpeg = self._ffmpeg or find_ffmpeg()
            loop = asyncio.get_running_loop()
            encoder = _Mp3Encoder(
                ffmpeg,
                rate,
                self.mp3_bitrate,
                deliver=lambda enc, chunk: self._post(loop, "mp3", chunk, enc),
                died=lambda enc, why: self._post_death(loop, enc, why),
            )
        except Exception as exc:  # ConfigError, FfmpegError: say why, and point to the fallback
            log.error("cannot serve MP3: %s", exc)
            raise web.HTTPServiceUnavailable(text=f"no MP3 stream ({exc}); try /stream.wav\n") from None
        with self._lock:
            self._encoder = encoder
        self._forget_recent()
        encoder.start()

    def _stop_encoder(self) -> None:
        self._linger = None
        with self._lock:
            encoder, self._encoder = self._encoder, None
            if encoder is not None:
                encoder.stop()
        self._forget_recent()

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_size = 0

    def _post_death(self, loop: asyncio.AbstractEventLoop, encoder: _Mp3Encoder, why: str) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._encoder_died, encoder, why)

    def _encoder_died(self, encoder: _Mp3Encoder, why: str) -> None:
        with self._lock:
            if self._encoder is not encoder:
                return  # already replaced or stopped on purpose
            self._encoder = None
        log.error("the MP3 encoder died, ending its listeners: %s", why)
        for listener in [x for x in self._listeners if x.kind == "mp3"]:
            self._leave(listener)

    def _fan_out(self, kind: Kind, data: bytes, encoder: _Mp3Encoder | None) -> None:
        if encoder is not None and encoder is not self._encoder:
            return  # late output of an encoder stopped since; its listeners are gone
        if kind == "mp3":
            self._recent.append(data)
            self._recent_size += len(data)
            while self._recent_size - len(self._recent[0]) >= self.burst_bytes:
                self._recent_size -= len(self._recent.popleft())
        for listener in [x for x in self._listeners if x.kind == kind]:
            if not listener.push(data):
                log.warning("a %s listener fell %g s behind; disconnecting it", kind, self.max_lag)
                self.too_slow += 1
                self._leave(listener)
                if listener.transport is not None:
                    # Its handler waits for the socket to drain, which a client that stopped reading never
                    # lets happen; cutting the connection ends that wait and frees the buffers.
                    listener.transport.abort()

    def hang_up(self) -> None:
        """End every listener's response now (on the event loop); new listeners may still join."""
        for listener in list(self._listeners):
            self._leave(listener)


def add_routes(app: web.Application, broadcast: AudioBroadcast, prefix: str = "") -> None:
    """Serve `broadcast` at `GET {prefix}/stream.mp3` and `GET {prefix}/stream.wav` in `app`.

    Also ends the streams when the app shuts down; closing the sink itself is left to its engine.
    """

    async def mp3(request: web.Request) -> web.StreamResponse:
        return await broadcast.serve(request, "mp3")

    async def wav(request: web.Request) -> web.StreamResponse:
        return await broadcast.serve(request, "wav")

    async def hang_up(_: web.Application) -> None:
        # Streams never end on their own; without this, shutdown would wait its full timeout for them.
        broadcast.hang_up()

    app.router.add_get(f"{prefix}/stream.mp3", mp3)
    app.router.add_get(f"{prefix}/stream.wav", wav)
    app.on_shutdown.append(hang_up)
