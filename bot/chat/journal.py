"""Viewers' commands kept in memory while Redis is away, and written to it in arrival order once it is back.

A Redis outage must not lose a `!compose` or a `!vote`: the chat commands validate them as always (a typo
still gets "did you mean bach?"), then hand them to the `Journal` instead of the store. `JournalWriter`, one
task of the concert, writes the journal's head to Redis until it is empty, retrying with a growing wait while
Redis does not answer. Each entry carries an id that the store writes at most once (`Store.enqueue_once`;
a vote counts once per viewer anyway), so an entry whose reply was lost when Redis died mid-write is never
written twice.

`Journal` is pure state (ids are injected); the writer and the metrics collector are the edge.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.chat.commands import CommandError
from bot.state.outage import stop_if_cancelled
from bot.state.store import QueueRefused, SongRequest, Store, StoreUnavailable, VoteOutcome

log = logging.getLogger(__name__)

LIMIT = 1000  # commands kept at most: an outage of minutes in a busy chat, a few hundred kilobytes
RETRY_FIRST = 0.25  # seconds before the writer tries Redis again; doubles up to RETRY_MAX
RETRY_MAX = 2.0  # an outage that ended is noticed within this; each try is one refused connect
# Past the bound the viewer is told plainly that nothing can be kept (the chat's "unavailable" reply).
FULL = "the queue is unavailable right now; try again in a minute"
WAITING = "you already have a request waiting; it joins the queue once the store is back"
NOTED = "noted: it joins the queue once the store is back"  # ends "your bach for violin is ..."


@dataclass(frozen=True)
class JournalledRequest:
    id: str  # written to Redis at most once under this id
    request: SongRequest


@dataclass(frozen=True)
class JournalledVote:
    id: str
    seed: int
    user_id: str
    stream_id: str
    at: float  # wall-clock time of the vote: the week board it counts on


Entry = JournalledRequest | JournalledVote


class Journal:
    """The commands that wait for Redis, oldest first, at most `limit`; counts what came and went."""

    def __init__(
        self,
        limit: int = LIMIT,
        max_requests: int | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        """`max_requests`: the queue's own length limit; more requests than that would only be refused later,
        after each viewer was told that theirs is noted."""
        self.limit = limit
        self.max_requests = limit if max_requests is None else min(limit, max_requests)
        self._new_id = new_id
        self._entries: deque[Entry] = deque()
        self.on_add: Callable[[], None] = lambda: None  # the writer's wake-up
        self.journalled = 0
        self.flushed = 0
        self.refused = 0  # written, and refused by the store (queue full, viewer blocked)
        self.dropped = 0  # not kept: the journal was full
        self._full = False
        self._in_flight: Entry | None = None  # the head while the writer writes it: no longer withdrawable

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries))

    def add_request(self, request: SongRequest) -> JournalledRequest:
        """Keep a request; one per viewer waits at a time (the priority lane is exempt, as in the store).

        Raises:
            CommandError: the viewer already has a request waiting, or the journal is full.
        """
        requests = [e.request for e in self._entries if isinstance(e, JournalledRequest)]
        if not request.priority and any(r.user_id == request.user_id and not r.priority for r in requests):
            raise CommandError(WAITING)
        if len(requests) >= self.max_requests and len(self._entries) < self.limit:  # full: _add says so
            self.dropped += 1
            raise CommandError(f"the queue is full ({len(requests)} requests); try again in a few minutes")
        entry = JournalledRequest(self._new_id(), request)
        self._add(entry)
        return entry

    def add_vote(self, seed: int, user_id: str, stream_id: str, at: float) -> JournalledVote:
        """Keep a vote; a second vote of the viewer for the same piece is refused, as the store would.

        Raises:
            CommandError: the viewer's vote for this piece is already waiting, or the journal is full.
        """
        if any(isinstance(e, JournalledVote) and (e.seed, e.user_id) == (seed, user_id) for e in self._entries):
            raise CommandError(f"you already voted for {seed}")
        entry = JournalledVote(self._new_id(), seed, user_id, stream_id, at)
        self._add(entry)
        return entry

    def withdraw(self, user_id: str) -> SongRequest | None:
        """Take back the viewer's latest waiting request (`!cancel`); None if they have none waiting."""
        for entry in reversed(self._entries):
            if entry is self._in_flight:
                return None  # on its way to Redis: the store's !cancel takes it back once it is there
            if isinstance(entry, JournalledRequest) and entry.request.user_id == user_id:
                self._entries.remove(entry)
                return entry.request
        return None

    def first(self) -> Entry | None:
        """The oldest entry, which the writer writes next; it can no longer be withdrawn."""
        self._in_flight = self._entries[0] if self._entries else None
        return self._in_flight

    def done(self, entry: Entry, refused: bool = False) -> None:
        """`entry`, the head, is written, or the store refused it: it leaves the journal."""
        if not self._entries or self._entries[0] is not entry:
            raise ValueError("only the journal's first entry can be done")
        self._entries.popleft()
        self._in_flight = None
        if refused:
            self.refused += 1
        else:
            self.flushed += 1
        if self._full and len(self._entries) < self.limit:
            self._full = False

    def _add(self, entry: Entry) -> None:
        if len(self._entries) >= self.limit:
            self.dropped += 1
            if not self._full:  # said once per time it fills, not once per command turned away
                log.warning(
                    "the outage journal is full (%d commands); more are refused until Redis is back", self.limit
                )
                self._full = True
            raise CommandError(FULL)
        self._entries.append(entry)
        self.journalled += 1
        self.on_add()


@dataclass(frozen=True)
class Written:
    """What writing one entry did, for the caller to tell the viewer or count."""

    entry: Entry
    refused: str | None = None  # the store's reason in words; None when it was written (or was already)
    counted_vote: bool = False


async def write(store: Store, entry: Entry) -> Written:
    """Write one entry to the store; raises `StoreUnavailable` with the entry still unwritten or unknown."""
    if isinstance(entry, JournalledRequest):
        try:
            await store.enqueue_once(entry.request, entry.id)
        except QueueRefused as exc:
            return Written(entry, refused="" if exc.reason == "blocked" else str(exc))
        return Written(entry)
    # Seen playing: the chat command took the piece from the conductor, and a piece that started while Redis
    # was away has no start in Redis to check against.
    outcome = await store.vote(entry.seed, entry.user_id, entry.stream_id, entry.at, seen_playing=True)
    # ALREADY_VOTED: the viewer's vote was counted, before the outage or by a write whose reply was lost.
    return Written(entry, counted_vote=outcome is VoteOutcome.COUNTED)


class JournalWriter:
    """The task that empties the journal into the store whenever Redis answers.

    Args:
        journal: the chat commands' journal.
        store: where it goes.
        written: called with each entry's outcome (wake the conductor, count a vote, tell a refused viewer).
    """

    def __init__(self, journal: Journal, store: Store, written: Callable[[Written], None]) -> None:
        self.journal = journal
        self.store = store
        self.written = written
        self._wake = asyncio.Event()
        journal.on_add = self._wake.set

    async def flush(self) -> int:
        """Write the journal's entries in order until it is empty; how many were written or refused.

        Raises:
            StoreUnavailable: Redis stopped answering; what was not confirmed stays in the journal.
        """
        count = 0
        while (entry := self.journal.first()) is not None:
            outcome = await write(self.store, entry)
            self.journal.done(entry, refused=outcome.refused is not None)
            count += 1
            self.written(outcome)
        return count

    async def run(self) -> None:
        """Flush whenever the journal holds something, until cancelled; one log line per outage it ends."""
        try:
            await self._write_forever()
        finally:
            if self.journal:  # the concert stops during an outage: what memory held is gone; say so once
                log.warning("the concert stops with %d commands of the outage never written", len(self.journal))

    async def _write_forever(self) -> None:
        j = self.journal
        delay = RETRY_FIRST
        before: int | None = None  # what was written before this outage: its count spans interrupted flushes
        stumbled = False
        while True:
            stop_if_cancelled()  # a cancel that a Redis write swallowed still stops the writer
            await self._wake.wait()
            if before is None:
                before = j.flushed + j.refused
            try:
                await self.flush()
            except StoreUnavailable:
                # The chat and the conductor already said Redis is away; a line per retry would flood the log.
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception:
                # A bug or a refusing server: the entry stays (nothing is lost), said once per run of failures.
                if not stumbled:
                    log.exception("writing the outage journal failed; retrying")
                    stumbled = True
                await asyncio.sleep(RETRY_MAX)
                continue
            stumbled = False
            if total := j.flushed + j.refused - before:
                log.info("Redis is back: %d commands kept during the outage are written", total)
            delay, before = RETRY_FIRST, None
            if not self.journal:
                self._wake.clear()


class JournalCollector(Collector):
    """The journal's counters in /metrics, read at each scrape."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        j = self._journal
        commands = CounterMetricFamily(
            "concertbot_journal_commands",
            "Chat commands kept in memory during a Redis outage, by what became of them.",
            labels=["outcome"],
        )
        for outcome, count in (
            ("journalled", j.journalled),
            ("flushed", j.flushed),
            ("refused", j.refused),
            ("dropped", j.dropped),
        ):
            commands.add_metric([outcome], count)
        yield commands
        yield GaugeMetricFamily("concertbot_journal_waiting", "Commands waiting for Redis now.", len(j))
