"""A continuous test tone, and a thread that writes it into a sink as the engine would."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np

from synth.sinks import AudioSink

RATE = 44100
BLOCK = 512
TONE_HZ = 440.0


def tone(start: int, frames: int, hz: float = TONE_HZ) -> np.ndarray:
    """Frames [start, start + frames) of a continuous stereo sine at about -12 dBFS."""
    t = np.arange(start, start + frames) / RATE
    mono = np.round(8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return np.stack([mono, mono], axis=1)


class ToneWriter(threading.Thread):
    """The engine's side in miniature: writes tone blocks into a sink from a thread of its own."""

    def __init__(self, sink: AudioSink, speed: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.sink = sink
        self.speed = speed  # multiples of real time
        self.frames = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self._halt.is_set():
                block = tone(self.frames, BLOCK)
                self.sink.write(block)
                self.frames += BLOCK
                self._halt.wait(start + self.frames / RATE / self.speed - time.monotonic())
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@contextlib.contextmanager
def writing(sink: AudioSink, speed: float = 1.0) -> Iterator[ToneWriter]:
    """Write a tone into an open sink for the duration of the block."""
    writer = ToneWriter(sink, speed)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()
    assert writer.error is None, f"write failed: {writer.error!r}"
