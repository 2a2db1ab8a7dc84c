"""Wires the generator to the live engine: one thread samples pieces and streams their events into feeds.

This is the only place where a generator's token stream meets the synth's engine. The composer is not
thread-safe, so every piece is sampled on the one worker thread, in the order they were asked for.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from generator.events import piece_events
from generator.sampling import Composer, PieceRequest
from generator.steer import SteerEvent, Steering, steered_performance
from synth.feed import EventFeed, FeedCancelled

log = logging.getLogger(__name__)


@dataclass
class LivePiece:
    """A piece on its way: what was asked, the feed the engine plays from, and how generation went."""

    id: str
    request: PieceRequest
    feed: EventFeed
    requested_at: float
    tokens: list[int] = field(default_factory=list)  # kept so the piece can be stored and replayed exactly
    generation_seconds: float = 0.0  # time spent sampling, not waiting for playback to catch up
    music_seconds: float = 0.0  # how much of the piece has been generated
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    replay: tuple[int, ...] | None = None  # stored tokens to play instead of sampling
    # Chat's steers as they land (generator.steer), or a stored piece's, landing again where they did.
    steering: Steering = field(default_factory=Steering)

    @property
    def complete(self) -> bool:
        """Generated to the end (not cut short by a skip or an error): its tokens are the whole piece."""
        return self.finished.is_set() and self.error is None and self.feed.done and not self.feed.cancelled

    @property
    def generation_rtf(self) -> float:
        """Seconds of music generated per second of sampling."""
        return self.music_seconds / self.generation_seconds if self.generation_seconds > 0 else 0.0


class GenerationWorker:
    """A thread that samples queued pieces one after another into their feeds."""

    def __init__(
        self,
        composer: Composer,
        lookahead_seconds: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        composer: the loaded model; used only from the worker thread.
        lookahead_seconds: how far generation runs ahead of playback before it waits.
        clock: seconds, monotonic, the same clock as the engine's.

        Torch's threads are the process's, set once by the command (generator.threads); this thread follows.
        """
        self.composer = composer
        self.lookahead = lookahead_seconds
        self.clock = clock
        self._jobs: queue.Queue[LivePiece | None] = queue.Queue()
        self._steering: Steering | None = None
        self._thread = threading.Thread(target=self._run, name="generator", daemon=True)
        self._thread.start()

    def submit(
        self,
        piece_id: str,
        request: PieceRequest,
        requested_at: float | None = None,
        tokens: Sequence[int] | None = None,
        steers: Sequence[SteerEvent] = (),
    ) -> LivePiece:
        """Queue a piece for sampling, or for replaying stored `tokens` (and the `steers` they were played
        with); its feed can be played at once."""
        piece = LivePiece(
            piece_id, request, EventFeed(self.lookahead), self.clock() if requested_at is None else requested_at
        )
        piece.replay = tuple(tokens) if tokens else None
        piece.steering = Steering(steers)
        self._jobs.put(piece)
        return piece

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (piece := self._jobs.get()) is not None:
            if piece.feed.cancelled:
                piece.finished.set()
                continue
            try:
                self._generate(piece)
            except FeedCancelled:
                pass
            except Exception as exc:
                log.exception("generating %s failed; it ends where it got to", piece.id)
                piece.error = exc
                piece.feed.fail(exc)
            finally:
                piece.finished.set()

    def _generate(self, piece: LivePiece) -> None:
        request = piece.request
        # A replay plays the stored tokens: the same notes even if the model has been retrained since.
        self._steering = piece.steering  # the one piece this thread samples now
        source = iter(piece.replay) if piece.replay is not None else self._sample(request)
        tokens = self._timed(piece, source)
        # Played as its plan shapes it: the same dynamics and ritardando as its download and its replays, and
        # its steers' tempo and loudness (those landing live join the list as the sampler reaches them).
        steering = piece.steering
        steers = steering.landed if piece.replay is None else list(steering.given)
        played = steered_performance(self.composer.plan(request), request.tempo, request.programs(), steers)
        programs, heard = request.programs(), request.sound_programs()
        for batch in piece_events(self.composer.vocab, tokens, request.tempo, programs, played, heard):
            piece.music_seconds = batch.until
            piece.feed.put(batch.until, batch.events, batch.done)

    def _sample(self, request: PieceRequest) -> Iterator[int]:
        """The piece's tokens as they are sampled; bot.concert.remote reads them from workers instead."""
        return self.composer.stream(request, steering=self._steering)

    def _timed(self, piece: LivePiece, tokens: Iterator[int]) -> Iterator[int]:
        # Only the time inside the model counts toward the real-time factor, not the waits for playback.
        while True:
            started = time.perf_counter()
            token = next(tokens, None)
            piece.generation_seconds += time.perf_counter() - started
            if token is None:
                return
            piece.tokens.append(token)
            yield token
