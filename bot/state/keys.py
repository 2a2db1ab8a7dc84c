"""Every Redis key name the bot uses, in one place.

A key name is built only from the namespace, constants, numeric seeds, ISO week numbers and `token()`s of ids.
Nothing a viewer types reaches a key name as typed: user, stream and login strings become tokens first.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from config.errors import ConfigError

DEFAULT_NAMESPACE = "concertbot"
MAX_SEED = 2**63  # exclusive; what `PieceRequest.seed` allows
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TWITCH_ID = re.compile(r"[0-9]{1,20}")
_JOB = re.compile(r"[0-9a-f]{32}")


def token(value: str) -> str:
    """A short, key-safe stand-in for an id: Twitch's numeric ids as they are, anything else hashed.

    The hashed form starts with "h", so it never equals a numeric id, and its length is fixed however long
    or strange the id ("local:<name>", a 10 kB paste) is.
    """
    if _TWITCH_ID.fullmatch(value):
        return value
    # surrogatepass: a str from a badly decoded chat line may hold lone surrogates; they still hash uniquely.
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return "h" + digest


def seed_part(seed: int) -> str:
    """A seed as it appears in key names and sorted-set members: 19 digits, so text order is number order."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an int from 0 to 2^63-1, not {seed!r}")
    return f"{seed:019d}"


def job_part(job: str) -> str:
    """A generation job's id as it appears in key names: the 32 hex digits of a uuid4, nothing else."""
    if not isinstance(job, str) or not _JOB.fullmatch(job):
        raise ValueError(f"a generation job id is 32 hex digits, not {job!r}")
    return job


def iso_week(now: float) -> str:
    """The ISO week `now` (seconds since the epoch) falls in, in UTC, e.g. "2024-W02"."""
    year, week, _ = datetime.fromtimestamp(now, tz=UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


class Keys:
    """The key names of one namespace; tests give each test its own namespace."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(
                f"Redis namespace {namespace!r} is not allowed; use 1-64 letters, digits, '_', '.' or '-'"
            )
        self.namespace = namespace
        prefix = namespace + ":"
        self.queue_normal = prefix + "queue:normal"  # zset: request id -> round (round-robin lane)
        self.queue_priority = prefix + "queue:priority"  # zset: request id -> arrival number
        self.queue_items = prefix + "queue:items"  # hash: request id -> request JSON
        self.queue_viewers = prefix + "queue:viewers"  # hash: request id -> viewer token
        self.queue_logins = prefix + "queue:logins"  # hash: request id -> lower-case login
        self.queue_seq = prefix + "queue:seq"  # counter behind request ids
        self.queue_round = prefix + "queue:round"  # the round of the last request played from the normal lane
        self.queue_served = prefix + "queue:served"  # hash: viewer token -> round of their last played request
        self.blocked = prefix + "blocked"  # set of lower-case logins
        self.state = prefix + "state"  # hash: paused, autoplay, stream_id
        self.playing = prefix + "playing"  # hash: the now-playing record
        self.board_all = prefix + "board:all"  # zset: seed_part -> votes
        self.titles = prefix + "titles"  # hash: normalised title -> seed_part of the first piece so named
        self.gen_jobs = prefix + "gen:jobs"  # stream: pieces for `concertbot worker`s (bot.concert.remote)
        self.journal_written = prefix + "journal:written"  # hash: outage-journal entry id -> request id

    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this namespace and nothing else."""
        return self.namespace + ":*"

    def piece(self, seed: int) -> str:
        """Hash: recipe JSON, packed tokens and their checksums."""
        return f"{self.namespace}:piece:{seed_part(seed)}"

    def played(self, seed: int) -> str:
        """Hash: when the piece last started and ended playing."""
        return f"{self.namespace}:played:{seed_part(seed)}"

    def votes(self, seed: int) -> str:
        """Set of the tokens of viewers who voted for the piece."""
        return f"{self.namespace}:votes:{seed_part(seed)}"

    def gen_out(self, job: str) -> str:
        """Stream: the tokens of one generation job, in order, as its workers write them."""
        return f"{self.namespace}:gen:out:{job_part(job)}"

    def gen_stop(self, job: str) -> str:
        """Flag: the concert no longer wants the job's piece."""
        return f"{self.namespace}:gen:stop:{job_part(job)}"

    def board_week(self, now: float) -> str:
        return f"{self.namespace}:board:week:{iso_week(now)}"

    def board_stream(self, stream_id: str) -> str:
        return f"{self.namespace}:board:stream:{token(stream_id)}"
