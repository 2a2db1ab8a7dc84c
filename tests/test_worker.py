"""Generator workers over Redis Streams (issue 15): jobs, takeover after a SIGKILL, a concert played remotely.

Everything runs against a real redis-server of the test's own and the shipped model; workers are real
`concertbot worker` processes, or the real worker loop on a thread where a test needs to look inside it.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer

from bot.concert.remote import GROUP, GenerationClient, RemoteGenerationError, connect
from bot.concert.worker import Worker, _Writer
from bot.state.keys import Keys
from config.settings import load_settings
from generator.model import load_model
from generator.recipes import make_request
from generator.sampling import Composer, PieceRequest
from generator.threads import use_torch_threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def composer() -> Composer:
    use_torch_threads("sample")  # as every command samples: one thread (same tokens, far faster when busy)
    return Composer(load_model())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    conn = connect(server.url)
    yield conn
    conn.close()


class _Silence:
    """An audio sink that drops what it is given: these tests listen to the tokens, not the sound."""

    name = "null"

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, block) -> None:
        pass

    def close(self) -> None:
        pass


def _worker_thread(worker: Worker, batch: int = 1) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop, "batch": batch}, daemon=True)
    thread.start()
    return thread, stop


def _served(
    worker: Worker, jobs: GenerationClient, requests: list[PieceRequest], batch: int
) -> list[list[int]]:
    """Each request's tokens as `worker`, on a thread taking up to `batch` pieces together, wrote them."""
    ids = [jobs.submit(r) for r in requests]
    thread, stop = _worker_thread(worker, batch)
    try:
        return [list(jobs.tokens(job)) for job in ids]
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_thread_worker_writes_the_piece_composer_stream_would(client, composer):
    keys = Keys("t1")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    worker = Worker(client, keys, composer, version, name="w1")
    thread, stop = _worker_thread(worker)
    try:
        request = make_request(composer.loaded, "irish", seconds=8.0, seed=11)
        job = jobs.submit(request)
        got = list(jobs.tokens(job))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert got == list(composer.stream(request))
    assert got[-1] == composer.vocab.eos
    assert [s.outcome for s in worker.served] == ["done"]
    # Acknowledged and gone from the jobs stream: nothing left for another worker to pick up.
    assert client.xpending(keys.gen_jobs, GROUP)["pending"] == 0
    assert client.xlen(keys.gen_jobs) == 0


def test_a_batching_worker_samples_pieces_together_each_as_composer_stream_would(client, composer):
    keys = Keys("t6")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    worker = Worker(client, keys, composer, version, name="wb")
    requests = [
        make_request(composer.loaded, "bach", seconds=6.0, seed=1),
        make_request(composer.loaded, "irish", seconds=9.0, seed=2),
        make_request(composer.loaded, "classical", seconds=4.0, seed=3),
    ]
    got = _served(worker, jobs, requests, batch=4)
    assert got == [list(composer.stream(r)) for r in requests]
    assert sorted(s.outcome for s in worker.served) == ["done"] * 3
    assert client.xpending(keys.gen_jobs, GROUP)["pending"] == 0


# Redis's clock (ms) and, for each pending job, when its claim was last taken or refreshed (ms), in one read.
CLAIMS = """
local now = redis.call('TIME')
local at = {}
for _, entry in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100)) do
  at[#at + 1] = entry[1]
  at[#at + 1] = entry[3]
end
return {now[1] * 1000 + math.floor(now[2] / 1000), at}
"""


def test_a_batching_worker_keeps_its_claims_while_a_critic_holds_a_bars_tokens(client, composer):
    # With a critic a piece's tokens come a bar at a time, and a full batch may step for seconds between two
    # bars: the worker must refresh its claims meanwhile, or it (or another) takes its own live job "over".
    # Checked by the order of events, not by how long a step takes: the worker's clock moves a heartbeat at
    # every reading (so every refresh it may make, it makes) and, at each reading, Redis says when each job's
    # claim was last refreshed. The last reading before a step comes after every write of the step before it:
    # by then every job live since that step must have been refreshed after it. The claims' idle time is far
    # longer than the test, so that no claim runs out however slow the machine is.
    keys = Keys("t7")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    readings: list[tuple[int, int, dict[bytes, int]]] = []  # (steps taken, Redis's ms, job -> refreshed at ms)
    ticks = itertools.count()
    worker: list[Worker] = []

    def clock() -> float:
        now, at = client.eval(CLAIMS, 1, keys.gen_jobs, GROUP)
        pending = dict(zip(at[::2], at[1::2], strict=True))
        readings.append((worker[0].steps, now, {entry: now - int(idle) for entry, idle in pending.items()}))
        return float(next(ticks))  # a second a reading: more than the heartbeat

    worker.append(Worker(client, keys, composer, version, name="wc", claim_idle_seconds=600.0, clock=clock))
    assert worker[0].heartbeat < 1.0
    requests = [make_request(composer.loaded, s, seconds=6.0, seed=7, critic=3) for s in ("bach", "classical")]
    got = _served(worker[0], jobs, requests, batch=4)
    assert got == [list(composer.stream(r)) for r in requests]
    assert [s.outcome for s in worker[0].served] == [
        "done",
        "done",
    ]  # no piece taken over from itself, none lost
    after: dict[int, tuple[int, dict[bytes, int]]] = {}  # steps -> the first reading after that step
    before: dict[int, dict[bytes, int]] = {}  # steps -> the last reading before the next step
    for steps, now, refreshed in readings:
        after.setdefault(steps, (now, refreshed))
        before[steps] = refreshed
    # A job live through a step, and still pending before the next: refreshed since that step (1 ms: Redis's
    # clock in a script and TIME may differ by that much).
    checked = [
        (steps, entry, at >= after[steps][0] - 1)
        for steps, refreshed in before.items()
        if steps > 0
        for entry, at in refreshed.items()
        if entry in after[steps][1]
    ]
    late = [(steps, entry) for steps, entry, fresh in checked if not fresh]
    assert len(checked) > 100 and not late, f"{len(late)} of {len(checked)} claims not refreshed after a step"


def test_a_pacing_worker_holds_a_piece_ahead_of_its_time_and_keeps_its_tokens(client, composer):
    keys = Keys("t8")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    worker = Worker(client, keys, composer, version, name="wp")
    requests = [make_request(composer.loaded, s, seconds=5.0, seed=8) for s in ("irish", "folk")]
    ids = [jobs.submit(r) for r in requests]
    stop = threading.Event()
    run = {"stop": stop, "batch": 4, "ahead": 0.5}  # far less than the music: held most of the way
    thread = threading.Thread(target=worker.run, kwargs=run, daemon=True)
    thread.start()
    try:
        got = [list(jobs.tokens(job)) for job in ids]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert got == [list(composer.stream(r)) for r in requests]
    assert [s.outcome for s in worker.served] == ["done", "done"]
    assert worker.held > 0


def test_a_piece_rides_out_a_redis_restart_with_the_same_tokens(server, client, composer, caplog):
    caplog.set_level(logging.INFO, logger="bot.concert.worker")
    keys = Keys("t8")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    worker = Worker(client, keys, composer, version, name="w", claim_idle_seconds=1.0)
    thread, stop = _worker_thread(worker)
    try:
        request = make_request(composer.loaded, "bach", seconds=120.0, seed=9)
        job = jobs.submit(request)
        tokens = jobs.tokens(job)
        got = [next(tokens) for _ in range(100)]
        server.kill()  # SIGKILL mid-piece; its append-only file keeps every write it acknowledged
        time.sleep(1.5)  # long enough for the worker's claim to lapse: it takes its own piece over
        server.start()
        got += list(tokens)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert got == list(composer.stream(request))
    assert worker.served[-1].outcome == "done" and worker.served[-1].resumed_at > 0
    said = [r.getMessage() for r in caplog.records if r.name == "bot.concert.worker"]
    # The outage said once, and its end, however many seconds it lasted.
    assert sum("cannot reach Redis" in m for m in said) == 1
    assert sum("reaches Redis again" in m for m in said) == 1


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("style", "no-such-style", "the worker failed"),  # its model's to say: it lacks the style
        # As a concert of another version, or anything else on the stream, might write it: a recipe with a
        # null temperature reads back as a PieceRequest, and only the sampler would trip on it.
        ("temperature", None, r"cannot read the request: .*temperature None"),
    ],
)
def test_a_piece_the_model_cannot_play_fails_alone_and_says_why(client, composer, batch, field, value, said):
    from dataclasses import replace

    keys = Keys(f"t9-{batch}-{field}")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version, wait_seconds=60)
    worker = Worker(client, keys, composer, version, name="w")
    good = make_request(composer.loaded, "irish", seconds=5.0, seed=2)
    bad = jobs.submit(replace(good, **{field: value}))
    fine = jobs.submit(good)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop, "batch": batch}, daemon=True)
    thread.start()
    try:
        with pytest.raises(RemoteGenerationError, match=said):
            list(jobs.tokens(bad))
        assert list(jobs.tokens(fine)) == list(composer.stream(good))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert thread.is_alive() is False and sorted(s.outcome for s in worker.served) == ["done", "failed"]
    assert [s.written for s in worker.served if s.outcome == "failed"] == [0]  # failed before any token


def test_a_batching_worker_leaves_a_dead_workers_job_to_a_one_at_a_time_worker_first(client, composer):
    keys = Keys("t10")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version)
    dead = Worker(client, keys, composer, version, name="dead")
    job_id = jobs.submit(make_request(composer.loaded, "bach", seconds=5.0, seed=5))
    assert dead.next_job(block_ms=100) is not None  # taken, then never refreshed
    batching = Worker(client, keys, composer, version, name="batching", claim_idle_seconds=2.0)
    single = Worker(client, keys, composer, version, name="single", claim_idle_seconds=2.0)
    time.sleep(2.1)  # idle past one claim period, short of two
    assert batching.next_job(block_ms=None, patience=2.0) is None
    taken = single.next_job(block_ms=None)
    assert taken is not None and taken.job == job_id and taken.taken_over


def test_a_worker_that_lost_its_job_cannot_write_to_it(client, composer):
    keys = Keys("t2")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version)
    slow = Worker(client, keys, composer, version, name="slow")
    other = Worker(client, keys, composer, version, name="other", claim_idle_seconds=0.0)
    job_id = jobs.submit(make_request(composer.loaded, "bach", seconds=5.0, seed=3))
    job = slow.next_job(block_ms=100)
    assert job is not None and not job.taken_over
    writer = _Writer(slow, job, 0)
    writer.buffer = [5, 6]
    assert writer._write() is True
    assert writer.written == 2
    # Taken for dead (any idle time counts for this worker) and claimed by the other one.
    taken = other.next_job(block_ms=100)
    assert taken is not None and taken.taken_over and taken.job == job_id
    assert other._progress(taken) == ({0: 5, 1: 6}, 2)
    writer.buffer = [7]
    assert writer._write() is False
    assert writer.status == "lost" and writer.written == 2
    # The stream holds only what the owner wrote: the slow worker's late token is not in it.
    assert [int(f[b"n"]) for _, f in client.xrange(keys.gen_out(job_id))] == [2]
    fresh = _Writer(other, taken, 2)
    fresh.buffer = [8]
    assert fresh._write() is True
    assert other._progress(taken)[0] == {0: 5, 1: 6, 2: 8}


def test_a_stopped_piece_is_acknowledged_and_its_stream_removed(client, composer):
    keys = Keys("t3")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version)
    worker = Worker(client, keys, composer, version, name="w")
    job_id = jobs.submit(make_request(composer.loaded, "bach", seconds=600.0, seed=5))
    job = worker.next_job(block_ms=100)
    assert job is not None
    stopper = threading.Timer(0.5, jobs.stop, args=(job_id,))
    stopper.start()
    served = worker.serve(job)
    stopper.join()
    assert served.outcome == "stopped"
    assert served.written > 0  # it had started; a 10-minute piece is far from done in half a second
    assert client.xpending(keys.gen_jobs, GROUP)["pending"] == 0
    assert not client.exists(keys.gen_out(job_id))


def test_a_worker_with_another_model_fails_the_piece_with_a_reason(client, composer):
    keys = Keys("t4")
    jobs = GenerationClient(client, keys, "some-other-model")
    worker = Worker(client, keys, composer, composer.loaded.version, name="w")
    job_id = jobs.submit(make_request(composer.loaded, "bach", seconds=5.0, seed=5))
    job = worker.next_job(block_ms=100)
    assert job is not None
    assert worker.serve(job).outcome == "failed"
    with pytest.raises(RemoteGenerationError, match="needs some-other-model"):
        list(jobs.tokens(job_id))


def test_a_starting_worker_forgets_departed_workers_but_not_those_holding_a_job(client, composer):
    keys = Keys("t7")
    version = composer.loaded.version
    jobs = GenerationClient(client, keys, version)
    holder = Worker(client, keys, composer, version, name="holder")
    jobs.submit(make_request(composer.loaded, "bach", seconds=5.0, seed=5))
    assert holder.next_job(block_ms=100) is not None  # now pending under "holder", never refreshed
    Worker(client, keys, composer, version, name="gone")
    time.sleep(0.2)  # both idle longer than the new worker's threshold below
    Worker(client, keys, composer, version, name="new", departed_seconds=0.1)
    names = {c["name"].decode() for c in client.xinfo_consumers(keys.gen_jobs, GROUP)}
    assert names == {"holder", "new"}


def test_remote_generation_without_redis_url_is_a_config_error(composer):
    from bot.concert.remote import remote_worker
    from config.errors import ConfigError

    settings = load_settings(generation={"remote": True}, concert={"redis_url": None})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        remote_worker(settings, composer, 4.0, time.monotonic)


def test_no_worker_means_a_clear_error_not_a_silent_wait(client, composer):
    jobs = GenerationClient(client, Keys("t5"), composer.loaded.version, wait_seconds=0.2)
    job_id = jobs.submit(make_request(composer.loaded, "bach", seconds=5.0, seed=5))
    with pytest.raises(RemoteGenerationError, match="concertbot worker"):
        list(jobs.tokens(job_id))


def _spawn_worker(server: RedisServer, namespace: str, name: str, batch: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCERTBOT_")}
    env |= {
        "REDIS_URL": server.url,
        "CONCERTBOT_GENERATION__NAMESPACE": namespace,
        "CONCERTBOT_GENERATION__CLAIM_IDLE_SECONDS": "1",
    }
    cmd = [sys.executable, "-m", "bot.cli", "worker", "--name", name, "--batch", str(batch)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_killed_workers_pieces_are_finished_by_another_with_the_same_tokens(
    server, client, composer, tmp_path
):
    keys = Keys("kill")
    jobs = GenerationClient(client, keys, composer.loaded.version, wait_seconds=120)
    # One worker sampling one piece at a time, one batching: whichever dies, the other takes its pieces over.
    batches = {"single": 1, "batched": 3}
    procs = {n: _spawn_worker(server, "kill", n, b, tmp_path / f"{n}.log") for n, b in batches.items()}
    try:
        consumers = lambda: {c["name"].decode() for c in client.xinfo_consumers(keys.gen_jobs, GROUP)}  # noqa: E731
        _wait(lambda: consumers() == set(batches), "both workers in the group")
        # A minute of music each: about 1,000 tokens, seconds of sampling even for a worker alone.
        requests = [
            make_request(composer.loaded, "bach", seconds=60.0, seed=21),
            make_request(composer.loaded, "irish", seconds=60.0, seed=4),
        ]
        ids = [jobs.submit(r) for r in requests]
        first = jobs.tokens(ids[0])
        got = [[next(first) for _ in range(100)], []]
        owner_of = lambda job: client.xrevrange(keys.gen_out(job), count=1)[0][1][b"w"].decode()  # noqa: E731
        owner = owner_of(ids[0])
        procs[owner].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        procs[owner].wait()
        survivor = (set(batches) - {owner}).pop()
        written_at_kill = sum(int(f[b"n"]) for _, f in client.xrange(keys.gen_out(ids[0])))
        _wait(lambda: owner_of(ids[0]) == survivor, "the survivor writing the first piece", timeout=60)
        recovered = time.monotonic() - killed_at
        got[0] += list(first)
        got[1] = list(jobs.tokens(ids[1]))
        entries = [client.xrange(keys.gen_out(job)) for job in ids]
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    expected = [list(composer.stream(r)) for r in requests]
    assert got == expected  # no token lost, none repeated, all in order
    cuts = []
    for stream in entries:
        writers = [f[b"w"].decode() for _, f in stream]
        # The killed worker wrote a piece's start (if it had the piece at all), the survivor all the rest.
        cuts.append(writers.index(survivor))
        assert set(writers[: cuts[-1]]) <= {owner} and set(writers[cuts[-1] :]) == {survivor}
        assert [int(f[b"i"]) for _, f in stream] == sorted({int(f[b"i"]) for _, f in stream})
    resumed = int(entries[0][cuts[0]][1][b"i"])
    assert resumed == written_at_kill and 100 <= resumed < len(expected[0])  # killed mid-piece
    print(
        f"\n{owner} worker killed at token {resumed} of {len(expected[0])}; the {survivor} worker wrote the "
        f"piece's next token {recovered:.2f} s later (claim idle 1 s)"
    )


def test_the_concert_plays_unchanged_with_remote_workers(server, client, composer):
    from bot.concert.player import LiveSession

    settings = load_settings(
        concert={"redis_url": server.url},
        generation={"remote": True, "namespace": "live", "wait_seconds": 60},
        outputs={"device": "off"},
    )
    worker = Worker(client, Keys("live"), composer, composer.loaded.version, name="w")
    thread, stop = _worker_thread(worker)
    try:
        with LiveSession(settings, composer.loaded, [_Silence()], realtime=False) as session:
            request = make_request(composer.loaded, "classical", seconds=6.0, seed=8)
            piece = session.request("p", request, requested_at=time.monotonic())
            ended = session.wait_for(piece.id, ("end", "skip", "error"), timeout=120)
            piece.finished.wait(30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert ended is not None and ended.kind == "end"
    assert piece.complete
    assert piece.tokens == list(composer.stream(request))
    assert [s.outcome for s in worker.served] == ["done"]


def test_a_skipped_piece_stops_its_worker(server, client, composer):
    from bot.concert.player import LiveSession

    settings = load_settings(
        concert={"redis_url": server.url},
        generation={"remote": True, "namespace": "skip", "wait_seconds": 60},
        outputs={"device": "off"},
    )
    worker = Worker(client, Keys("skip"), composer, composer.loaded.version, name="w")
    thread, stop = _worker_thread(worker)
    try:
        with LiveSession(settings, composer.loaded, [_Silence()], realtime=False) as session:
            # Ten minutes: the worker is still sampling it when the skip comes.
            request = make_request(composer.loaded, "bach", seconds=600.0, seed=8)
            piece = session.request("p", request, requested_at=time.monotonic())
            assert session.wait_for(piece.id, ("start",), timeout=60) is not None
            session.engine.skip()
            assert session.wait_for(piece.id, ("skip",), timeout=60) is not None
            _wait(lambda: bool(worker.served), "the worker letting go of the piece", timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [s.outcome for s in worker.served] == ["stopped"]  # not "done": it let go when the skip came
    assert client.xpending(Keys("skip").gen_jobs, GROUP)["pending"] == 0


def test_a_piece_skipped_while_no_worker_answers_lets_the_concert_go_on(server, client, composer):
    from bot.concert.player import LiveSession

    settings = load_settings(
        concert={"redis_url": server.url},
        generation={"remote": True, "namespace": "idle", "wait_seconds": 3600},
        outputs={"device": "off"},
    )
    with LiveSession(settings, composer.loaded, [_Silence()], realtime=False) as session:
        piece = session.request("p", make_request(composer.loaded, "bach", seconds=5.0, seed=8))
        _wait(lambda: client.xlen(Keys("idle").gen_jobs) == 1, "the piece sent to the workers")
        piece.feed.cancel()  # as the conductor drops an upcoming piece
        # Within the reader's next poll (a second), not after the hour it would wait for a worker.
        assert piece.finished.wait(120)
