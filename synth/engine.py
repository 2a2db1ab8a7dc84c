"""The live engine: plays pieces block by block in real time, events at their exact sample offsets.

One render thread owns the synth. Each block it takes the events that fall inside it from the current
piece's `EventFeed`, renders them with FluidSynth at their exact frames (the same frames the offline render
uses, so a live piece equals its offline render), levels the block and hands it to every output. When the
generator has not yet delivered a block's events, the engine holds the sounding notes instead of rendering
ahead blindly, and counts an underrun with its length.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import numpy as np

from synth.feed import EventFeed
from synth.loudness import Leveler
from synth.outputs import SinkRunner
from synth.render import FluidSynthRenderer
from synth.sinks import AudioSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineEvent:
    """Something a listener (the conductor, the overlay) wants to know about, as plain data.

    kind is "start", "end" (the last note released), "skip", "underrun" or "error"; `at` is the clock time
    at which the event's first sample is due at the outputs; `seconds` is the position in the piece, and
    for an underrun `length` is how long playback waited.
    """

    kind: str
    piece_id: str
    at: float
    frame: int  # the output frame the event happens at, counted from the engine's start
    seconds: float = 0.0
    length: float = 0.0


@dataclass
class EngineStats:
    frames: int = 0  # frames handed to the outputs since start
    underruns: int = 0
    underrun_seconds: float = 0.0
    late_blocks: int = 0  # blocks rendered after they were due: the outputs may have glitched
    render_seconds: float = 0.0  # time spent rendering and levelling
    pieces: int = 0


@dataclass
class _Piece:
    id: str
    feed: EventFeed
    frame: int = 0  # frames of the piece rendered so far
    stalled: int = 0  # output frames spent waiting for the generator in the current underrun


@dataclass
class _Control:
    skip: bool = False
    paused: bool = False
    pending: collections.deque[_Piece] = field(default_factory=collections.deque)


class LiveEngine:
    """Plays queued pieces to the outputs, in real time or (for files and benchmarks) as fast as it can."""

    def __init__(
        self,
        renderer: FluidSynthRenderer,
        sinks: Iterable[AudioSink] = (),
        *,
        block_frames: int = 2048,
        realtime: bool = True,
        max_ahead_seconds: float = 0.1,
        prebuffer_seconds: float = 0.25,
        tail_seconds: float = 1.5,
        gap_seconds: float = 0.5,
        hold_seconds: float = 0.5,
        leveler: Leveler | None = None,
        sink_backoff: tuple[float, float] = (1.0, 60.0),
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[EngineEvent], None] | None = None,
    ) -> None:
        """Set up the engine; `with engine:` starts its threads.

        Args:
            renderer: the synth; the engine owns it while running.
            sinks: outputs, each run in its own thread.
            block_frames: frames rendered per block; one block is also how fast a skip is heard.
            realtime: pace blocks by `clock`; False renders as fast as generation and the outputs allow.
            max_ahead_seconds: how far ahead of its due time a block is rendered (the outputs' buffer).
            prebuffer_seconds: music a piece must have generated before it starts, against early underruns.
            tail_seconds: after the last note-off, how long releases and reverb ring out.
            gap_seconds: silence between one piece's tail and the next piece.
            hold_seconds: in an underrun, how long sounding notes are held before they are released.
            leveler: loudness control applied to every block; None leaves the synth's output untouched.
            sink_backoff: first and longest wait before a failed output is opened again.
            clock: seconds, monotonic; injected so tests and timings agree on one clock.
            on_event: called from the render thread for every EngineEvent; must return quickly.
        """
        self.renderer = renderer
        self.rate = renderer.sample_rate
        self.block = block_frames
        self.realtime = realtime
        self.max_ahead = max_ahead_seconds
        self.prebuffer = round(prebuffer_seconds * self.rate)
        self.tail = round(tail_seconds * self.rate)
        self.gap = round(gap_seconds * self.rate)
        self.hold = round(hold_seconds * self.rate)
        self.leveler = leveler
        self.clock = clock
        self.on_event = on_event
        self.runners = [
            SinkRunner(
                s,
                self.rate,
                max_queue_blocks=self._queue_blocks(s),
                lossless=not realtime,
                backoff_seconds=sink_backoff,
            )
            for s in sinks
        ]
        self.stats = EngineStats()
        self.current: _Piece | None = None
        self._tail_left = 0
        self._gap_left = 0
        self._control = _Control()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)
        self._t0 = 0.0
        self._block_pos = 0  # frames of the block being rendered that are already done
        self._muted = False  # paused, and the sounding notes already cut

    def _queue_blocks(self, sink: AudioSink) -> int:
        # A sink that plays in real time by its own clock (a sound card) keeps a short queue: if its clock runs
        # slower than ours, old blocks are dropped instead of the latency growing for hours.
        seconds = getattr(sink, "max_queue_seconds", None)
        return 200 if seconds is None else max(2, math.ceil(seconds * self.rate / self.block))

    # Lifecycle.

    def __enter__(self) -> Self:
        for runner in self.runners:
            runner.start()
        self._t0 = self.clock()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop playing, cancel what is queued, flush and close every output."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for piece in [*self._control.pending, *([self.current] if self.current else [])]:
                piece.feed.cancel()
        for runner in self.runners:
            runner.stop()

    # Control, from any thread.

    def play(self, piece_id: str, feed: EventFeed) -> None:
        """Queue a piece; it starts once the one before it has ended and its prebuffer is generated."""
        with self._lock:
            self._control.pending.append(_Piece(piece_id, feed))
        self._wake.set()

    def skip(self) -> None:
        """Cut the current piece: silent within one block, no note left hanging."""
        with self._lock:
            self._control.skip = True
        self._wake.set()

    def pause(self) -> None:
        with self._lock:
            self._control.paused = True
        self._wake.set()

    def resume(self) -> None:
        with self._lock:
            self._control.paused = False
        self._wake.set()

    def busy(self) -> bool:
        """Whether a piece is playing, ringing out or waiting to play."""
        with self._lock:
            return bool(self.current or self._control.pending or self._tail_left or self._gap_left)

    def position(self, piece_id: str) -> float | None:
        """Seconds of `piece_id` rendered so far: stands still while paused or waiting; None if not playing."""
        piece = self.current
        return piece.frame / self.rate if piece is not None and piece.id == piece_id else None

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._control.paused

    def pending(self) -> int:
        """Pieces queued behind the current one."""
        with self._lock:
            return len(self._control.pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy():
            if deadline is not None and time.monotonic() > deadline:
                return False
            if not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return True

    def due(self, frame: int) -> float:
        """Clock time at which output frame `frame` is due to sound."""
        return self._t0 + frame / self.rate

    # The render thread.

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.realtime:
                wait = self.due(self.stats.frames) - self.max_ahead - self.clock()
                if wait > 0:
                    self._wake.wait(wait)
                    self._wake.clear()
                    continue
            elif not self.busy():
                # Faster than real time there is no clock to keep: with nothing to play, wait for work.
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            started = time.perf_counter()
            if self.realtime and self.clock() > self.due(self.stats.frames):
                self.stats.late_blocks += 1
            try:
                block = self._render_block()
            except Exception:
                log.exception("rendering failed; the piece is cut and the concert goes on")
                block = self._cut(error=True)
            if self.leveler is not None:
                self.renderer.level(block, self.leveler)
            self.stats.render_seconds += time.perf_counter() - started
            for runner in self.runners:
                runner.submit(block)
            self.stats.frames += len(block)

    def _render_block(self) -> np.ndarray:
        self._block_pos = 0
        with self._lock:
            skip, self._control.skip = self._control.skip, False
            paused = self._control.paused
        if skip and self.current is not None:
            return self._cut()
        if paused:
            # The piece keeps its place; what was sounding stops now and is not picked up again on resume.
            if self._muted:
                return np.zeros((self.block, 2), dtype=np.int16)
            self._muted = True
            self.renderer.cut()
            return self._fade_out(self.renderer.frames(self.block))
        self._muted = False
        parts: list[np.ndarray] = []
        while self._block_pos < self.block:
            part = self._step(self.block - self._block_pos)
            parts.append(part)
            self._block_pos += len(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _step(self, need: int) -> np.ndarray:
        """Render at most `need` frames of whatever state the engine is in; at least one frame."""
        if self.current is not None:
            return self._play_piece(self.current, need)
        if self._tail_left:
            n = min(need, self._tail_left)
            self._tail_left -= n
            return self.renderer.frames(n)
        if self._gap_left:
            n = min(need, self._gap_left)
            self._gap_left -= n
            return np.zeros((n, 2), dtype=np.int16)
        if self._start_next():
            return np.zeros((0, 2), dtype=np.int16)
        return np.zeros((need, 2), dtype=np.int16)

    def _start_next(self) -> bool:
        with self._lock:
            while self._control.pending and self._control.pending[0].feed.cancelled:
                self._control.pending.popleft()
            if not self._control.pending:
                return False
            piece = self._control.pending[0]
            if not self.realtime:
                piece.feed.wait_ready(self.prebuffer, self.rate)
            elif not piece.feed.ready(self.prebuffer, self.rate):
                return False
            self._control.pending.popleft()
            # The offline render starts from a freshly reset synth; so does every live piece.
            self.renderer.reset()
            self.current = piece
        self.stats.pieces += 1
        self._emit("start", piece, 0)
        return True

    def _play_piece(self, piece: _Piece, need: int) -> np.ndarray:
        feed = piece.feed
        end = piece.frame + need
        if not feed.ready(end, self.rate):
            if not self.realtime:
                feed.wait_ready(end, self.rate)
            else:
                known = min(end, round(feed.until * self.rate))
                if known <= piece.frame:
                    return self._stall(piece, need)
                end = known
        if piece.stalled:
            self._underrun_over(piece)
        out: list[np.ndarray] = []
        at = piece.frame
        for frame, msg in feed.take(end, self.rate):
            out.append(self.renderer.frames(frame - at))
            at = frame
            self.renderer.play(msg)
        if feed.finished():
            # As the offline render does: release everything right after the last event, then ring out.
            self.renderer.release_all()
            offset, piece.frame = at - piece.frame, at
            self._finish(piece, "end", offset)
            return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int16)
        out.append(self.renderer.frames(end - at))
        piece.frame = end
        feed.played_to(end / self.rate)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _stall(self, piece: _Piece, need: int) -> np.ndarray:
        # Playback waits on a note boundary: sounding notes are held for a moment, then released.
        if piece.stalled < self.hold <= piece.stalled + need:
            self.renderer.release_all()
        piece.stalled += need
        return self.renderer.frames(need)

    def _underrun_over(self, piece: _Piece) -> None:
        length = piece.stalled / self.rate
        self.stats.underruns += 1
        self.stats.underrun_seconds += length
        log.warning(
            "generation fell behind: %s waited %.3f s at %.2f s into the piece",
            piece.id,
            length,
            piece.frame / self.rate,
        )
        self._emit("underrun", piece, 0, length=length)
        piece.stalled = 0

    def _finish(self, piece: _Piece, kind: str, offset: int) -> None:
        self._after_piece(self.tail)
        self._emit(kind, piece, offset)

    def _after_piece(self, tail: int) -> None:
        """What follows a piece: `tail` frames ringing out, then the gap.

        Set before `current` is cleared: `busy()` reads these from other threads and must never catch a
        moment in between when nothing seems to be going on.
        """
        self._tail_left, self._gap_left = tail, self.gap
        self.current = None

    def _cut(self, error: bool = False) -> np.ndarray:
        """Silence within this block: every voice stopped, the block faded to zero, the synth reset."""
        piece = self.current
        self._after_piece(0)
        if piece is not None:
            piece.feed.cancel()
            self._emit("error" if error else "skip", piece, 0)
        self.renderer.cut()
        block = self._fade_out(self.renderer.frames(self.block))
        self.renderer.reset()
        return block

    def _fade_out(self, samples: np.ndarray) -> np.ndarray:
        block = samples.astype(np.float32)
        block *= np.linspace(1.0, 0.0, len(block), dtype=np.float32)[:, None]
        return block.astype(np.int16)

    def _emit(self, kind: str, piece: _Piece, offset: int, length: float = 0.0) -> None:
        """Tell the listener; `offset` counts frames from where the current step begins."""
        frame = self.stats.frames + self._block_pos + offset
        at = self.due(frame) if self.realtime else self.clock()
        event = EngineEvent(kind, piece.id, at, frame, piece.frame / self.rate, length)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("an engine event listener failed")
