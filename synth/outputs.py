"""Running the outputs: each sink in a thread of its own, behind a bounded queue, retried with backoff.

A sink that fails (no sound card, a full disk, ffmpeg gone) is reported and retried; it never holds up the
engine or the other sinks, because the engine only ever drops a block into each sink's queue.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import ConcertbotError
from synth.sinks import AudioSink

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class SinkStats:
    written_frames: int = 0
    dropped_blocks: int = 0
    failures: int = 0
    last_error: str = ""
    retry_delay: float = 0.0  # the wait before the next reopen while failing; 0 once the output works


@dataclass(frozen=True)
class OutputStatus:
    """One output as `/metrics` and summaries show it: plain data, read from any thread."""

    name: str
    state: str  # "starting", "ok", "failing" or "stopped"
    failures: int
    dropped_blocks: int
    written_seconds: float
    retry_delay: float


class SinkRunner:
    """Feeds one sink from its own thread; `submit` never blocks in live mode.

    A failing sink is retried with exponential backoff, and logged once when it starts failing and once when it
    works again, however often it is retried in between: a full disk must not fill the log as well.
    """

    def __init__(
        self,
        sink: AudioSink,
        sample_rate: int,
        max_queue_blocks: int = 200,
        lossless: bool = False,
        backoff_seconds: tuple[float, float] = (1.0, 60.0),
        healthy_seconds: float = 10.0,
    ) -> None:
        """Prepare (but do not start) the thread for `sink`.

        Args:
            sink: the output.
            sample_rate: frames per second handed to `sink.open`.
            max_queue_blocks: blocks waiting before the oldest is dropped (live) or `submit` waits (lossless).
            lossless: wait for the sink instead of dropping blocks: for rendering faster than real time.
            backoff_seconds: first and longest wait before reopening a failed sink; it doubles in between.
            healthy_seconds: audio a reopened sink must take before it counts as working again (and the
                backoff starts over): an ffmpeg that cannot connect takes audio into its pipe for a moment
                before it exits, and a full disk takes a block whenever a page of it is freed.
        """
        self.sink = sink
        self.rate = sample_rate
        self.lossless = lossless
        self.backoff = backoff_seconds
        self.healthy_frames = round(healthy_seconds * sample_rate)
        self.stats = SinkStats()
        self.state = "starting"
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue_blocks)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink {sink.name}", daemon=True)
        self.is_open = False
        self._frames_since_open = 0
        self._failed_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def submit(self, block: np.ndarray) -> None:
        if self.lossless:
            self._queue.put(block)
            return
        while True:
            try:
                self._queue.put_nowait(block)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.stats.dropped_blocks += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the sink and end the thread."""
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def status(self) -> OutputStatus:
        s = self.stats
        seconds = s.written_frames / self.rate
        return OutputStatus(self.sink.name, self.state, s.failures, s.dropped_blocks, seconds, s.retry_delay)

    def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            if not self.is_open:
                if self._stopping.is_set():
                    break
                try:
                    self.sink.open(self.rate)
                    self.is_open = True
                    self._frames_since_open = 0
                    if self.state == "starting":
                        self.state = "ok"
                    self._discard_backlog()  # a live output resumes with the music as it is now
                except Exception as exc:
                    self._failed("could not open", exc, delay)
                    if self._stopping.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff[1])
                    continue
            item = self._queue.get()
            if item is _STOP:
                break
            try:
                self.sink.write(item)
            except Exception as exc:
                self._failed("failed", exc, delay)
                self.is_open = False
                if self._stopping.wait(delay):
                    break
                delay = min(delay * 2, self.backoff[1])
                continue
            self.stats.written_frames += len(item)
            self._frames_since_open += len(item)
            if self.state != "ok" and self._frames_since_open >= self.healthy_frames:
                # Only a sink that has kept working resets the backoff: one that opens and then fails at once
                # (a full disk, an RTMP server that refuses) waits longer each time.
                delay = self.backoff[0]
                self._recovered()
        self._close(quiet=False)
        self.state = "stopped"

    def _failed(self, what: str, exc: Exception, delay: float) -> None:
        self.stats.failures += 1
        self.stats.retry_delay = delay
        error = f"{type(exc).__name__}: {exc}"
        if self.state != "failing":
            self._failed_at = time.monotonic()
            # Our own errors and the system's are expected here and say enough in one line; anything else is a
            # bug, and its traceback is worth showing, once.
            expected = isinstance(exc, (OSError, ConcertbotError))
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "output %s %s (%s); retrying with backoff (%g s, doubling up to %g s) until it works",
                self.sink.name,
                what,
                error,
                delay,
                self.backoff[1],
                exc_info=None if expected else exc,
            )
        elif error != self.stats.last_error:
            log.debug("output %s still failing: %s", self.sink.name, error)
        self.stats.last_error = error
        self.state = "failing"
        self._close(quiet=True)

    def _recovered(self) -> None:
        if self.state == "failing":
            log.info(
                "output %s works again after %d failures over %.0f s",
                self.sink.name,
                self.stats.failures,
                time.monotonic() - self._failed_at,
            )
        self.state = "ok"
        self.stats.retry_delay = 0.0

    def _close(self, quiet: bool) -> None:
        try:
            self.sink.close()
        except Exception as exc:
            if quiet:  # closing what just failed fails for the same reason (a file that cannot be flushed)
                log.debug("output %s did not close cleanly: %s", self.sink.name, exc)
            else:
                log.exception("output %s did not close cleanly", self.sink.name)

    def _discard_backlog(self) -> None:
        if self.lossless:
            return
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put(_STOP)
                return
            self.stats.dropped_blocks += 1


class FileSink:
    """Records the whole concert: WAV through the standard library, FLAC through soundfile."""

    keep_seconds = 1.0  # what a file must hold to be kept when the recording is reopened after a failure

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in (".wav", ".flac"):
            raise ValueError(f"cannot record to '{path}': use a .wav or .flac file name")
        self.path = path
        self.name = f"recording {path}"
        self._number = 0  # of the file being written: 1 is `path`, then `path-2`, `path-3`...
        self._frames = 0  # written to that file
        self._rate = 0
        self._out: Any = None

    @property
    def current_path(self) -> Path:
        """The file the recording goes to now (or went to last)."""
        return self.path if self._number <= 1 else self.path.with_stem(f"{self.path.stem}-{self._number}")

    def open(self, sample_rate: int) -> None:
        # A reopened recording goes to a new file rather than overwriting what was saved before the failure;
        # but one that holds next to nothing (a disk still full, that took a block and no more) is reused, so
        # that retrying does not leave a trail of empty files.
        if self._number == 0 or self._frames >= self.keep_seconds * self._rate:
            self._number += 1
        self._frames = 0
        self._rate = sample_rate
        path = self.current_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".flac":
            import soundfile

            self._out = soundfile.SoundFile(path, "w", samplerate=sample_rate, channels=2, subtype="PCM_16")
        else:
            # wave patches the header after every write, so a recording cut off by a crash stays playable.
            out = wave.open(str(path), "wb")  # noqa: SIM115 (kept open for the whole concert)
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            self._out = out

    def write(self, block: np.ndarray) -> None:
        if isinstance(self._out, wave.Wave_write):
            self._out.writeframes(block.astype("<i2", copy=False).tobytes())
        else:
            self._out.write(block)
        self._frames += len(block)

    def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


class DeviceSink:
    """The sound card through PortAudio: what OBS captures on a streamer's desktop."""

    max_queue_seconds = 0.5  # the card keeps its own time: a short queue keeps the latency short

    def __init__(self, device: str | int | None = None) -> None:
        self.device = device
        self.name = f"sound device {device if device is not None else '(default)'}"
        self._stream: Any = None

    def open(self, sample_rate: int) -> None:
        sd = _sounddevice()
        self._stream = sd.RawOutputStream(samplerate=sample_rate, channels=2, dtype="int16", device=self.device)
        self._stream.start()

    def write(self, block: np.ndarray) -> None:
        self._stream.write(np.ascontiguousarray(block).tobytes())

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(Exception):
                stream.stop()
            stream.close()


def sound_device_problem(device: str | int | None = None) -> str | None:
    """Why the sound device cannot be used (None when it can): checked once at start-up."""
    try:
        sd = _sounddevice()
        sd.check_output_settings(device=device, channels=2, dtype="int16")
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the wheel needs the system's PortAudio
        raise RuntimeError(f"{exc}; install it with `apt install libportaudio2`") from None
    return sounddevice


def wait_until(predicate: Any, timeout: float, poll: float = 0.01) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; for shutdown paths and tests."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
