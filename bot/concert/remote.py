"""Pieces sampled by `concertbot worker` processes elsewhere, read back over Redis Streams.

The protocol, shared with bot/concert/worker.py (key names in bot.state.keys):
- `gen:jobs`, a stream read by the consumer group `workers`: one entry per piece, {job, request, model}.
- `gen:out:<job>`, the piece's own stream: entries {i, n, t, w}, `n` tokens packed in `t` starting at token
  index `i`, written by worker `w`; the last entry also has done=1, or error=<text> when the piece failed. Each
  entry's `i` is the previous entry's i + n, so a reader sees at once if anything was lost, and the last entry
  tells a worker taking the job over how far the piece got, even after old entries were trimmed.
- `gen:stop:<job>`, set by the concert when it no longer wants the piece (skipped, ended, given up on).

`RemoteGenerationWorker` is the concert's generator with the sampling done remotely: a
bot.concert.batchloop.SourcedWorker whose token source is the `GenerationClient`, so the same `submit` and the
same feeds as bot.concert.live.GenerationWorker, and a replay still plays its stored tokens, asking no one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import redis

from bot.concert.batchloop import SourcedWorker
from bot.state.keys import Keys
from config.errors import ConcertbotError, ConfigError
from config.settings import Settings
from generator.sampling import Composer, PieceRequest
from generator.steer import Steering

GROUP = "workers"
TOKEN_DTYPE = "<i4"
READ_COUNT = 256  # stream entries per XREAD: a few thousand tokens at most
POLL_MS = 1000  # how long one XREAD blocks, so a stop or a deadline is noticed within a second
STOP_TTL_SECONDS = 3600  # a stop flag outlives any worker that might still be on the job


class RemoteGenerationError(ConcertbotError):
    """No worker wrote the piece in time, a worker failed it, or its stream lost tokens."""


def pack(tokens: list[int]) -> bytes:
    return np.asarray(tokens, dtype=TOKEN_DTYPE).tobytes()


def unpack(packed: bytes) -> list[int]:
    return [int(t) for t in np.frombuffer(packed, dtype=TOKEN_DTYPE)]


def ensure_group(client: redis.Redis, keys: Keys) -> None:
    """The workers' consumer group, from the stream's start: no job sent before the group existed is missed."""
    try:
        client.xgroup_create(keys.gen_jobs, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def connect(redis_url: str) -> redis.Redis:
    # A socket timeout longer than any blocking read, so a dead server is noticed and not waited on forever.
    return redis.Redis.from_url(redis_url, socket_timeout=POLL_MS / 1000 + 10, socket_connect_timeout=5)


class GenerationClient:
    """Sends pieces to the workers and reads their tokens back; thread-safe (redis-py's pool). A token source
    (bot.concert.batchloop.TokenSource) for a channel's generation thread."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        model_version: str,
        wait_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        client: a connection to the Redis the workers read.
        keys: the generation namespace's key names (generation.namespace).
        model_version: the model this concert decodes with; a worker with another model refuses the job.
        wait_seconds: a piece fails when no new tokens have come for this long.
        clock: monotonic seconds, for `wait_seconds`.
        """
        self.client: Any = client  # redis-py's reply types are too loose to check; the protocol says what comes
        self.keys = keys
        self.model_version = model_version
        self.wait_seconds = wait_seconds
        self.clock = clock
        ensure_group(client, keys)

    def submit(self, request: PieceRequest) -> str:
        """Queue a piece for the workers; its job id."""
        job = uuid.uuid4().hex
        recipe = json.dumps(request.to_dict(), sort_keys=True)  # read back with PieceRequest.from_dict
        fields = {"job": job, "request": recipe, "model": self.model_version}
        self.client.xadd(self.keys.gen_jobs, fields)
        return job

    def tokens(self, job: str, cancelled: Callable[[], bool] = lambda: False) -> Iterator[int]:
        """The piece's tokens in order as workers write them, to the last (EOS), or until `cancelled()`.

        Raises:
            RemoteGenerationError: a worker failed the piece, tokens went missing, or nothing came in time.
        """
        out = self.keys.gen_out(job)
        last_id = "0-0"
        expected = 0
        heard = self.clock()
        while True:
            try:
                reply = self.client.xread({out: last_id}, count=READ_COUNT, block=POLL_MS)
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis restarting: the workers keep their place, so keep asking until the wait runs out.
                reply = []
                time.sleep(0.2)
            if not reply:
                if cancelled():
                    return  # skipped while waiting: the concert must not wait out `wait_seconds` for it
                if self.clock() - heard > self.wait_seconds:
                    raise RemoteGenerationError(
                        f"no generation worker wrote piece {job} for {self.wait_seconds:g} s; "
                        "is `concertbot worker` running against this Redis and generation.namespace?"
                    )
                continue
            heard = self.clock()
            for entry_id, fields in reply[0][1]:
                last_id = entry_id
                if b"error" in fields:
                    raise RemoteGenerationError(f"piece {job}: {fields[b'error'].decode()}")
                start = int(fields[b"i"])
                if start != expected:
                    raise RemoteGenerationError(
                        f"piece {job}: its stream skips from token {expected} to {start} (trimmed unread?)"
                    )
                chunk = unpack(fields[b"t"])
                expected += len(chunk)
                yield from chunk
                if b"done" in fields:
                    return

    def __call__(
        self, request: PieceRequest, steering: Steering | None, cancelled: Callable[[], bool]
    ) -> Iterator[int]:
        """The piece's tokens, sent to the workers when its turn comes (as the in-process generator starts it:
        a concert has one piece at a time out with them), until their end or until `cancelled()` while no
        tokens come. Done, skipped or failed alike, its worker stops and its stream goes once it is read.
        The workers sample the request as it is: `steering` stays with the channel.

        Raises:
            RemoteGenerationError: as `tokens`.
        """
        job = self.submit(request)
        try:
            yield from self.tokens(job, cancelled)
        finally:
            self.stop(job)

    def stop(self, job: str) -> None:
        """Nobody wants the piece any more: the worker on it stops, and its stream goes."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.gen_stop(job), 1, ex=STOP_TTL_SECONDS)
        pipe.delete(self.keys.gen_out(job))
        pipe.execute()


class RemoteGenerationWorker(SourcedWorker):
    """A channel's generation thread whose pieces `concertbot worker`s sample (generation.remote): its source is
    a `GenerationClient`. Built as SourcedWorker(composer, client, lookahead_seconds, clock)."""

    source: GenerationClient


def remote_worker(
    settings: Settings, composer: Composer, lookahead_seconds: float, clock: Callable[[], float]
) -> RemoteGenerationWorker:
    """The concert's generator when `generation.remote` is on: pieces go to the workers at REDIS_URL.

    Raises:
        ConfigError: no REDIS_URL (the embedded Redis is this process's own; no worker could reach it).
        RemoteGenerationError: that Redis does not answer.
    """
    g = settings.generation
    url = settings.concert.redis_url
    if url is None:
        raise ConfigError("generation.remote = true needs REDIS_URL, the Redis that `concertbot worker`s read")
    try:
        client = GenerationClient(
            connect(url.get_secret_value()), Keys(g.namespace), composer.loaded.version, g.wait_seconds
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RemoteGenerationError(
            f"cannot reach the Redis at REDIS_URL for remote generation: {exc}"
        ) from None
    return RemoteGenerationWorker(composer, client, lookahead_seconds, clock)
