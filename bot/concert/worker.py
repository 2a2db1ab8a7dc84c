"""`concertbot worker`: samples pieces for concerts that send them over Redis Streams (bot.concert.remote).

Each worker is one consumer of the `workers` group on `gen:jobs`: it takes a job (XREADGROUP), streams the
piece's tokens onto the job's own stream and acknowledges the job with its last tokens. Several workers, on any
machines that reach the Redis, share the jobs. A worker refreshes its claim on its job with every write and at
least a few times a second while it catches up (XCLAIM of its own entry, which resets the entry's idle time); a
job whose claim has not been refreshed for `claim_idle_seconds` belongs to a dead worker, and the next worker
looking for work takes it over (XAUTOCLAIM) before any new job.

Taking over needs no saved state: sampling is deterministic for a request, so the new worker samples the piece
again from the start, checks its tokens against those still in the stream, and writes only those after the last
one written. Every write is one Lua script that first checks that this worker still owns the job and that the
stream ends exactly where the worker thinks it does, so a worker that was only slow, not dead, and lost its job
can never write a token twice or out of order.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from bot.concert.remote import GROUP, connect, ensure_group, pack, unpack
from bot.state.keys import Keys, job_part
from generator.decode import STEPS_PER_BEAT
from generator.model import LoadedModel
from generator.recipes import RequestError, recipe_from_dict
from generator.sampling import Composer, PieceRequest
from generator.vocab import KIND_TIMESHIFT

log = logging.getLogger(__name__)

# A piece's opening goes out every 50 ms, for the concert's first audio; after it, chunks of 64 tokens or a
# quarter second's worth, so that a piece sampled far ahead of its listener stays a few thousand entries long,
# well inside OUT_MAXLEN even for an hour's piece, and nothing unread is trimmed.
OPENING_TOKENS = 64
OPENING_FLUSH_SECONDS = 0.05
FLUSH_SECONDS = 0.25
FLUSH_TOKENS = 64
POLL_SECONDS = 0.05  # a busy batching worker looks for new jobs this often
# An idle worker waits this long for a new job before it looks for dead workers' jobs again: a quarter of a
# second of a takeover's delay, for two small commands four times a second.
IDLE_POLL_MS = 250
# Entries kept per piece stream (~ trimming). At most four writes a second (or one per 64 tokens), so the tail a
# listener has not read yet stays below this for any piece up to the hour a request may last.
OUT_MAXLEN = 10_000
OUT_TTL_SECONDS = 3600  # a piece stream nobody reads any more goes away on its own
DEPARTED_SECONDS = 24 * 3600.0  # a worker name that has not read for a day belongs to a stopped worker
MAX_DELIVERIES = 5  # a job that every worker died on this often is failed instead of killing the next one

Outcome = Literal["done", "failed", "stopped", "lost", "abandoned"]

# KEYS: jobs stream, the job's out stream, the job's stop flag.
# ARGV: group, job entry id, consumer, first token index, token count, packed tokens, done (0/1), error text,
# MAXLEN, TTL. Returns ok, lost (another worker owns the job), stopped, finished (already ended) or gap.
APPEND = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then
  return 'lost'
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 'stopped'
end
local written = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  local i, n = 0, 0
  for k = 1, #f, 2 do
    if f[k] == 'i' then i = tonumber(f[k + 1])
    elseif f[k] == 'n' then n = tonumber(f[k + 1])
    elseif f[k] == 'done' or f[k] == 'error' then return 'finished' end
  end
  written = i + n
end
if tonumber(ARGV[4]) ~= written then
  return 'gap'
end
local final = ARGV[7] == '1' or ARGV[8] ~= ''
if tonumber(ARGV[5]) > 0 or final then
  local fields = {'i', ARGV[4], 'n', ARGV[5], 't', ARGV[6], 'w', ARGV[3]}
  if ARGV[7] == '1' then
    fields[#fields + 1] = 'done'
    fields[#fields + 1] = '1'
  end
  if ARGV[8] ~= '' then
    fields[#fields + 1] = 'error'
    fields[#fields + 1] = ARGV[8]
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*', unpack(fields))
  redis.call('EXPIRE', KEYS[2], ARGV[10])
end
if final then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
end
return 'ok'
"""


@dataclass(frozen=True)
class Job:
    """One piece to sample, as taken from the jobs stream."""

    entry: str  # its entry id in the jobs stream: what is claimed and acknowledged
    job: str
    request: PieceRequest | None  # None when it could not be read: `problem` says why
    model: str
    taken_over: bool  # claimed from a worker that stopped refreshing it
    problem: str = ""  # why this worker cannot sample it (another model, an unreadable request)


@dataclass(frozen=True)
class Served:
    """How a job went on this worker, for logs and tests."""

    job: str
    outcome: Outcome
    resumed_at: int  # tokens already in the stream when this worker took the job
    written: int  # tokens in the stream when this worker let go of it


def worker_name() -> str:
    """A consumer name unique to this process: host, pid and a random tail (pids are reused after a crash)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Takes jobs from the group and samples them, one at a time, until `stop` is set."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        composer: Composer,
        model_version: str,
        name: str | None = None,
        claim_idle_seconds: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        departed_seconds: float = DEPARTED_SECONDS,
    ) -> None:
        """Args:
        client: the Redis the concerts send jobs to.
        keys: the generation namespace's key names.
        composer: the loaded model; a job asking for another `model_version` is failed, not sampled.
        name: this worker's consumer name (default: host-pid-random).
        claim_idle_seconds: how long another worker's job must have gone unrefreshed to be taken over.
        clock: monotonic seconds, for when to write and refresh.
        departed_seconds: other workers' names idle this long, holding no job, are dropped from the group.
        """
        self.client: Any = client  # redis-py's reply types are too loose to check; the protocol says what comes
        self.keys = keys
        self.composer = composer
        self.model_version = model_version
        self.name = name or worker_name()
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        # Several refreshes per claim period, so one slow write or step never makes a live worker look dead.
        self.heartbeat = min(0.5, claim_idle_seconds / 4)
        self.clock = clock
        self.served: list[Served] = []
        self.steps = 0  # batched steps taken, and the pieces in them summed: rows / steps is the mean batch
        self.rows = 0
        self.held = 0  # pieces held out of steps (`ahead`), summed over the loop's turns
        self._append: Any = client.register_script(APPEND)
        self._redis_down = False
        ensure_group(client, keys)
        # Listed in the group from now on (XINFO CONSUMERS), not only once it first gets a job.
        self.client.xgroup_createconsumer(keys.gen_jobs, GROUP, self.name)
        self._forget_departed(departed_seconds)

    def run(self, stop: threading.Event | None = None, batch: int = 1, ahead: float | None = None) -> None:
        """Serve jobs until `stop` is set: one at a time, or up to `batch` together (generator.batch).

        `ahead` (batching only): a new piece sits out the batch's steps while its music runs more than this many
        seconds ahead of the time since it was taken, so the steps go to the pieces its listeners need next.
        """
        stop = stop or threading.Event()
        log.info("worker %s waiting for pieces on %s", self.name, self.keys.gen_jobs)
        while not stop.is_set():
            try:
                if batch > 1:
                    self._run_batched(stop, batch, ahead)
                elif (job := self.next_job()) is not None:
                    self.served.append(self.serve(job, stop))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # A job it held stays pending under its name: once Redis is back, it (or another) takes it over.
                if not self._redis_down:  # said once per outage, not every second of it
                    log.warning("worker %s cannot reach Redis (%s); trying every second", self.name, exc)
                self._redis_down = True
                stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # A Redis that came back without its data: the group again, and the concerts' new jobs in it.
                log.warning("worker %s found no consumer group on %s; making it again", self.name, exc)
                ensure_group(self.client, self.keys)

    def next_job(self, block_ms: int | None = IDLE_POLL_MS, patience: float = 1.0) -> Job | None:
        """A dead worker's job if there is one (a concert is already playing it), else a new one, else None.

        `block_ms` None returns at once when no job is waiting. A job counts as a dead worker's once unrefreshed
        for `patience` times the claim's idle time.
        """
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = self.client.xautoclaim(
                self.keys.gen_jobs, GROUP, self.name, int(self.claim_idle_ms * patience), cursor, count=1
            )
            if self._redis_down:
                log.info("worker %s reaches Redis again", self.name)
                self._redis_down = False
            for entry, fields in claimed:
                if fields is not None and (job := self._job(entry, fields, taken_over=True)) is not None:
                    return job
            if cursor in (b"0-0", "0-0"):
                break
        reply = self.client.xreadgroup(GROUP, self.name, {self.keys.gen_jobs: ">"}, count=1, block=block_ms)
        for _, entries in reply or []:
            for entry, fields in entries:
                if (job := self._job(entry, fields, taken_over=False)) is not None:
                    return job
        return None

    def serve(self, job: Job, stop: threading.Event | None = None) -> Served:
        """Sample the job's piece, writing the tokens after those already in its stream; how it ended."""
        serving = _Serving(self, job)
        if serving.outcome is not None or job.request is None:
            return serving.served()
        try:
            for token in self.composer.stream(job.request):
                if stop is not None and stop.is_set():
                    serving.outcome = "abandoned"  # as if this worker died: another one takes the piece over
                if not serving.feed(token):
                    break
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # the claim lapses, and a worker (this one, once Redis is back) takes the piece over
        except Exception as exc:
            log.exception("worker %s failed piece %s", self.name, job.job)
            serving.fail(f"the worker failed: {type(exc).__name__}: {exc}")
        return serving.served()

    def _run_batched(self, stop: threading.Event, size: int, ahead: float | None = None) -> None:
        """Up to `size` pieces at once, one batched forward pass per step; each piece's tokens are its own."""
        from generator.batch import BatchComposer, BatchPiece  # only a batching worker needs it

        active: dict[int, tuple[BatchPiece, _Serving]] = {}  # by id(piece)
        polled = float("-inf")
        with BatchComposer(self.composer) as batch:
            try:
                while not stop.is_set():
                    # New work at most every POLL_SECONDS while busy: two round trips per step would cost more
                    # than a small batch's forward pass.
                    if len(active) < size and (not active or self.clock() - polled >= POLL_SECONDS):
                        polled = self.clock()
                        while len(active) < size:
                            # Twice the patience with a dead worker's job: it catches up one token per step
                            # of this whole batch, so a one-at-a-time worker, if there is one, takes it first.
                            job = self.next_job(block_ms=IDLE_POLL_MS if not active else None, patience=2.0)
                            if job is None:
                                break
                            serving = _Serving(self, job)
                            if serving.outcome is None and job.request is not None:
                                try:
                                    piece = batch.add(job.request)
                                    active[id(piece)] = (piece, serving)
                                    continue
                                except Exception as exc:  # one bad piece must not stop the others
                                    log.exception("worker %s failed piece %s", self.name, job.job)
                                    serving.fail(f"the worker failed: {type(exc).__name__}: {exc}")
                            self.served.append(serving.served())
                    if not active:
                        continue
                    # Every live piece gets one token a step, so a step's time sets a piece's pace: a batch
                    # full of pieces far ahead of their listeners starves a dense one that is not.
                    now = self.clock()
                    held = [p for p, s in active.values() if ahead is not None and s.ahead(now) > ahead]
                    self.held += len(held)
                    if len(held) == len(active):
                        stop.wait(POLL_SECONDS)
                        continue
                    skip = {id(p) for p in held}
                    batch.live = [p for p in batch.live if id(p) not in skip]
                    try:
                        stepped = batch.step()
                    finally:
                        batch.live = batch.live + held
                    self.steps += 1
                    self.rows += len(active) - len(held)
                    for piece, token in stepped:
                        active[id(piece)][1].feed(token)
                    # A piece with a critic yields nothing while its bar's candidates are sampled, seconds in a
                    # full batch: its claim is refreshed anyway, or this worker (or another) takes it "over".
                    for _, serving in active.values():
                        if serving.outcome is None and not serving.writer.beat():
                            serving.outcome = serving.writer.status
                    for key, (piece, serving) in list(active.items()):
                        if piece.error is not None and serving.outcome is None:
                            log.error("worker %s failed piece %s: %r", self.name, serving.job.job, piece.error)
                            serving.fail(f"the worker failed: {type(piece.error).__name__}: {piece.error}")
                        if piece.done or serving.outcome is not None:
                            batch.cancel(piece)
                            del active[key]
                            self.served.append(serving.served())
            finally:
                for _, serving in active.values():  # stopped or Redis gone: another worker takes these over
                    serving.outcome = serving.outcome or "abandoned"
                    self.served.append(serving.served())

    def _job(self, entry: bytes | str, fields: dict[bytes, bytes], taken_over: bool) -> Job | None:
        entry_id = entry.decode() if isinstance(entry, bytes) else entry
        try:
            job = job_part(fields[b"job"].decode())
        except (KeyError, ValueError, UnicodeDecodeError):
            # Not something a concert of ours sent: drop it rather than trip every worker on it forever.
            log.error("worker %s dropped malformed job %s: %r", self.name, entry_id, fields)
            self.client.xack(self.keys.gen_jobs, GROUP, entry_id)
            self.client.xdel(self.keys.gen_jobs, entry_id)
            return None
        model = fields.get(b"model", b"").decode(errors="replace")
        try:
            # Every field checked here, so that a bad recipe is refused with its field named, not deep in the
            # sampler (where, batched, it could fail more than its own piece).
            request: PieceRequest | None = recipe_from_dict(json.loads(fields[b"request"]))
            problem = f"the worker has model {self.model_version}, the piece needs {model}"
            problem = "" if model == self.model_version else problem
        except (KeyError, ValueError, RequestError) as exc:
            # A concert of another version, say: told to it through the piece's stream, not dropped in silence.
            request, problem = None, f"the worker cannot read the request: {exc}"
        return Job(entry_id, job, request, model, taken_over, problem)

    def _progress(self, job: Job) -> tuple[dict[int, int], int]:
        """The tokens still in the job's stream by index, and how many it has had in all."""
        retained: dict[int, int] = {}
        written = 0
        for _, fields in self.client.xrange(self.keys.gen_out(job.job)):
            start = int(fields[b"i"])
            chunk = unpack(fields[b"t"])
            retained.update(zip(range(start, start + len(chunk)), chunk, strict=True))
            written = start + len(chunk)
        return retained, written

    def _forget_departed(self, departed_seconds: float) -> None:
        """Drop the names of workers long gone that hold nothing, or every restart would add one for good."""
        for consumer in self.client.xinfo_consumers(self.keys.gen_jobs, GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if consumer["pending"] == 0 and consumer["idle"] > departed_seconds * 1000 and name != self.name:
                self.client.xgroup_delconsumer(self.keys.gen_jobs, GROUP, name)

    def _deliveries(self, job: Job) -> int:
        pending = self.client.xpending_range(self.keys.gen_jobs, GROUP, job.entry, job.entry, 1)
        return int(pending[0]["times_delivered"]) if pending else 0


class _Serving:
    """One job on this worker: where its stream stood when taken, and what each token sampled for it does."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job
        self.retained, self.resumed_at = worker._progress(job)
        self.writer = _Writer(worker, job, self.resumed_at)
        self.index = 0  # of the next token sampled
        self.eos = worker.composer.vocab.eos
        self.outcome: Outcome | None = None  # set once the job has ended here
        self.started = worker.clock()
        self.music = 0.0  # seconds of music in the tokens sampled so far
        self._tempo = job.request.tempo if job.request is not None else 120.0
        if job.taken_over:
            log.info("worker %s took over piece %s at token %d", worker.name, job.job, self.resumed_at)
        if job.problem:
            self.fail(job.problem)
        elif job.taken_over and worker._deliveries(job) > MAX_DELIVERIES:
            self.fail(f"{MAX_DELIVERIES} workers stopped on this piece; giving up on it")

    def ahead(self, now: float) -> float:
        """How far its music runs ahead of the time since it was taken; 0 for a piece taken over (its listener
        is already into it)."""
        return 0.0 if self.job.taken_over else self.music - (now - self.started)

    def feed(self, token: int) -> bool:
        """Take the next sampled token; False once the job has ended here (`outcome` says how)."""
        if self.outcome is not None:
            return False
        vocab = self.worker.composer.vocab
        if vocab.kind[token] == KIND_TIMESHIFT:
            self.music += int(vocab.value[token]) / STEPS_PER_BEAT * 60.0 / self._tempo
        index = self.index
        self.index += 1
        if index < self.resumed_at:
            # Sampling again up to where the last worker stopped: its tokens must come out the same.
            if self.retained.get(index, token) != token:
                self.fail(f"resampled token {index} differs from the stream's (another model or device?)")
            elif token == self.eos:
                self.outcome = self.writer.finish()
            elif not self.writer.beat():
                self.outcome = self.writer.status
        elif token == self.eos:
            self.outcome = self.writer.finish(token)
        elif not self.writer.add(token):
            self.outcome = self.writer.status
        return self.outcome is None

    def fail(self, error: str) -> None:
        self.outcome = self.writer.fail(error)

    def served(self) -> Served:
        """How it went, said once in the log: the operator's one line per piece."""
        done = Served(self.job.job, self.outcome or "abandoned", self.resumed_at, self.writer.written)
        seconds = self.worker.clock() - self.started
        log.info(
            "worker %s: piece %s %s after %.1f s, tokens %d-%d (%s)",
            self.worker.name,
            done.job,
            done.outcome,
            seconds,
            done.resumed_at,
            done.written,
            "taken over" if self.job.taken_over else "new",
        )
        return done


class _Writer:
    """Buffers one job's new tokens and writes them through the APPEND script."""

    def __init__(self, worker: Worker, job: Job, written: int) -> None:
        self.worker = worker
        self.job = job
        self.written = written
        self.buffer: list[int] = []
        self.last = float("-inf")  # the first token goes out at once: the concert is waiting for it
        self.status: Outcome = "done"

    def add(self, token: int) -> bool:
        self.buffer.append(token)
        every = (
            OPENING_FLUSH_SECONDS
            if self.written < OPENING_TOKENS
            else min(FLUSH_SECONDS, self.worker.heartbeat)
        )
        if self.worker.clock() - self.last >= every or len(self.buffer) >= FLUSH_TOKENS:
            return self._write()
        return True

    def beat(self) -> bool:
        """Refresh the claim while catching up, at most every heartbeat."""
        if self.worker.clock() - self.last >= self.worker.heartbeat:
            return self._write()
        return True

    def finish(self, last: int | None = None) -> Outcome:
        """Write what is left, and `last` (the EOS), as the job's final entry, acknowledging it."""
        if last is not None:
            self.buffer.append(last)
        self._write(done=True)
        return self.status

    def fail(self, error: str) -> Outcome:
        log.error("piece %s failed on worker %s: %s", self.job.job, self.worker.name, error)
        self.buffer = []
        return "failed" if self._write(error=error) else self.status

    def _write(self, done: bool = False, error: str = "") -> bool:
        w = self.worker
        keys = [w.keys.gen_jobs, w.keys.gen_out(self.job.job), w.keys.gen_stop(self.job.job)]
        args = [GROUP, self.job.entry, w.name, self.written, len(self.buffer), pack(self.buffer)]
        args += ["1" if done else "0", error, OUT_MAXLEN, OUT_TTL_SECONDS]
        reply = w._append(keys=keys, args=args)
        status = reply.decode() if isinstance(reply, bytes) else str(reply)
        self.last = w.clock()
        if status != "ok":
            self.status = "stopped" if status in ("stopped", "finished") else "lost"
            if status in ("lost", "gap"):
                log.warning("worker %s no longer owns piece %s (%s); leaving it", w.name, self.job.job, status)
            return False
        self.written += len(self.buffer)
        self.buffer = []
        return True


def run_worker(
    redis_url: str,
    loaded: LoadedModel,
    namespace: str,
    claim_idle_seconds: float = 3.0,
    device: str = "cpu",
    name: str | None = None,
    batch: int = 1,
    ahead: float | None = None,
) -> None:
    """Serve jobs until interrupted (Ctrl-C, SIGTERM); a piece cut off here is taken over by another worker."""
    worker = Worker(
        connect(redis_url), Keys(namespace), Composer(loaded, device), loaded.version, name, claim_idle_seconds
    )
    try:
        worker.run(batch=batch, ahead=ahead)
    finally:
        # How full its batch ran: what an operator sizing --batch (and bench_concerts) reads.
        mean = worker.rows / worker.steps if worker.steps else 0.0
        log.info(
            "worker %s stopped: %d pieces, %d steps, mean batch %.2f",
            worker.name,
            len(worker.served),
            worker.steps,
            mean,
        )
