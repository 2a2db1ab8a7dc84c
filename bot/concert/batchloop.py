"""One generation loop for every channel of a deployment: their pieces sampled together, one batch a step.

`BatchLoop` is a thread that owns a generator.batch.BatchComposer (continuous batching: a piece joins when
its channel starts it and leaves when it ends or is skipped) and steps every channel's piece that needs tokens
now. A piece sits out the steps while its channel is far enough ahead, so the batch holds only the pieces
playback is waiting for. Each piece keeps its own seeded generator, so its tokens are exactly those
`Composer.stream` samples for its request alone, whatever else is in the batch.

`SourcedWorker` is a channel's generation thread (bot.concert.live.GenerationWorker) whose tokens come from
such a source instead of its own sampler (this loop, or bot.concert.remote's generator workers over Redis):
decoding into events, the feed's look-ahead, replays and steers stay the channel's own. A steer asked in chat
reaches the piece through its `Steering`, which the loop's sampler reads as it reaches each bar line, as the
one-at-a-time sampler does.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Self

from bot.concert.live import GenerationWorker, LivePiece
from generator.batch import BatchComposer, BatchPiece
from generator.sampling import Composer, PieceRequest
from generator.steer import Steering

log = logging.getLogger(__name__)

HOLD_TOKENS = 32  # a piece sits out the batch's steps while this many of its tokens wait for its channel
FLUSH_SECONDS = 0.05  # tokens go to the channels' threads in chunks: one wake-up per chunk, not per token
OPENING_TOKENS = 8  # a piece's first tokens go at once: its channel waits for them to start playing
WAIT_SECONDS = 1.0  # how often a channel's thread waiting for tokens checks for a skip and that the loop runs
# A piece's tokens as they come, given its request, its steering and whether its channel still wants it (a
# skip while the source waits): the shared loop, the generator workers (bot.concert.remote), or any other.
TokenSource = Callable[[PieceRequest, Steering | None, Callable[[], bool]], Iterator[int]]


class BatchLoopStopped(RuntimeError):
    """The shared generation loop is not running: the piece cannot get its tokens."""


class _Job:
    """One piece of one channel in the shared batch: its tokens on their way to the channel's thread."""

    def __init__(self, request: PieceRequest, steering: Steering | None) -> None:
        self.request = request
        self.steering = steering
        self.out: queue.SimpleQueue[list[int] | BaseException | None] = queue.SimpleQueue()
        self.sent = 0  # tokens handed to the channel (written by the loop)
        self.taken = 0  # tokens the channel has read (written by the channel's thread)
        self.buffer: list[int] = []
        self.left = False  # the channel no longer wants it (finished reading, skipped, or closing)
        self.piece: BatchPiece | None = None


class BatchLoop:
    """One thread owns a BatchComposer and steps every channel's piece that needs tokens; a `TokenSource`.

    Open with `with` before the channels that read from it, and close it after them.

    Args:
        composer: the loaded model to sample with; used only from the loop's thread.
        clock: seconds, monotonic; paces the chunks of tokens handed to the channels.
    """

    def __init__(self, composer: Composer, clock: Callable[[], float] = time.monotonic) -> None:
        self.batch = BatchComposer(composer)
        self.clock = clock
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: list[_Job] = []
        self.steps = 0
        self.rows = 0  # pieces stepped, summed over steps: rows / steps is the mean batch
        self.cpu = 0.0  # this thread's CPU seconds, once it has ended
        self._thread = threading.Thread(target=self._run, name="batch", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    @property
    def pieces(self) -> int:
        """Pieces in the loop now, stepped or held, read from any thread (a skipped one until the next step)."""
        return len(self._jobs)

    def __call__(
        self, request: PieceRequest, steering: Steering | None, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[int]:
        """The piece's tokens as the batch samples them (read in the channel's own generation thread), until
        their end or until `cancelled()` while it waits for them.

        Raises:
            BatchLoopStopped: the loop has stopped before the piece's end.
            Exception: what the piece's sampler raised.
        """
        job = _Job(request, steering)
        self._inbox.put(job)
        self._wake.set()
        try:
            while True:
                try:
                    chunk = job.out.get(timeout=WAIT_SECONDS)
                except queue.Empty:
                    if cancelled():
                        return
                    if self._thread.is_alive():
                        continue
                    raise BatchLoopStopped("the shared generator is not running") from None
                if chunk is None:
                    return
                if isinstance(chunk, BaseException):
                    raise chunk
                job.taken += len(chunk)
                self._wake.set()  # it may have been held for us
                yield from chunk
        finally:
            job.left = True  # done, skipped or cancelled: the loop drops it at its next step
            self._wake.set()

    def _run(self) -> None:
        flushed = self.clock()
        try:
            while not self._stop.is_set():
                self._admit()
                wanted = [j for j in self._jobs if j.sent - j.taken < HOLD_TOKENS]
                if not wanted:
                    for job in self._jobs:  # what the last steps buffered goes out before the loop waits
                        self._flush(job)
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                try:
                    self._step(wanted)
                except Exception as exc:
                    # Not one piece's fault (those end in the piece): the pieces of this step cannot go on,
                    # the loop can, for the others and the pieces to come. A piece that reached its end in
                    # the step before it failed is whole: it ends as finished.
                    log.exception("a step of the shared generator failed; its %d piece(s) end", len(wanted))
                    for job in wanted:
                        self._end(job, failed=exc)
                if (now := self.clock()) - flushed >= FLUSH_SECONDS:
                    flushed = now
                    for job in self._jobs:
                        self._flush(job)
        finally:
            self.cpu = time.thread_time()
            stopped = BatchLoopStopped("the shared generator stopped before the piece's end")
            for job in list(self._jobs):
                self._end(job, failed=stopped)
            self.batch.close()

    def _admit(self) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            try:
                job.piece = self.batch.add(job.request, job.steering)
            except Exception as exc:
                # A recipe its sampler cannot even begin (a style the model lacks, say): that piece fails, its
                # slot back in the pool (BatchComposer.add), and the loop goes on serving every other channel.
                log.exception("a piece could not join the shared generator: %s", job.request)
                job.out.put(exc)
                continue
            self._jobs.append(job)
            if job.piece.done:  # failed before its first token
                self._end(job)
        for job in [j for j in self._jobs if j.left]:
            if job.piece is not None:
                self.batch.release(job.piece)  # its row and cache slots free for the next piece
            self._jobs.remove(job)

    def _step(self, wanted: list[_Job]) -> None:
        # BatchComposer steps all its live pieces; those held stay out of this step (their pending pass waits,
        # and a piece's tokens never depend on what else is stepped with it).
        pieces = [j.piece for j in wanted if j.piece is not None]
        held = [p for p in self.batch.live if p not in pieces]
        self.batch.live = pieces
        try:
            out = self.batch.step()
        finally:
            self.batch.live = self.batch.live + held
        self.steps += 1
        self.rows += len(pieces)
        by_piece = {id(j.piece): j for j in self._jobs}
        for piece, token in out:
            self._send(by_piece[id(piece)], [token])
        for job in [j for j in self._jobs if j.piece is not None and j.piece.done]:
            self._end(job)

    def _send(self, job: _Job, tokens: list[int]) -> None:
        for token in tokens:
            job.buffer.append(token)
            job.sent += 1
            if job.sent <= OPENING_TOKENS:
                self._flush(job)

    def _flush(self, job: _Job) -> None:
        if job.buffer:
            job.out.put(job.buffer)
            job.buffer = []

    def _end(self, job: _Job, failed: BaseException | None = None) -> None:
        """The job's last tokens and its end: None once its piece has finished, else what its sampler raised, or
        else `failed` (what stopped it: a failed step, the loop stopping). It leaves the loop, its cache slots
        free: a failed step leaves its pieces in the batch, finished ones too."""
        error = failed
        piece = job.piece
        if piece is not None:
            # What a step that failed sampled before it raised (its end, say) is the piece's own all the same.
            self._send(job, piece.tokens[job.sent :])
            error = None if piece.finished else (piece.error or failed)
            self.batch.release(piece)
        self._flush(job)
        job.out.put(error)
        self._jobs.remove(job)


class SourcedWorker(GenerationWorker):
    """A channel's generation thread whose tokens come from `source` (the shared loop, as in `concertbot run`,
    or the generator workers) instead of its own sampler; decoding into events and the feed's look-ahead are
    the channel's own.

    Args:
        composer: the loaded model, here for its vocabulary and plans (decoding tokens into events).
        source: where each piece's tokens come from.
        lookahead_seconds, clock: as GenerationWorker's.
    """

    def __init__(
        self,
        composer: Composer,
        source: TokenSource,
        lookahead_seconds: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._tokens: Iterator[int] | None = None
        self._skipped: Callable[[], bool] = lambda: False
        super().__init__(composer, lookahead_seconds, clock)

    def _sample(self, request: PieceRequest) -> Iterator[int]:
        self._tokens = self.source(request, self._steering, self._skipped)
        return self._tokens

    def _generate(self, piece: LivePiece) -> None:
        self._skipped = lambda: piece.feed.cancelled  # for the source to notice a skip while it waits
        try:
            super()._generate(piece)
        finally:
            # A skip raises FeedCancelled out of the feed: the piece leaves the batch (or its worker stops) now,
            # not whenever its generator is collected.
            if isinstance(self._tokens, Generator):
                self._tokens.close()
            self._tokens = None
