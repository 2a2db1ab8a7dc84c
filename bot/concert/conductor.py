"""The conductor: decides what plays next and keeps Redis, the engine and chat in step.

It plays the next request in fair order (the store's round-robin); when the queue is empty and autoplay is on,
it plays on by itself, a new piece in a rotating style or, about a quarter of the time, a top-voted piece
again. The next piece is handed to the engine before the current one ends, so its first seconds are already
generated when its turn comes: there is never silence beyond the short gap between pieces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot.concert.live import LivePiece
from bot.concert.player import LiveSession
from bot.concert.steer_votes import OpenVote, SteerRules, SteerVotes, VoteStatus
from bot.state.outage import FailureLog, stop_if_cancelled
from bot.state.store import PieceRecord, SeedConflictError, SongRequest, Store, StoreUnavailable
from config.errors import ConcertbotError
from config.settings import Settings
from generator.instruments import find_instrument
from generator.model import LoadedModel
from generator.performance import Performance
from generator.plan import Plan
from generator.recipes import make_request, new_seed
from generator.sampling import PieceRequest, chosen_key, piece_plan
from generator.steer import SteerError, SteerState, steered_performance
from generator.titles import TitleError, TitleModel, titles_for
from synth.engine import EngineEvent

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LEAD_SECONDS = 8.0  # hand the next piece to the engine this long before the current one ends
REPLAY_SHARE = 0.25  # share of autoplay pieces that are top-voted pieces played again


@dataclass
class Slot:
    """A piece the conductor has handed to the engine: queued next, or playing."""

    record: PieceRecord
    live: LivePiece
    request: SongRequest | None  # None when the bot chose the piece
    started: float | None = None  # monotonic time its first sample sounded
    ended: float | None = None
    voteskips: set[str] = field(default_factory=set)
    saved: bool = False
    steer_state: SteerState | None = None  # as the steers passed so far leave it (some may not have landed)


class Conductor:
    """Runs the concert; `run()` is its task, the other methods are called by chat commands and the web."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        store: Store,
        session: LiveSession,
        announce: Callable[[str, str | None], None] = lambda text, mention: None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Args:
        announce: says something in chat, `(text, login to mention or None)`; must not block.
        wall: unix time for the store's records and leaderboards (weeks); injected for tests.
        clock: monotonic seconds for a piece's elapsed time, the vote grace and the steering votes' windows;
            None: the session's, the clock the engine stamps its events with (when pieces start and end).
        rng: chooses autoplay styles and replays; seeded in tests.
        """
        self.settings = settings
        self.loaded = loaded
        self.store = store
        self.session = session
        self.announce = announce
        self.wall = wall
        self.clock = clock or session.clock
        self.rng = rng or random.Random()
        self.stream_id = ""
        self.current: Slot | None = None
        self.upcoming: Slot | None = None
        # A request popped from the store and not yet handed over: still the next piece for the overlay.
        self.preparing: SongRequest | None = None
        self.last: Slot | None = None  # the piece that ended most recently: votes still count for a while
        self.autoplay_index = 0
        self._store_away = False  # Redis stopped answering: said once, not every second
        self._trouble = FailureLog(log, "the conductor")  # any other failure of its loop, said the same way
        self._autoplay_on = settings.concert.autoplay  # as the store last said; used while it cannot
        self.changed = asyncio.Event()  # set whenever what plays changes; the web side listens
        self._events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.underruns = 0
        self.titles = _titles(loaded)
        c = settings.concert
        rules = SteerRules(c.steer_window_seconds, c.steer_share, c.steer_min, c.steer_cooldown_seconds)
        self.steer_votes = SteerVotes(rules)

    # Wiring.

    def on_engine_event(self, event: EngineEvent) -> None:
        """The engine's listener: called on the render thread, so it only hands the event to the loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def start(self) -> None:
        """Pick up where a previous run stopped: same stream board after a crash, the cut piece again."""
        self._loop = asyncio.get_running_loop()
        flags = await self.store.flags()
        playing = await self.store.now_playing()
        recent = (
            playing is not None and playing.started_at is not None and self.wall() - playing.started_at < 1800
        )
        self.stream_id = flags.stream_id if flags.stream_id and recent else f"s{int(self.wall())}"
        await self.store.set_flags(stream_id=self.stream_id)
        if playing is not None and playing.seed is not None:
            # A crash cut this piece short; it plays again from the start.
            record = await self.store.load_piece(playing.seed)
            if record is not None:
                await self.store.finish_playing(playing.seed, self.wall())
                self._hand_over(record, playing.request, record.tokens or None)

    async def run(self) -> None:
        """The conductor's loop; cancel it to stop."""
        if self._loop is None:
            await self.start()
        while True:
            stop_if_cancelled()  # a cancel that a Redis call swallowed still stops the loop
            try:
                event = await next_event(self._events, 0.25)
                if event is not None:
                    await self._on_event(event)
                await self._save_finished()
                self._close_steer_votes()
                if self.upcoming is None and self._time_for_next():
                    await self._schedule_next()
            except StoreUnavailable as exc:
                # Redis restarting: the music plays on from memory. Once what was queued has played, the bot
                # plays pieces of its own (as autoplay would), saved once Redis is back: no dead air.
                if not self._store_away:
                    log.warning("the conductor cannot reach its state (%s); the music plays on", exc)
                    self._store_away = True
                if self.upcoming is None and self._time_for_next() and self._autoplay_on:
                    self._hand_over(self._unclaimed(self._next_autoplay()), None, None)
                await asyncio.sleep(1.0)
            except Exception as exc:
                # A full Redis, a bug: the music already queued plays on while this retries. The traceback
                # once, not every second for as long as it lasts.
                self._trouble.failed(exc)
                await asyncio.sleep(1.0)
            else:
                self._trouble.worked()

    # What plays next.

    def _time_for_next(self) -> bool:
        if self.current is None:
            return True
        remaining = self.current.record.recipe.seconds - self.elapsed()
        return remaining < LEAD_SECONDS or self.current.live.feed.cancelled

    async def _schedule_next(self) -> None:
        flags = await self.store.flags()
        self._store_answered()
        self._autoplay_on = flags.autoplay and not flags.paused
        if flags.paused:
            return
        request = await self.store.pop_next(self.wall())
        if request is not None:
            self.preparing = request
            try:
                await self._play_request(request)
            finally:
                self.preparing = None
        elif flags.autoplay:
            await self._autoplay()

    async def _play_request(self, request: SongRequest) -> None:
        try:
            if request.seed is not None:
                record = await self.store.load_piece(request.seed)
                if record is None or not self.replayable(record):
                    self.announce(f"piece {request.seed} cannot be played again", request.login)
                    return
                self._hand_over(record, request, record.tokens or None)
                return
            piece = self._new_piece(
                request.style, request.instruments, request.tempo, request.seconds, request.key
            )
        except ConcertbotError as exc:  # checked when queued, but the model may have changed since
            self.announce(f"your request could not be played: {exc}", request.login)
            return
        record = await self._claim(piece, request.login)
        self._hand_over(record, request, None)

    async def _autoplay(self) -> None:
        if self.rng.random() < REPLAY_SHARE:
            top = await self.store.top("all", self.stream_id, self.wall(), n=10)
            if top:
                record = await self.store.load_piece(self.rng.choice(top).seed)
                if record is not None and self.replayable(record):
                    self._hand_over(record, None, record.tokens or None)
                    return
        self._hand_over(await self._claim(self._next_autoplay(), ""), None, None)

    def _next_autoplay(self) -> PieceRequest:
        """A new piece of the bot's own choosing, the styles in turn."""
        styles = self.loaded.vocab.styles
        style = styles[self.autoplay_index % len(styles)]
        self.autoplay_index += 1
        return self._new_piece(style)

    def _new_piece(
        self,
        style: str,
        instruments: tuple[str, ...] = (),
        tempo: float | None = None,
        seconds: float | None = None,
        key: str | None = None,
    ) -> PieceRequest:
        """A fresh recipe: what was asked, the settings' sampling values for the rest, a new seed."""
        s = self.settings.sampling
        return make_request(
            self.loaded,
            style,
            list(instruments) or None,
            tempo if tempo is not None else s.tempo,
            seconds or s.seconds,
            None,
            s.temperature,
            s.top_p,
            key,
            s.critic,
        )

    async def _claim(self, piece: PieceRequest, requester: str) -> PieceRecord:
        """Reserve a fresh seed for the piece in the store (a seed names one piece forever)."""
        while True:
            record = self._unclaimed(piece, requester)
            try:
                await self.store.save_piece(record)
                return record
            except SeedConflictError:
                piece = dataclasses.replace(piece, seed=new_seed())

    def _unclaimed(self, piece: PieceRequest, requester: str = "") -> PieceRecord:
        return PieceRecord(
            piece,
            model_version=self.loaded.version,
            requester=requester,
            created_at=self.wall(),
            title=self.titles.draw(piece.seed, piece.style) if self.titles else "",
        )

    def title_of(self, record: PieceRecord) -> str | None:
        """A piece's name: the one it was given, else (made before titles) the one its seed draws now."""
        if record.title:
            return record.title
        return self.titles.draw(record.seed, record.recipe.style) if self.titles else None

    def key_of(self, record: PieceRecord) -> str | None:
        """The key a piece is in: the one asked for, or the one its seed chose; None for a keyless model."""
        if record.model_version != self.loaded.version:  # another model's seed would have picked another key
            return record.recipe.key
        return chosen_key(self.loaded, record.recipe.style, record.seed, record.recipe.key)

    def plan_of(self, record: PieceRecord) -> Plan | None:
        """The plan a piece follows, drawn again from its seed; None when another model made it."""
        if record.model_version != self.loaded.version:  # another model's card would draw another plan
            return None
        return piece_plan(self.loaded, record.recipe)

    def replayable(self, record: PieceRecord) -> bool:
        """Stored tokens replay anywhere; a piece cut short before it was saved, only on its own model."""
        return bool(record.tokens) or record.model_version == self.loaded.version

    def _hand_over(
        self, record: PieceRecord, request: SongRequest | None, tokens: tuple[int, ...] | None
    ) -> None:
        recipe = record.recipe
        if record.model_version != self.loaded.version:
            # Another model's piece replays its tokens as written: this card's plan is not the one it followed.
            recipe = dataclasses.replace(recipe, plan=False)
        live = self.session.request(str(record.seed), recipe, tokens=tokens, steers=record.steers)
        self.upcoming = Slot(record, live, request, saved=tokens is not None)

    def performance_of(self, record: PieceRecord) -> Performance:
        """How a stored piece is played (its plan's dynamics and ritardando, its steers), as it was live."""
        programs = record.recipe.programs()
        return steered_performance(self.plan_of(record), record.recipe.tempo, programs, record.steers)

    # Engine events.

    async def _on_event(self, event: EngineEvent) -> None:
        slot = self.upcoming if self.upcoming and event.piece_id == str(self.upcoming.record.seed) else None
        # What plays changes in memory first, the store last: during a Redis outage the concert goes on.
        if event.kind == "start" and slot is not None:
            self.current, self.upcoming = slot, None
            slot.started = event.at
            who = f", asked for by @{slot.request.login}" if slot.request else ""
            self.announce(
                f"now playing {_named(self.title_of(slot.record))}"
                f"{_describe(slot.record, self.key_of(slot.record))}{who}: seed {slot.record.seed} "
                "(!vote if you like it)",
                slot.request.login if slot.request else None,
            )
            self.changed.set()
            await self.store.start_playing(slot.record.seed, self.wall())
        elif (
            event.kind in ("end", "skip", "error")
            and self.current
            and event.piece_id == str(self.current.record.seed)
        ):
            ended = self.current
            ended.ended = event.at
            self.last, self.current = ended, None
            self.changed.set()
            await self.store.finish_playing(ended.record.seed, self.wall())
        elif event.kind in ("skip", "error") and slot is not None:
            self.upcoming = None  # cut before it started
        elif event.kind == "underrun":
            self.underruns += 1

    async def _save_finished(self) -> None:
        for slot in (self.current, self.upcoming, self.last):
            if slot is not None and not slot.saved and slot.live.complete:
                # Marked saved once written: a piece finished during a Redis outage is saved when it is back.
                await self.store.save_piece(
                    dataclasses.replace(
                        slot.record, tokens=tuple(slot.live.tokens), steers=tuple(slot.live.steering.landed)
                    )
                )
                slot.saved = True
                self._store_answered()

    def _store_answered(self) -> None:
        if self._store_away:
            log.info("Redis answers again; the conductor is back on the queue")
            self._store_away = False

    # Asked by commands.

    def elapsed(self) -> float:
        """Seconds of the current piece played: from the engine, so it stands still while paused."""
        if self.current is None or self.current.started is None:
            return 0.0
        position = self.session.engine.position(str(self.current.record.seed))
        return position if position is not None else max(0.0, self.clock() - self.current.started)

    def vote_target(self, grace: float) -> int | None:
        """The piece a `!vote` now counts for: the one playing, else the last one for `grace` seconds."""
        if self.current is not None:
            return self.current.record.seed
        if self.last is not None and self.last.ended is not None and self.clock() - self.last.ended <= grace:
            return self.last.record.seed
        return None

    def voteskip(self, user_id: str, active_chatters: int) -> tuple[int, int, bool]:
        """Count a voteskip; returns (votes, needed, skipped)."""
        if self.current is None:
            return 0, 0, False
        self.current.voteskips.add(user_id)
        share = self.settings.concert.voteskip_share
        needed = max(self.settings.concert.voteskip_min, math.ceil(share * active_chatters))
        votes = len(self.current.voteskips)
        if votes >= needed:
            self.skip()
            return votes, needed, True
        return votes, needed, False

    def skip(self) -> None:
        self.session.engine.skip()

    def steer(
        self, user_id: str, kind: str, arg: str, active_chatters: int, now: float, privileged: bool = False
    ) -> tuple[str, bool]:
        """Count a vote to steer the piece that plays (generator.steer); (reply, whether it passed).

        A steer that passes is handed to the sampler, which lands it at the next bar line it reaches.
        Raises SteerError (or UnknownNameError) with the viewer's reply when the piece cannot follow it.
        """
        slot = self.current
        if slot is None or slot.started is None:
            raise SteerError("nothing is playing to steer")
        if slot.live.replay is not None:
            raise SteerError("a replay plays as it was first heard; steer a new piece")
        if self.settings.generation.remote:  # workers sample it elsewhere; they take no steers yet
            raise SteerError("this concert composes on remote workers, which cannot be steered yet")
        if slot.live.finished.is_set():
            raise SteerError("this piece is composed to its end already; steer the next one")
        arg = find_instrument(arg).name if arg else ""
        state = slot.steer_state or SteerState.of(
            slot.record.recipe.instruments,
            slot.record.recipe.tempo,
            self.key_of(slot.record),
            slot.record.recipe.sounds,
        )
        after = state.after(kind, arg)
        said = f"!{kind} {arg}".strip()
        result = self.steer_votes.vote(slot.record.seed, user_id, kind, arg, active_chatters, now, privileged)
        if result.status is VoteStatus.ALREADY:
            raise SteerError(f"you already voted for {said}")
        if result.status is VoteStatus.COOLING:
            raise SteerError(f"a change is just landing; steer again in {math.ceil(result.seconds)} s")
        self.changed.set()
        if result.status is VoteStatus.COUNTED:
            return f"{said}: {result.votes}/{result.needed} votes, {math.ceil(result.seconds)} s left", False
        slot.steer_state = after
        slot.live.steering.ask(kind, arg, self.elapsed())
        votes = "" if privileged else f" ({result.votes}/{result.needed})"
        return f"{said}{votes}: from the next bar", True

    def open_steer_votes(self, now: float) -> list[OpenVote]:
        """The steering votes open for the piece that plays, closing soonest first."""
        if self.current is None or self.current.record.seed != self.steer_votes.piece:
            return []
        return self.steer_votes.open(now)

    def _close_steer_votes(self) -> None:
        """Say which votes ran out; a piece's votes end with it."""
        if self.current is None or self.current.record.seed != self.steer_votes.piece:
            self.steer_votes.reset()
            return
        for vote in self.steer_votes.expire(self.clock()):
            self.announce(f"the vote for {vote.said()} ran out ({vote.votes}/{vote.needed})", None)
            self.changed.set()

    def request_arrived(self) -> None:
        """A viewer's request goes before a piece the bot chose itself, if that one has not started yet."""
        if self.upcoming is not None and self.upcoming.request is None and self.upcoming.started is None:
            self.upcoming.live.feed.cancel()
            self.upcoming = None

    async def pause(self) -> None:
        await self.store.set_flags(paused=True)
        self.session.engine.pause()

    async def resume(self) -> None:
        await self.store.set_flags(paused=False)
        self.session.engine.resume()

    def queue_eta(self, count: int) -> list[float]:
        """Estimated seconds until each of the next `count` queue entries starts, all assumed default length."""
        e = self.settings.engine
        per_piece = self.settings.sampling.seconds + e.tail_seconds + e.gap_seconds
        first = 0.0
        if self.current is not None:
            left = max(0.0, self.current.record.recipe.seconds - self.elapsed())
            first += left + e.tail_seconds + e.gap_seconds
        if self.upcoming is not None:
            first += self.upcoming.record.recipe.seconds + e.tail_seconds + e.gap_seconds
        return [first + i * per_piece for i in range(count)]


async def next_event(events: asyncio.Queue[_T], seconds: float) -> _T | None:
    """The next event on `events`, or None after `seconds`.

    Not `asyncio.wait_for`: on Python 3.11 it returns the item and drops the cancel when the cancel and an item
    arrive in the same turn of the loop (CPython gh-86296). The conductor waits here four times a second with
    events pouring in, so after an hour or so a Ctrl-C met an event, the conductor played on and the bot
    never stopped (the soak's hang; a test run that once played on for ten minutes).
    """
    try:
        async with asyncio.timeout(seconds):
            return await events.get()
    except TimeoutError:
        return None


def _titles(loaded: LoadedModel) -> TitleModel | None:
    """The model's title model, or none (pieces go untitled) when its file is broken: said once, at start."""
    try:
        return titles_for(loaded.path)
    except TitleError as exc:
        log.warning("pieces get no titles: %s", exc)
        return None


def _named(title: str | None) -> str:
    """ "The Lark on the Hill, " before a piece's description, or nothing for an untitled piece."""
    return f"{title}, " if title else ""


def _describe(record: PieceRecord, key: str | None) -> str:
    in_key = f" in {key}" if key else ""
    r = record.recipe
    return f"{r.style}{in_key} for {', '.join(r.heard())} at {r.tempo:g} BPM"
