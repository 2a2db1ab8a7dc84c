"""Chat commands: parse, check who may do it, validate, spend the cooldown, act through the store and the
conductor, reply.

One path for every chat: Twitch messages, redemptions, the terminal and the web chat box all come here as
`ChatMessage`. `bot.chat.commands.COMMANDS` says what each command is; `HANDLERS` says what it does. Nothing a
viewer types escapes as an exception: mistakes get one short, rate-limited reply, and a fault of ours is logged
with its traceback and answered with a short apology, rate-limited the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.chat.commands import (
    COMMANDS,
    Command,
    CommandError,
    CommandSpec,
    Cooldown,
    compose_args,
    help_text,
    login_arg,
    on_off_arg,
    parse,
    period_arg,
    replay_arg,
    steer_arg,
)
from bot.chat.fairness import Cooldowns, RecentChatters
from bot.chat.journal import NOTED, Journal, JournalledRequest, Written
from bot.chat.message import ChatMessage
from bot.chat.sendqueue import Importance
from bot.concert.conductor import Conductor
from bot.state.store import QueueRefused, SongRequest, Store, StoreUnavailable, VoteOutcome
from config.errors import ConcertbotError
from config.settings import Settings
from generator.instruments import INSTRUMENTS
from generator.recipes import make_request

log = logging.getLogger(__name__)

# Redis is down (restarting, most likely): nothing can be queued, looked up or counted until it is back.
UNAVAILABLE = "the queue is unavailable right now; try again in a minute"


@dataclass(frozen=True)
class Reply:
    text: str
    importance: Importance
    reply_to: str | None = None
    mention: str | None = None  # login to @-mention


@dataclass(frozen=True)
class Planned:
    """A valid request, not yet queued: what a `Cooldown.REQUEST` command's handler gives back, so that the
    dispatcher spends the cooldown only after everything the viewer typed was checked."""

    style: str
    ack: Callable[[str], str]  # the reply, given the place: "#2 in the queue, starting within a minute"
    instruments: tuple[str, ...] = ()
    tempo: float | None = None
    seed: int | None = None
    key: str | None = None
    counted: bool = True  # counted in requests_by_style (a replay is not a new request of its style)


def went_wrong(command: str) -> str:
    """What a viewer reads when a command failed through no fault of theirs."""
    return f"something went wrong with !{command}; the concert goes on"


class ChatCommands:
    """Turns chat lines into actions and replies."""

    def __init__(
        self,
        settings: Settings,
        conductor: Conductor,
        store: Store,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock`: monotonic seconds for the cooldowns and the count of recent chatters; None: the conductor's,
        so that a cooldown, a steering vote's window and the overlay keep one time."""
        c = settings.concert
        self.settings = settings
        self.conductor = conductor
        self.store = store
        self.clock = clock or conductor.clock
        self.cooldowns = Cooldowns(c.viewer_cooldown_seconds, c.global_cooldown_seconds, c.error_reply_seconds)
        self.chatters = RecentChatters(c.chatter_window_seconds)
        self.messages = 0
        self.votes = 0
        self.requests_by_style: dict[str, int] = {}
        self._store_away = False  # Redis stopped answering: logged once, not at every command
        # Requests and votes made while Redis is away wait here; bot.chat.journal.JournalWriter writes them.
        self.journal = Journal(max_requests=c.max_queue)

    async def handle(self, msg: ChatMessage) -> list[Reply]:
        """Everything the bot says back to one chat line (often nothing)."""
        now = self.clock()
        self.messages += 1
        self.chatters.saw(msg.user_id, now)
        command = parse(msg.text)
        if command is None and msg.reward_id and msg.text.strip():
            # A redemption's text is the request itself, with or without "!compose".
            command = Command("compose", tuple(msg.text.split()[:20]))
        if command is None:
            return []
        try:
            try:
                blocked = await self.store.is_blocked(msg.login)
            except StoreUnavailable as exc:
                # Requests and votes go to the journal; the store refuses a blocked login when it writes them.
                self._went_away(exc)
                blocked = False
            else:
                if self._store_away:
                    log.info("Redis answers again; chat commands work again")
                    self._store_away = False
            if blocked:
                return []
            spec = command.spec
            if not spec.who.allows(msg):
                raise CommandError(f"!{spec.name} is for {spec.who.value}")
            done = await HANDLERS[spec.name](self, msg, command.args, now)
            if isinstance(done, Planned):
                return await self._request(msg, spec, done, now)
            return done
        except StoreUnavailable as exc:
            self._went_away(exc)
            return self._error(msg, UNAVAILABLE, now)
        except ConcertbotError as exc:  # the viewer's mistake (CommandError among them): say what it is
            return self._error(msg, str(exc), now)
        except Exception:
            # A fault of ours: the traceback for the operator, a short word for the viewer, the concert goes on.
            log.exception("command !%s failed on %r", command.name, msg.text[:100])
            return self._error(msg, went_wrong(command.name), now)

    def _error(self, msg: ChatMessage, text: str, now: float) -> list[Reply]:
        """An error reply, at most one per viewer per `error_reply_seconds`."""
        if not self.cooldowns.may_reply_error(msg.user_id, now):
            return []
        return [Reply(text, Importance.ERROR_REPLY, msg.message_id or None, msg.login)]

    async def _request(self, msg: ChatMessage, spec: CommandSpec, planned: Planned, now: float) -> list[Reply]:
        """Spend the request cooldown, queue a request its handler checked, and say where it stands."""
        if spec.cooldown is not Cooldown.REQUEST:
            raise TypeError(f"!{spec.name} planned a request but spends no request cooldown")
        priority = self._may_request(msg, now)
        place = await self._enqueue(
            msg,
            now,
            priority,
            style=planned.style,
            instruments=planned.instruments,
            tempo=planned.tempo,
            seed=planned.seed,
            key=planned.key,
        )
        if planned.counted:
            self.requests_by_style[planned.style] = self.requests_by_style.get(planned.style, 0) + 1
        return [Reply(planned.ack(place), Importance.REQUEST_ACK, msg.message_id or None, msg.login)]

    def journal_written(self, written: Written) -> list[Reply]:
        """Once `JournalWriter` wrote an entry of the journal: wake the conductor, count, tell a refusal."""
        entry = written.entry
        if written.counted_vote:
            self.votes += 1
        if isinstance(entry, JournalledRequest):
            if written.refused is None:
                self.conductor.request_arrived()
            elif written.refused:  # "": blocked, said nothing to, as when queued directly
                text = f"your {entry.request.style} request could not be queued: {written.refused}"
                return [Reply(text, Importance.ERROR_REPLY, None, entry.request.login)]
        return []

    def _went_away(self, exc: StoreUnavailable) -> None:
        if not self._store_away:
            log.warning("chat commands cannot reach their state: %s", exc)
            self._store_away = True

    def _info(self, msg: ChatMessage, text: str) -> list[Reply]:
        return [Reply(text, Importance.INFO, msg.message_id or None, msg.login)]

    # Everyone.

    async def _compose(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> Planned:
        wanted = compose_args(args)
        # Resolving names here means a typo is answered at once, not when the piece's turn comes; and before
        # the cooldown (the dispatcher spends it), so that a typo is answered with what is wrong, not a wait.
        piece = make_request(
            self.conductor.loaded, wanted.style, list(wanted.instruments) or None, wanted.tempo, key=wanted.key
        )
        in_key = f" in {piece.key}" if piece.key else ""
        said = f"your {piece.style}{in_key} for {', '.join(piece.heard())} is "
        return Planned(
            piece.style,
            ack=lambda place: said + place,
            # As heard, a doubled instrument twice: its turn resolves the names again to the same parts.
            instruments=piece.heard() if wanted.instruments else (),
            tempo=wanted.tempo,
            key=piece.key,
        )

    async def _replay(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> Planned:
        wanted = replay_arg(args)
        if isinstance(wanted, str):
            found = await self.store.seed_of_title(wanted)
            if found is None:
                raise CommandError(
                    f"no piece is called '{wanted[:40]}' and it is not a seed; !top lists the favourites"
                )
            wanted = found
        seed = wanted
        record = await self.store.load_piece(seed)
        if record is None:
            raise CommandError(f"no piece has seed {seed}; !top lists the favourites")
        if not self.conductor.replayable(record):
            raise CommandError(
                f"piece {seed} was cut short before it was saved and its model has changed since"
            )
        named = f"{record.title}, " if record.title else ""
        said = f"piece {seed} ({named}{record.recipe.style}) plays again: "
        return Planned(record.recipe.style, ack=lambda place: said + place, seed=seed, counted=False)

    def _may_request(self, msg: ChatMessage, now: float) -> bool:
        """Check the viewer's cooldown (redemptions and moderators skip it); whether the request is priority."""
        priority = msg.reward_id is not None or msg.is_privileged
        wait = self.cooldowns.request_wait(msg.user_id, now, exempt=priority)
        if wait > 0:
            raise CommandError(f"one request at a time: try again in {wait:.0f} s")
        return priority

    async def _enqueue(
        self,
        msg: ChatMessage,
        now: float,
        priority: bool,
        style: str,
        instruments: tuple[str, ...] = (),
        tempo: float | None = None,
        seed: int | None = None,
        key: str | None = None,
    ) -> str:
        """Queue the request, start the cooldown, and say where it stands: "#2 in the queue, starting ...".

        While Redis is away, and until what waits in the journal is written, the request joins the journal.
        """
        request = SongRequest(
            user_id=msg.user_id,
            login=msg.login,
            style=style,
            instruments=instruments,
            tempo=tempo,
            seed=seed,
            key=key,
            priority=priority,
            requested_at=now,
        )
        entry = None
        if not self.journal:  # while requests wait in the journal, nothing overtakes them
            try:
                entry = await self.store.enqueue(request)
            except StoreUnavailable as exc:
                self._went_away(exc)
        if entry is None:
            self.journal.add_request(request)
            self.cooldowns.requested(msg.user_id, now, exempt=priority)
            return NOTED
        self.cooldowns.requested(msg.user_id, now, exempt=priority)
        self.conductor.request_arrived()
        eta = self.conductor.queue_eta(entry.position)[-1]
        return f"#{entry.position} in the queue, {_minutes(eta)}"

    async def _queue(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        entries = await self.store.queue()
        mine = [e.position for e in entries if e.request.user_id == msg.user_id]
        where = f"; yours: #{', #'.join(map(str, mine))}" if mine else ""
        return self._info(msg, f"{len(entries)} request{'s' * (len(entries) != 1)} in the queue{where}")

    async def _np(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        slot = self.conductor.current
        if slot is None:
            return self._info(msg, "nothing is playing right now; !compose something!")
        r = slot.record
        who = f", asked for by {slot.request.login}" if slot.request else ""
        votes = await self.store.votes(r.seed)
        return self._info(
            msg,
            f"{_named(self.conductor.title_of(r))}{r.recipe.style} for {', '.join(r.recipe.heard())}{who}: "
            f"seed {r.seed}, {votes} votes (!replay {r.seed})",
        )

    async def _cancel(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        removed = self.journal.withdraw(msg.user_id) or await self.store.cancel_latest(msg.user_id)
        if removed is None:
            raise CommandError("you have no request in the queue")
        return self._info(msg, f"your {removed.style} request is withdrawn")

    async def _vote(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        seed = self.conductor.vote_target(self.settings.concert.vote_grace_seconds)
        if seed is None:
            raise CommandError("nothing to vote for right now")
        try:
            outcome = await self.store.vote(seed, msg.user_id, self.conductor.stream_id, self.conductor.wall())
        except StoreUnavailable as exc:
            self._went_away(exc)
            self.journal.add_vote(seed, msg.user_id, self.conductor.stream_id, self.conductor.wall())
            return [
                Reply(
                    f"your vote for {seed} is noted; it counts once the store is back",
                    Importance.ACK,
                    None,
                    msg.login,
                )
            ]
        if outcome is VoteOutcome.COUNTED:
            self.votes += 1
            return [Reply(f"your vote for {seed} is counted", Importance.ACK, None, msg.login)]
        if outcome is VoteOutcome.ALREADY_VOTED:
            raise CommandError(f"you already voted for {seed}")
        raise CommandError("that piece has not played yet")

    async def _voteskip(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        votes, needed, skipped = self.conductor.voteskip(msg.user_id, self.chatters.count(now))
        if needed == 0:
            raise CommandError("nothing is playing")
        if skipped:
            return [Reply("the audience has spoken: skipping", Importance.NOW_PLAYING)]
        return [Reply(f"skip votes {votes}/{needed}", Importance.ACK, None, msg.login)]

    async def _steer(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        """!faster, !add harp, ...: a vote on the piece that plays (a moderator's passes at once)."""
        kind, arg = steer_arg(args)
        chatters = self.chatters.count(now)
        text, passed = self.conductor.steer(msg.user_id, kind, arg, chatters, now, msg.is_privileged)
        if passed:
            return [Reply(text, Importance.NOW_PLAYING)]
        return [Reply(text, Importance.ACK, None, msg.login)]

    async def _top(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        period = period_arg(args)
        board = await self.store.top(period, self.conductor.stream_id, self.conductor.wall(), n=5)  # type: ignore[arg-type]
        # "top of all time", never "top of the all".
        named, empty = (
            ("all time", "no votes yet")
            if period == "all"
            else (f"the {period}", f"no votes this {period} yet")
        )
        if not board:
            return self._info(msg, f"{empty}: !vote for the piece you like")
        parts = []
        for rank, entry in enumerate(board, 1):
            record = await self.store.load_piece(entry.seed)
            style = record.recipe.style if record else "?"
            parts.append(f"#{rank} {entry.seed} ({style}, {entry.votes})")
        return self._info(msg, f"top of {named}: " + " ".join(parts) + " - !replay <seed>")

    async def _styles(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        return self._info(msg, "styles: " + ", ".join(self.conductor.loaded.vocab.styles))

    async def _instruments(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        return self._info(msg, "instruments: " + ", ".join(i.name for i in INSTRUMENTS))

    async def _help(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        return self._info(msg, help_text())

    # Moderators and the broadcaster.

    async def _skip(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        self.conductor.skip()
        return self._info(msg, "skipped")

    async def _pause(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        await self.conductor.pause()
        return self._info(msg, "paused; !resume to go on")

    async def _resume(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        await self.conductor.resume()
        return self._info(msg, "resumed")

    async def _clear(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        dropped = await self.store.clear_queue()
        return self._info(msg, f"queue cleared ({dropped} requests)")

    async def _remove(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        login = login_arg(args)
        return self._info(msg, f"removed {await self.store.remove_viewer(login)} requests of {login}")

    async def _block(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        login = login_arg(args)
        dropped = await self.store.block(login)
        return self._info(msg, f"{login} is ignored from now on ({dropped} requests removed)")

    async def _unblock(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        login = login_arg(args)
        await self.store.unblock(login)
        return self._info(msg, f"{login} may request again")

    async def _autoplay(self, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        on = on_off_arg(args)
        await self.store.set_flags(autoplay=on)
        return self._info(msg, f"autoplay {'on' if on else 'off'}")


# What each command of `COMMANDS` does: a handler answers, or (a request) gives back what to queue.
Handler = Callable[[ChatCommands, ChatMessage, tuple[str, ...], float], Awaitable[list[Reply] | Planned]]
HANDLERS: Mapping[str, Handler] = {
    "compose": ChatCommands._compose,
    "queue": ChatCommands._queue,
    "np": ChatCommands._np,
    "vote": ChatCommands._vote,
    "voteskip": ChatCommands._voteskip,
    "top": ChatCommands._top,
    "replay": ChatCommands._replay,
    "cancel": ChatCommands._cancel,
    "styles": ChatCommands._styles,
    "instruments": ChatCommands._instruments,
    "steer": ChatCommands._steer,
    "help": ChatCommands._help,
    "skip": ChatCommands._skip,
    "pause": ChatCommands._pause,
    "resume": ChatCommands._resume,
    "clear": ChatCommands._clear,
    "remove": ChatCommands._remove,
    "block": ChatCommands._block,
    "unblock": ChatCommands._unblock,
    "autoplay": ChatCommands._autoplay,
}
if HANDLERS.keys() != COMMANDS.keys():  # at import, so that a command without a handler never ships
    raise RuntimeError(f"commands and handlers differ: {sorted(HANDLERS.keys() ^ COMMANDS.keys())}")


def _named(title: str | None) -> str:
    return f"{title}: " if title else ""


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return "starting within a minute"
    return f"starting in about {round(seconds / 60)} min"


__all__ = ["HANDLERS", "ChatCommands", "Planned", "QueueRefused", "Reply", "went_wrong"]
