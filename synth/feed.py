"""The hand-over between the thread that generates a piece and the thread that plays it.

The generator pushes batches of timed events with a watermark (`until`: everything earlier is in); the
engine takes what it needs block by block and reports how far it has played. The generator waits when it is
`lookahead` seconds ahead of playback, so a long concert holds only a few seconds of events in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import mido

TimedMessage = tuple[float, mido.Message]


class FeedCancelled(Exception):
    """The piece was skipped or the engine stopped: the generator should stop making it."""


class EventFeed:
    """One piece's events on their way from generation to playback; safe between exactly two threads."""

    def __init__(self, lookahead_seconds: float = 4.0) -> None:
        self.lookahead = lookahead_seconds
        self._cond = threading.Condition()
        self._events: deque[TimedMessage] = deque()
        self.until = 0.0  # seconds of the piece whose events are all in
        self.done = False  # the generator has finished the piece
        self.position = 0.0  # seconds of the piece played so far
        self.cancelled = False
        self.error: BaseException | None = None

    # The generator's side.

    def put(self, until: float, events: Sequence[TimedMessage], done: bool = False) -> None:
        """Add a batch, then wait while generation is far enough ahead of playback.

        Raises:
            FeedCancelled: the piece is no longer wanted.
        """
        with self._cond:
            if self.cancelled:
                raise FeedCancelled
            self._events.extend(events)
            self.until = max(self.until, until)
            self.done = done
            self._cond.notify_all()
            if self.until - self.position > self.lookahead:
                # Resume only once a quarter of the look-ahead has played: generation then runs in bursts
                # instead of waking for every audio block.
                self._cond.wait_for(
                    lambda: self.cancelled or self.until - self.position <= 0.75 * self.lookahead
                )
            if self.cancelled:
                raise FeedCancelled

    def fail(self, error: BaseException) -> None:
        """The generator crashed: the piece ends where it got to, and the error is kept for the report."""
        with self._cond:
            self.error = error
            self.done = True
            self._cond.notify_all()

    # The player's side.

    def ready(self, frame: int, sample_rate: int) -> bool:
        """Whether every event before `frame` (or the whole piece) is here."""
        with self._cond:
            return self._ready(frame, sample_rate)

    def wait_ready(self, frame: int, sample_rate: int, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._ready(frame, sample_rate), timeout)

    def _ready(self, frame: int, sample_rate: int) -> bool:
        # An event still to come is at `until` or later, so at frame round(until * rate) or later.
        return self.done or self.cancelled or round(self.until * sample_rate) >= frame

    def take(self, before_frame: int, sample_rate: int) -> list[tuple[int, mido.Message]]:
        """Pop the events before a frame, as (frame, message), frames rounded as the offline render does."""
        out = []
        with self._cond:
            while self._events and round(self._events[0][0] * sample_rate) < before_frame:
                seconds, msg = self._events.popleft()
                out.append((round(seconds * sample_rate), msg))
        return out

    def finished(self) -> bool:
        """The generator is done and every event has been taken."""
        with self._cond:
            return self.done and not self._events

    def played_to(self, seconds: float) -> None:
        with self._cond:
            self.position = seconds
            if self.until - seconds <= 0.75 * self.lookahead:
                self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()
