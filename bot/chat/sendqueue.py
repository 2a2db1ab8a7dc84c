"""The chat send queue: what the bot says, in order of importance, never faster than Twitch allows.

Twitch accepts 20 chat messages per 30 s from an account (100 when it is a moderator or the broadcaster) and
blocks the bot for 30 minutes when it sends more, so the queue keeps a sliding window of its own sends with a
safety margin and holds everything else back. When replies pile up it drops the least important, merges
similar acknowledgements into one line, and forgets replies too old to mean anything.

Twitch also drops a line identical to one the same (non-moderator) account sent within the last 30 s. So
every line for a viewer starts with their @name, reply thread or not ("you already voted for 87" to five
viewers is five different lines), and a line that would still repeat one sent within the window is not
sent: that viewer, or the whole chat, read those very words moments ago. `SendQueue.repeats` counts them.
The queues of one account's channels count their sends together in one `SendWindow`, and while several
have lines waiting each may hold only its share of it, so that a busy channel cannot hold the others back.
`SendQueue` is pure (time comes in as `now`); `Sender` is the small task that drains it into chat with a real
clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import Self

from config.errors import ConcertbotError

logger = logging.getLogger(__name__)

MAX_CHARS = 500  # Twitch's limit for one chat message
WINDOW = 30.0  # seconds over which Twitch counts messages
LIMIT = 20
MODERATOR_LIMIT = 100
# Marks that reorder the text around them: echoed from a viewer's line, they would turn the bot's reply around.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class Importance(IntEnum):
    """How much a message matters; the least important go first when the queue is full and last when sending."""

    ACK = 0  # "@a @b your votes are counted": similar ones merge into one line
    ERROR_REPLY = 1  # "unknown style 'bahc'": the viewer can simply retry
    INFO = 2  # answers to !queue, !help and the like
    NOW_PLAYING = 3
    REQUEST_ACK = 4  # "your piece is #3 in the queue": the one thing a requester waits for


# Only replies nobody waits for individually are merged; a request ack keeps its own line and reply thread.
MERGEABLE = (Importance.ACK, Importance.ERROR_REPLY, Importance.INFO)


@dataclass(frozen=True)
class Outgoing:
    """One chat line ready to post: its text (at most 500 characters) and the message it replies to."""

    text: str
    importance: Importance
    reply_to: str | None = None


@dataclass
class _Pending:
    body: str
    importance: Importance
    queued_at: float
    seq: int
    reply_to: str | None
    mentions: list[str] = field(default_factory=list)

    def line(self) -> str:
        # The @name even in a reply thread: it is what makes the same answer to two viewers two lines.
        return " ".join([*(f"@{m}" for m in self.mentions), self.body])

    def outgoing(self) -> Outgoing:
        # One viewer's line keeps its reply thread; a merged one has no single parent.
        return Outgoing(_clip(self.line()), self.importance, self.reply_to if len(self.mentions) <= 1 else None)


class SendWindow:
    """The send times of one account's queues, counted together, and the queues that count in it.

    Give the same `SendWindow()` to the `SendQueue` of every channel the account chats in: Twitch counts the
    account's lines over all its channels and checks each line against the limit of the channel it goes to.
    """

    def __init__(self) -> None:
        self.times: deque[float] = deque()  # sends still inside the span, oldest first
        self.queues: weakref.WeakSet[SendQueue] = weakref.WeakSet()
        self.wakers: list[Callable[[], None]] = []  # each running Sender's wake-up, called when another sends

    def __len__(self) -> int:
        return len(self.times)

    def sent_by(self, waker: Callable[[], None]) -> None:
        """A Sender has sent: wake the others, whose share may have grown (their wait is recomputed)."""
        for wake in self.wakers:
            if wake != waker:
                wake()


class SendQueue:
    """Chat lines waiting to be sent, released no faster than Twitch's rate limit (pure: time is an argument).

    Args:
        max_len: most lines held; a push beyond it drops the least important line, the oldest among equals.
        moderator: whether the bot is a moderator or the broadcaster (100 instead of 20 lines per 30 s). It can
            be changed at any time through the attribute of the same name.
        max_age: seconds after which an unsent line is dropped as stale; None keeps lines forever.
        window: the seconds over which Twitch counts; only tests change it.
        limits: Twitch's (normal, moderator) line counts per window; only tests change them.
        sent: the window this queue counts its sends in, shared by the queues of every channel one account
            chats in (one `SendWindow()` given to each). None: a window of its own.

    The queue sends at most 90 % of the limit (18 or 90 lines) in any stretch of `window` plus 1/30 of it
    (31 s), so that network jitter never lets Twitch count one line too many. Each line is checked against
    the count of the whole shared window. While other queues of the window have lines waiting, this one may
    also hold at most its share of the window's sends: the smallest budget among the waiting queues (its own
    included) divided by their number, at least 1. Without it a channel where the bot moderates (90) could
    keep the count above a non-moderated channel's 18 for as long as it has lines.
    """

    def __init__(
        self,
        max_len: int = 50,
        *,
        moderator: bool = False,
        max_age: float | None = 120.0,
        window: float = WINDOW,
        limits: tuple[int, int] = (LIMIT, MODERATOR_LIMIT),
        sent: SendWindow | None = None,
    ) -> None:
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        self.max_len = max_len
        self.moderator = moderator
        self.max_age = max_age
        self.span = window + window / 30
        self._budgets = tuple(max(1, n - max(1, n // 10)) for n in limits)
        self._pending: list[_Pending] = []
        self.window = SendWindow() if sent is None else sent
        self.window.queues.add(self)
        self._sent = self.window.times  # times of the window's sends still inside the span, oldest first
        self._mine: deque[float] = deque()  # this queue's own sends among them
        self._recent: dict[str, float] = {}  # text of each line sent within the span -> when, oldest first
        self._seq = 0
        self.dropped = 0  # lines dropped for space or age since the queue was made
        self.repeats = 0  # lines not sent because the same text went out within the span

    @property
    def budget(self) -> int:
        """Lines the queue allows itself per `span` seconds."""
        return self._budgets[1] if self.moderator else self._budgets[0]

    def __len__(self) -> int:
        return len(self._pending)

    def push(
        self,
        text: str,
        importance: Importance,
        now: float,
        reply_to: str | None = None,
        mention: str | None = None,
    ) -> Outgoing | None:
        """Queue a line; returns the line dropped to make room (possibly this one), else None.

        Args:
            text: the message; longer than 500 characters it is cut.
            importance: decides the order of sending and what is dropped first.
            now: the current time in seconds (any monotonic clock).
            reply_to: the chat message id this answers, shown by Twitch as a reply thread.
            mention: the login this line is for. Queued lines of a mergeable importance with the same text and a
                mention merge into one "@a @b text" line while it fits in 500 characters.
        """
        body = plain(text)
        mention = plain(mention) if mention else None
        if not body:
            return None
        if mention and importance in MERGEABLE and self._merge(body, importance, mention):
            return None
        if any(p.body == body and p.mentions == ([mention] if mention else []) for p in self._pending):
            self.repeats += 1  # the very line is already waiting: it would be dropped as a repeat anyway
            return None
        self._seq += 1
        new = _Pending(body, importance, now, self._seq, reply_to, [mention] if mention else [])
        self._pending.append(new)
        if len(self._pending) <= self.max_len:
            return None
        victim = min(self._pending, key=lambda p: (p.importance, p.seq))
        self._pending.remove(victim)
        self.dropped += 1
        return victim.outgoing()

    def _merge(self, body: str, importance: Importance, mention: str) -> bool:
        for p in self._pending:
            if p.body != body or p.importance != importance or not p.mentions:
                continue
            if mention in p.mentions:
                return True
            merged = " ".join(f"@{m}" for m in [*p.mentions, mention]) + " " + body
            if len(merged) <= MAX_CHARS:
                p.mentions.append(mention)
                return True
        return False

    def _limit(self, importance: Importance) -> int:
        # Acknowledgements may use only half the budget: the rest stays free for what viewers wait for, and
        # acks held back meanwhile merge into one line ("@a @b @c your votes are counted").
        return self.budget // 2 if importance == Importance.ACK else self.budget

    def pop_ready(self, now: float) -> Outgoing | None:
        """The most important line if the rate limit allows a send at `now` (counted as sent), else None.

        A line whose text was sent within the last `window` (plus the margin) is skipped and counted in
        `repeats`: Twitch would drop it, and whoever it is for has just read the same words.
        """
        self._expire(now)
        share = self._share(now)
        while True:
            if share is not None and len(self._mine) >= share:
                return None
            allowed = [p for p in self._pending if len(self._sent) < self._limit(p.importance)]
            if not allowed:
                return None
            best = max(allowed, key=lambda p: (p.importance, -p.seq))
            self._pending.remove(best)
            line = best.outgoing()
            if line.text in self._recent:
                self.repeats += 1
                logger.debug("not repeating within %.0f s: %r", self.span, line.text)
                continue
            self._sent.append(now)
            self._mine.append(now)
            self._recent[line.text] = now
            return line

    def next_ready_at(self, now: float) -> float | None:
        """When `pop_ready` will next return a line: `now` if it would now, None while the queue is empty."""
        self._expire(now)
        if not self._pending:
            return None
        ready = []
        for importance in {p.importance for p in self._pending}:
            over = len(self._sent) - self._limit(importance)
            ready.append(now if over < 0 else self._sent[over] + self.span)
        soonest = min(ready)
        share = self._share(now)
        if share is not None and len(self._mine) >= share:
            # When enough of its own sends have left the span; the others' sends meanwhile only add to it.
            soonest = max(soonest, self._mine[len(self._mine) - share] + self.span)
        return soonest

    def _share(self, now: float) -> int | None:
        """How many of the window's sends this queue may hold while other queues' lines wait; None: no cap."""
        waiting = [q for q in self.window.queues if q is not self and q._waits(now)]
        if not waiting:
            return None
        smallest = min(q.budget for q in [self, *waiting])
        return max(1, smallest // (len(waiting) + 1))

    def _waits(self, now: float) -> bool:
        # Read without expiring: another queue's pop must not change this one's state.
        return any(self.max_age is None or now - p.queued_at <= self.max_age for p in self._pending)

    def _expire(self, now: float) -> None:
        # Written as next_ready_at computes it, so that a line is ready exactly at the time promised.
        for sends in (self._sent, self._mine):
            while sends and sends[0] + self.span <= now:
                sends.popleft()
        # Insertion order is sending order, so the stale texts are at the front.
        for text, at in list(self._recent.items()):
            if at + self.span > now:
                break
            del self._recent[text]
        if self.max_age is not None:
            fresh = [p for p in self._pending if now - p.queued_at <= self.max_age]
            self.dropped += len(self._pending) - len(fresh)
            self._pending = fresh


def plain(text: str) -> str:
    """One line of plain text: each run of whitespace one space; no controls, direction marks, half characters.

    Replies quote what viewers typed ("'\x1b[31m' is not a seed"); chat shows the bot's line as it is sent.
    """
    words = (
        "".join(c for c in word if c not in BIDI_CONTROLS and unicodedata.category(c) not in ("Cc", "Cs"))
        for word in text.split()
    )
    return " ".join(word for word in words if word)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


SendFn = Callable[[str, str | None], Awaitable[object]]


class Sender:
    """The task that drains a SendQueue into chat, e.g. `Sender(SendQueue(), chat.send)`.

    Args:
        queue: the queue to drain.
        send: posts one line, as `await send(text, reply_to)`; an exception is logged and the line is lost
            (it still counts against the rate limit, as Twitch may have counted it).
        clock: seconds from a monotonic clock that runs at real speed (waits use real time).
        is_moderator: asked before each send whether the bot may use the moderator's higher limit.

    Use `async with Sender(...) as sender:` or run `sender.run()` in a task group, and `sender.say(...)`.
    """

    def __init__(
        self,
        queue: SendQueue,
        send: SendFn,
        *,
        clock: Callable[[], float] = time.monotonic,
        is_moderator: Callable[[], bool] | None = None,
    ) -> None:
        self.queue = queue
        self._send = send
        self._clock = clock
        self._is_moderator = is_moderator
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def say(
        self,
        text: str,
        importance: Importance,
        reply_to: str | None = None,
        mention: str | None = None,
    ) -> None:
        """Queue a line now (see `SendQueue.push`); it is sent as soon as the rate limit allows."""
        dropped = self.queue.push(text, importance, self._clock(), reply_to=reply_to, mention=mention)
        if dropped is not None:
            logger.info("chat queue full, dropped %s line %r", dropped.importance.name, dropped.text)
        self._wake.set()

    async def run(self) -> None:
        """Send queued lines forever, sleeping until the next is allowed, a new one arrives, or another Sender
        of the same window sends."""
        window = self.queue.window
        window.wakers.append(self._wake.set)
        try:
            await self._drain(window)
        finally:
            window.wakers.remove(self._wake.set)

    async def _drain(self, window: SendWindow) -> None:
        while True:
            self._wake.clear()  # before popping, so a say() during the send below is never missed
            if self._is_moderator is not None:
                self.queue.moderator = self._is_moderator()
            now = self._clock()
            line = self.queue.pop_ready(now)
            if line is not None:
                window.sent_by(self._wake.set)
                await self._post(line)
                continue
            ready = self.queue.next_ready_at(now)
            try:
                async with asyncio.timeout(None if ready is None else max(0.0, ready - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _post(self, line: Outgoing) -> None:
        try:
            await self._send(line.text, line.reply_to)
        except ConcertbotError as exc:
            logger.warning("chat line not sent: %s", exc)
        except Exception:
            logger.exception("chat line not sent: %r", line.text)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="chat sender")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                # Our own cancel, unless the surrounding task is being cancelled too: then pass it on.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            self._task = None
