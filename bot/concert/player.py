"""A live session put together from the settings: model, worker, synth, engine and outputs.

`concertbot play` uses it for one piece; the conductor uses it for a whole concert.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bot.concert.batchloop import SourcedWorker, TokenSource
from bot.concert.live import GenerationWorker, LivePiece
from config.settings import Settings
from generator.model import LoadedModel
from generator.sampling import Composer, PieceRequest
from generator.steer import SteerEvent
from synth.engine import EngineEvent, LiveEngine
from synth.loudness import leveler_for
from synth.outputs import DeviceSink, FileSink, sound_device_problem
from synth.render import FluidSynthRenderer
from synth.sinks import AudioSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaySummary:
    """How a piece went, as `concertbot play` reports it."""

    time_to_first_audio_ms: float | None
    underruns: int
    underrun_seconds: float
    generation_rtf: float
    seconds_played: float
    late_blocks: int
    outputs: dict[str, dict[str, float | int | str]]


def build_sinks(
    settings: Settings,
    record: Path | None = None,
    device: str | None = None,
    push_url: str | None = None,
    warn: Callable[[str], None] = log.warning,
) -> list[AudioSink]:
    """The outputs the settings (or the command line, which wins) ask for; a missing sound card is skipped."""
    out = settings.outputs
    sinks: list[AudioSink] = []
    device = device or out.device
    if device != "off":
        name: str | int | None = None if device == "auto" else (int(device) if device.isdigit() else device)
        problem = sound_device_problem(name)
        if problem is None:
            sinks.append(DeviceSink(name))
        elif device == "auto":
            warn(f"no sound device ({problem}); playing to the other outputs only")
        else:
            # A device the streamer named is worth retrying: it may be plugged in later.
            warn(f"sound device {device!r} is not available now ({problem}); will keep trying")
            sinks.append(DeviceSink(name))
    if record := record or out.record:
        sinks.append(FileSink(Path(record)))
    url = push_url or (out.push_url.get_secret_value() if out.push_url else None)
    if url:
        from synth.ffmpeg import FfmpegPush

        sinks.append(FfmpegPush(url))
    return sinks


class LiveSession:
    """Everything that plays: open with `with`, then `request` pieces; events arrive at `on_event`."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        sinks: list[AudioSink],
        realtime: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[EngineEvent], None] | None = None,
        source: TokenSource | None = None,
    ) -> None:
        """`source`: where new pieces' tokens come from (bot.concert.batchloop.BatchLoop, the generator every
        channel of a deployment shares); None samples them here, one at a time. With `generation.remote`,
        `concertbot worker`s sample them whatever `source` says."""
        self.settings = settings
        self.clock = clock
        self.events: collections.deque[EngineEvent] = collections.deque(maxlen=1000)
        self.listener = on_event
        self._changed = threading.Condition()
        e = settings.engine
        self.renderer = FluidSynthRenderer.from_settings(settings.synth)
        leveler = leveler_for(settings.loudness, settings.synth.sample_rate)
        self.engine = LiveEngine(
            self.renderer,
            sinks,
            block_frames=e.block_frames,
            realtime=realtime,
            max_ahead_seconds=e.max_ahead_seconds,
            prebuffer_seconds=e.prebuffer_seconds,
            tail_seconds=e.tail_seconds,
            gap_seconds=e.gap_seconds,
            hold_seconds=e.hold_seconds,
            leveler=leveler,
            clock=clock,
            on_event=self._on_event,
        )
        if settings.generation.remote:
            from bot.concert.remote import remote_worker  # sampled by `concertbot worker`s over Redis

            composer = Composer(loaded)
            self.worker: GenerationWorker = remote_worker(settings, composer, e.lookahead_seconds, clock)
        elif source is not None:
            self.worker = SourcedWorker(Composer(loaded), source, e.lookahead_seconds, clock)
        else:
            self.worker = GenerationWorker(Composer(loaded), e.lookahead_seconds, clock=clock)

    def __enter__(self) -> Self:
        log.info("soundfont: %s (%s)", self.renderer.soundfont.path, self.renderer.soundfont.origin)
        self.engine.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.engine.close()
        self.worker.close()
        self.renderer.close()

    def request(
        self,
        piece_id: str,
        request: PieceRequest,
        requested_at: float | None = None,
        tokens: Sequence[int] | None = None,
        steers: Sequence[SteerEvent] = (),
    ) -> LivePiece:
        """Start generating a piece (or replaying its stored `tokens`, with its `steers`) and queue it after
        what is queued."""
        piece = self.worker.submit(piece_id, request, requested_at, tokens, steers)
        self.engine.play(piece_id, piece.feed)
        return piece

    def wait_for(
        self, piece_id: str, kinds: tuple[str, ...], timeout: float | None = None
    ) -> EngineEvent | None:
        """Block until the engine reports one of `kinds` for the piece; None on timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._find(piece_id, kinds) is not None, timeout)
            return self._find(piece_id, kinds)

    def summary(self, piece: LivePiece) -> PlaySummary:
        start = self._find(piece.id, ("start",))
        end = self._find(piece.id, ("end", "skip", "error"))
        tail = self.settings.engine.tail_seconds if end is not None and end.kind == "end" else 0.0
        played = 0.0
        if start is not None:
            played = (end.at if end is not None else self.clock()) - start.at + tail
        stats = self.engine.stats
        return PlaySummary(
            time_to_first_audio_ms=None if start is None else round((start.at - piece.requested_at) * 1000, 1),
            underruns=sum(1 for e in self.events if e.piece_id == piece.id and e.kind == "underrun"),
            underrun_seconds=round(
                sum(e.length for e in self.events if e.piece_id == piece.id and e.kind == "underrun"), 3
            ),
            generation_rtf=round(piece.generation_rtf, 1),
            seconds_played=round(max(0.0, played), 2),
            late_blocks=stats.late_blocks,
            outputs={
                r.sink.name: {
                    "seconds_written": round(r.stats.written_frames / self.engine.rate, 2),
                    "failures": r.stats.failures,
                    "dropped_blocks": r.stats.dropped_blocks,
                    "last_error": r.stats.last_error,
                }
                for r in self.engine.runners
            },
        )

    def _find(self, piece_id: str, kinds: tuple[str, ...]) -> EngineEvent | None:
        return next((e for e in self.events if e.piece_id == piece_id and e.kind in kinds), None)

    def _on_event(self, event: EngineEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        if self.listener is not None:
            self.listener(event)
