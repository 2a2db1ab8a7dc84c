"""Concurrent real-time concerts in one process: how many play with no underrun, one at a time against batched.

    nice -n 10 python bench/bench_concerts.py [--sizes 8,16,32 | --search] [--seconds 60] [--critic 2,1]
                                              [--paths alone,batched] [--hog [K]]

Each concert is what `concertbot run` plays for one channel (bot.concert.player.LiveSession, built from the
settings): back-to-back pieces of a mix of styles with their default instruments, its own FluidSynth synth and
live engine in real time on its own play clock, and a WAV recording (a real file, written block by block). The
generator streams each piece's events into the concert's feed just ahead of playback (the engine's look-ahead).
"alone" is today's path: every concert samples its pieces with its own `Composer.stream`, as one process per
channel would, here N of them in one process. "batched" feeds every concert from ONE generation loop
(generator/batch.py, continuous batching): a piece joins the batch when its concert starts it, is stepped with
all the others, and sits out the steps while its concert is far enough ahead, so the batch holds the pieces that
need tokens now. An underrun is a block of a concert that was not ready when its clock needed it: the engine
waited for the generator (`underruns`), rendered the block after it was due (`late blocks`; not the first, which
the engine always counts late), or the recording dropped it (`blocks dropped`); a size passes with none of these
in any concert and no piece failed. The concerts' first pieces start `--spread` seconds apart in all. `--hog K`
runs K busy processes beside it at the same priority. CPU is broken down by thread: the batch loop's forward
passes (`forward_rows`) against the rest of its steps (prefixes, masks, sampling), the concerts' generation
threads (sampling when alone, decoding events when batched), the engines' render threads and the file outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil  # type: ignore[import-untyped]  # no stubs installed, as in the other benches
import redis
import torch
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

import generator.batch
from bot.concert.batchloop import BatchLoop, SourcedWorker, TokenSource
from bot.concert.live import LivePiece
from bot.concert.player import LiveSession
from bot.concert.remote import GROUP, connect, ensure_group
from bot.state.keys import Keys
from config import load_settings
from config.settings import Settings
from generator.fastgpt import FastGPT2, forward_rows
from generator.model import LoadedModel, load_model
from generator.recipes import make_request
from generator.sampling import Composer, PieceRequest
from generator.threads import use_torch_threads
from synth.outputs import FileSink

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["bach", "classical", "irish", "palestrina", "folk", "scottish", "monteverdi", "josquin", "medieval"]


@dataclass
class Tally:
    """How one concert went: plain numbers read from its engine and its recording."""

    concert: int
    pieces_started: int
    pieces_failed: int
    underruns: int
    underrun_seconds: float
    late_blocks: int
    seconds_written: float
    dropped_blocks: int
    file_bytes: int


@dataclass
class Concert:
    """One channel's concert: a LiveSession from the settings, recording to a WAV file, playing `requests`."""

    number: int
    settings: Settings
    loaded: LoadedModel
    path: Path
    requests: Iterator[PieceRequest]
    source: TokenSource | None = None  # None: the concert samples its own pieces (today's path)
    session: LiveSession = field(init=False)
    _pieces: list[LivePiece] = field(default_factory=list)
    _late_at_start: int = 0
    _dropped_at_start: int = 0

    def __post_init__(self) -> None:
        self.sink = FileSink(self.path)
        self.session = LiveSession(self.settings, self.loaded, [self.sink])
        if self.source is not None:
            own = self.session.worker
            own.close()
            lookahead = self.settings.engine.lookahead_seconds
            self.session.worker = SourcedWorker(own.composer, self.source, lookahead)

    def keep_queued(self) -> None:
        """Queue the next piece once nothing waits behind the one playing, as an autoplaying concert does."""
        if self.session.engine.pending() == 0:
            n = len(self._pieces)
            self._pieces.append(self.session.request(f"c{self.number}p{n}", next(self.requests)))

    def started(self, timeout: float = 5.0) -> None:
        """Once the engine has rendered its first block, which it always counts late (due the moment it
        starts), and its output is open: what is counted late or dropped is counted after that."""
        engine, runner = self.session.engine, self.session.engine.runners[0]
        deadline = time.monotonic() + timeout
        while (engine.stats.frames == 0 or not runner.is_open) and time.monotonic() < deadline:
            time.sleep(0.002)
        self._late_at_start = engine.stats.late_blocks
        self._dropped_at_start = runner.stats.dropped_blocks  # an output opening drops the blocks before it

    def tally(self) -> Tally:
        stats = self.session.engine.stats
        runner = self.session.engine.runners[0]
        size = self.sink.current_path.stat().st_size if self.sink.current_path.exists() else 0
        return Tally(
            self.number,
            stats.pieces,
            sum(1 for p in self._pieces if p.error is not None),
            stats.underruns,
            stats.underrun_seconds,
            stats.late_blocks - self._late_at_start,
            runner.stats.written_frames / self.session.engine.rate,
            runner.stats.dropped_blocks - self._dropped_at_start,
            size,
        )


def concert_requests(loaded: LoadedModel, number: int, seconds: float, critic: int) -> Iterator[PieceRequest]:
    """Concert `number`'s pieces: the styles in turn from its own starting point, default instruments."""
    styles = [s for s in STYLES if s in loaded.vocab.styles]
    for k in itertools.count():
        style = styles[(number + k) % len(styles)]
        yield make_request(loaded, style, seconds=seconds, seed=number * 1000 + k, critic=critic)


def thread_kinds() -> dict[int, str]:
    """This process's threads by native id, named for what they do."""
    names = {"render": "render", "generator": "concerts' generation", "batch": "batch loop"}
    out = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            kind = "file outputs" if t.name.startswith("sink ") else names.get(t.name, "other")
            out[t.native_id] = kind
    return out


def thread_cpu(kinds: dict[int, str]) -> dict[str, float]:
    """CPU seconds of this process's live threads so far, summed by kind."""
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        kind = kinds.get(t.id, "other")
        out[kind] = out.get(kind, 0.0) + t.user_time + t.system_time
    return out


@dataclass
class Played:
    """What `play_concerts` measured: each concert's tally, CPU by kind of thread, the wall time, peak RSS."""

    tallies: list[Tally]
    cpu: dict[str, float]
    wall: float
    rss_mib: float
    load: float  # the 1-minute load average at the end, this process's threads included


def play_concerts(
    concerts: Sequence[Concert],
    seconds: float,
    spread: float = 0.0,
    poll: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    elsewhere: Callable[[], dict[str, float]] = dict,
    ready: Callable[[], None] = lambda: None,
) -> Played:
    """Play every concert at once for `seconds` of the clock, keeping a piece queued behind each one playing.

    The concerts' first pieces are asked for `spread` seconds apart in all, as channels start at different
    times: N openings in one moment would measure a start-up burst, not what a deployment sustains.
    `elsewhere` gives the CPU seconds so far of other processes working for the concerts (workers), by kind;
    `ready` is called once every session is open, and the clock starts when it returns.
    """
    proc = psutil.Process()
    rss = 0.0
    with contextlib.ExitStack() as stack:
        for concert in concerts:
            stack.enter_context(concert.session)
            concert.started()
        ready()
        kinds = thread_kinds()
        before, cpu0 = thread_cpu(kinds) | elsewhere(), time.process_time()
        started = clock()
        while (now := clock()) < started + seconds:
            for i, concert in enumerate(concerts):
                if now >= started + spread * i / len(concerts):
                    concert.keep_queued()
            rss = max(rss, proc.memory_info().rss / 2**20)
            time.sleep(min(poll, max(0.0, started + seconds - now)))
        # Read before the sessions close: their threads end with them.
        after, cpu1 = thread_cpu(kinds) | elsewhere(), time.process_time()
        wall = clock() - started
    tallies = [c.tally() for c in concerts]  # once closed: the recordings hold every block written
    cpu = {k: v - before.get(k, 0.0) for k, v in after.items()}
    cpu["process"] = cpu1 - cpu0
    return Played(tallies, cpu, wall, rss, os.getloadavg()[0])


class Hog:
    """K busy processes at this process's priority, beside the concerts: another program saturating the CPU."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


class WorkerPool:
    """A redis-server of the bench's own and `count` `concertbot worker --batch B` processes reading it: the
    path `concertbot run` takes with generation.remote and REDIS_URL, the sampling out of this process.

    The server listens on a unix socket in `folder` only, so it collides with no other Redis on the machine.
    Each worker logs its mean batch when it stops; `mean_batch` reads it back once the pool has closed.
    """

    NAMESPACE = "bench-concerts"

    def __init__(
        self, count: int, batch: int, folder: Path, timeout: float = 120.0, ahead: float | None = None
    ) -> None:
        self.count = count
        self.batch = batch
        self.ahead = ahead  # the workers' --ahead: a piece held this far ahead of its time
        self.folder = folder
        self.timeout = timeout
        self.url = f"unix://{folder / 'redis.sock'}"
        self.server: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.steps = 0
        self.rows = 0  # pieces stepped, summed over the workers' steps

    def __enter__(self) -> Self:
        sock = self.folder / "redis.sock"
        cmd = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"]
        self.server = subprocess.Popen([*cmd, "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        try:
            client = connect(self.url)
            self._wait(lambda: sock.exists() and bool(client.ping()), "redis-server")
            keys = Keys(self.NAMESPACE)
            ensure_group(client, keys)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONCERTBOT_")}
            env |= {"REDIS_URL": self.url, "CONCERTBOT_GENERATION__NAMESPACE": self.NAMESPACE}
            for n in range(self.count):
                cmd = [sys.executable, "-m", "bot.cli", "worker", "--name", f"w{n}", "--batch", str(self.batch)]
                cmd += [] if self.ahead is None else ["--ahead", str(self.ahead)]
                log = (self.folder / f"w{n}.log").open("w")
                self.procs.append(
                    subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            # Listed in the group once its model is loaded: only then is it ready for the concerts' pieces.
            names = {f"w{n}" for n in range(self.count)}
            self._wait(lambda: names <= _consumers(client, keys), "the workers in the group")
            client.close()
        except BaseException:
            self.__exit__()
            raise
        return self

    def settings(self, settings: Settings) -> Settings:
        """`settings` with generation sent to this pool's workers."""
        return remote_settings(settings, self.url)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the workers and of the server."""

        def used(proc: subprocess.Popen[bytes]) -> float:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(proc.pid).cpu_times()
                return float(times.user + times.system)
            return 0.0

        server = used(self.server) if self.server is not None else 0.0
        return {"workers": sum(used(p) for p in self.procs), "redis": server}

    @property
    def mean_batch(self) -> float:
        return self.rows / self.steps if self.steps else 0.0

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # as Ctrl-C: the worker says its mean batch as it stops
        for n, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            text = (self.folder / f"w{n}.log").read_text(errors="replace")
            if found := re.findall(r"stopped: \d+ pieces, (\d+) steps, mean batch ([\d.]+)", text):
                steps, mean = found[-1]
                self.steps += int(steps)
                self.rows += round(int(steps) * float(mean))
        if self.server is not None:
            self.server.kill()
            self.server.wait()

    def _procs(self) -> list[subprocess.Popen[bytes]]:
        return [*self.procs, *([self.server] if self.server is not None else [])]

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(OSError, redis.ConnectionError):
                if ready():
                    return
            if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs()):
                raise RuntimeError(f"gave up waiting for {what}; logs in {self.folder}")
            time.sleep(0.05)


def remote_settings(settings: Settings, url: str) -> Settings:
    """`settings` with generation sent to the workers of the Redis at `url`, in the pool's namespace."""
    generation = settings.generation.model_copy(update={"remote": True, "namespace": WorkerPool.NAMESPACE})
    concert = settings.concert.model_copy(update={"redis_url": SecretStr(url)})
    return settings.model_copy(update={"generation": generation, "concert": concert})


def _consumers(client: redis.Redis, keys: Keys) -> set[str]:
    found: Any = client.xinfo_consumers(keys.gen_jobs, GROUP)
    return {c["name"].decode() for c in found}


class ForwardTimer:
    """Counts the CPU time of the batch's forward passes (generator.batch.forward_rows, wrapped in place)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self._real = forward_rows

    def __enter__(self) -> Self:
        real = self._real

        def timed(caches: Sequence[FastGPT2], tokens: Sequence[int]) -> torch.Tensor:
            started = time.thread_time()
            try:
                return real(caches, tokens)
            finally:
                self.cpu += time.thread_time() - started

        generator.batch.__dict__["forward_rows"] = timed  # looked up there at every step
        return self

    def __exit__(self, *exc: object) -> None:
        generator.batch.__dict__["forward_rows"] = self._real


@dataclass
class Trial:
    """One run: a path, a critic and a number of concerts, and how they went."""

    path: str
    critic: int
    size: int
    played: Played
    forward_cpu: float = 0.0
    steps: int = 0
    rows: int = 0

    @property
    def missed(self) -> int:
        return sum(t.underruns + t.late_blocks + t.dropped_blocks for t in self.played.tallies)

    @property
    def passed(self) -> bool:
        return self.missed == 0 and not any(t.pieces_failed for t in self.played.tallies)


def run_trial(
    settings: Settings, loaded: LoadedModel, path: str, critic: int, size: int, args: argparse.Namespace
) -> Trial:
    """`size` concerts on `path` ("alone", "batched" or "workers") for `args.seconds`, recording into a scratch
    folder."""
    folder = Path(tempfile.mkdtemp(prefix="concerts-", dir=args.out))
    try:
        with contextlib.ExitStack() as stack:
            loop = timer = pool = None
            elsewhere: Callable[[], dict[str, float]] = dict
            if path == "workers":
                pool = stack.enter_context(
                    WorkerPool(args.workers, args.worker_batch, folder, ahead=args.ahead)
                )
                settings, elsewhere = pool.settings(settings), pool.cpu
                path = f"workers {args.workers}x{args.worker_batch}"
                path += "" if args.ahead is None else f", ahead {args.ahead:g} s"
            if pool is not None and args.procs > 1:
                played = play_in_processes(pool, critic, size, folder, args)
                path += f", {args.procs} processes"
            if path == "batched":
                timer = stack.enter_context(ForwardTimer())
                loop = stack.enter_context(BatchLoop(Composer(loaded)))
            concerts = [
                Concert(
                    i,
                    settings,
                    loaded,
                    folder / f"concert-{i}.wav",
                    concert_requests(loaded, i, args.piece_seconds, critic),
                    loop,
                )
                for i in range(size if args.procs == 1 or pool is None else 0)
            ]
            if concerts:
                played = play_concerts(concerts, args.seconds, args.spread, elsewhere=elsewhere)
        trial = Trial(path, critic, size, played)
        if loop is not None and timer is not None:
            trial.forward_cpu, trial.steps, trial.rows = timer.cpu, loop.steps, loop.rows
        if pool is not None:  # its workers said how full their batches ran as they stopped
            trial.steps, trial.rows = pool.steps, pool.rows
        return trial
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def play_in_processes(
    pool: WorkerPool, critic: int, size: int, folder: Path, args: argparse.Namespace
) -> Played:
    """The concerts split over `args.procs` processes (this bench again, with --share), all fed by `pool`:
    each process plays every P-th concert; their clocks start together once all have opened their sessions."""
    procs = []
    for k in range(args.procs):
        share = {"url": pool.url, "numbers": list(range(k, size, args.procs)), "critic": critic}
        share |= {"folder": str(folder), "out": str(folder / f"share-{k}.json")}
        cmd = [sys.executable, __file__, "--share", json.dumps(share), "--seconds", str(args.seconds)]
        cmd += ["--spread", str(args.spread), "--piece-seconds", str(args.piece_seconds)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for proc in procs:  # each says "ready" once its sessions are open, then waits for the word to start
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", (
                "a share did not start"
            )
        before, started = pool.cpu(), time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        time.sleep(args.seconds)
        after = pool.cpu()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, "a share failed"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    parts = []
    for k in range(args.procs):
        found = json.loads((folder / f"share-{k}.json").read_text())
        parts.append(Played([Tally(**t) for t in found.pop("tallies")], **found))
    cpu = {kind: after[kind] - before[kind] for kind in after}
    for part in parts:
        for kind, seconds in part.cpu.items():
            cpu[kind] = cpu.get(kind, 0.0) + seconds
    tallies = sorted((t for part in parts for t in part.tallies), key=lambda t: t.concert)
    rss = sum(part.rss_mib for part in parts)  # the processes' peaks, summed
    return Played(tallies, cpu, time.monotonic() - started, rss, os.getloadavg()[0])


def play_share(
    settings: Settings, loaded: LoadedModel, share: dict[str, Any], args: argparse.Namespace
) -> None:
    """A --share process: its concerts, fed by the workers at share["url"]; what they played, as JSON."""
    remote, folder = remote_settings(settings, share["url"]), Path(share["folder"])
    concerts = [
        Concert(
            n,
            remote,
            loaded,
            folder / f"concert-{n}.wav",
            concert_requests(loaded, n, args.piece_seconds, share["critic"]),
        )
        for n in share["numbers"]
    ]

    def ready() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    played = play_concerts(concerts, args.seconds, args.spread, ready=ready)
    Path(share["out"]).write_text(json.dumps(dataclasses.asdict(played)))


def search(try_size: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest size that passes: double from `start` until one fails, then bisect to within an eighth."""
    good, bad = 0, limit + 1
    size = start
    while size <= limit and try_size(size):
        good, size = size, size * 2
    bad = min(size, bad)
    while bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if try_size(mid):
            good = mid
        else:
            bad = mid
    return good


KINDS = ["forward", "batch rest", "workers", "redis", "concerts' generation", "render", "file outputs", "other"]


def row(trial: Trial) -> list[str]:
    p = trial.played
    t = p.tallies
    cpu = dict(p.cpu)
    if "batch loop" in cpu:  # the loop's forward passes against the rest of its steps
        cpu["forward"] = trial.forward_cpu
        cpu["batch rest"] = cpu.pop("batch loop") - trial.forward_cpu
    share = [f"{100 * cpu.get(k, 0.0) / p.wall:.0f}" for k in KINDS]
    under = sum(x.underruns for x in t)
    late = sum(x.late_blocks for x in t)
    dropped = sum(x.dropped_blocks for x in t)
    hit = sum(1 for x in t if x.underruns or x.late_blocks or x.dropped_blocks)
    written = sum(x.seconds_written for x in t) / max(1, len(t))
    cells = [trial.path, str(trial.critic), str(trial.size), "yes" if trial.passed else "no"]
    cells += [f"{under} ({sum(x.underrun_seconds for x in t):.1f} s)", str(late), str(dropped)]
    cells += [f"{hit} of {len(t)}"]
    cells += [str(sum(x.pieces_started for x in t)), str(sum(x.pieces_failed for x in t)), f"{written:.0f}"]
    total = cpu["process"] + cpu.get("workers", 0.0) + cpu.get("redis", 0.0)  # this process and its workers
    cells += [f"{trial.rows / trial.steps:.1f}" if trial.steps else "", f"{100 * total / p.wall:.0f}"]
    cells += [" / ".join(share), f"{p.rss_mib:.0f}", f"{p.load:.1f}"]
    return cells


COLUMNS = [
    "path",
    "critic",
    "concerts",
    "0 underruns",
    "underruns (held)",
    "late blocks",
    "blocks dropped",
    "concerts hit",
    "pieces",
    "failed",
    "s recorded each",
    "mean batch",
    "CPU % of a core",
    "CPU %: forward / batch rest / workers / redis / concerts' generation / render / file outputs / other",
    "peak RSS MiB",
    "load",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,16", help="numbers of concerts to play, each on every path")
    parser.add_argument("--search", action="store_true", help="find the largest number that passes instead")
    parser.add_argument("--start", type=int, default=8, help="--search: the first size tried")
    parser.add_argument("--limit", type=int, default=128, help="--search: the largest size tried")
    parser.add_argument("--paths", default="alone,batched")
    parser.add_argument("--critic", default="2,1", help="candidates per bar; concertbot.toml ships 2")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long every trial plays")
    parser.add_argument("--spread", type=float, default=10.0, help="seconds over which the concerts start")
    parser.add_argument("--piece-seconds", type=float, default=None, help="default: sampling.seconds (60)")
    parser.add_argument("--workers", type=int, default=1, help="path workers: `concertbot worker` processes")
    parser.add_argument("--worker-batch", type=int, default=32, help="path workers: each worker's --batch")
    parser.add_argument("--ahead", type=float, default=None, help="path workers: the workers' --ahead")
    parser.add_argument("--procs", type=int, default=1, help="path workers: bench processes the concerts share")
    parser.add_argument("--share", default=None, help=argparse.SUPPRESS)  # set for the processes --procs starts
    parser.add_argument("--hog", type=int, nargs="?", const=1, default=0, help="busy processes beside it")
    parser.add_argument("--out", type=Path, default=None, help="where the recordings go (deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep the recordings")
    args = parser.parse_args()
    # An underrun is counted, not logged: hundreds of lines would bury the table.
    logging.getLogger("synth.engine").setLevel(logging.ERROR)
    settings = load_settings()
    args.piece_seconds = args.piece_seconds or settings.sampling.seconds
    threads = use_torch_threads("sample", settings.engine.torch_threads)  # as `concertbot run` samples
    loaded = load_model(settings.paths.model_dir)
    if args.share is not None:
        play_share(settings, loaded, json.loads(args.share), args)
        return
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    trials: list[Trial] = []
    found: dict[tuple[str, int], int] = {}

    def attempt(path: str, critic: int, size: int) -> bool:
        trial = run_trial(settings, loaded, path, critic, size, args)
        trials.append(trial)
        print(" | ".join(row(trial)), flush=True)
        return trial.passed

    with Hog(args.hog):
        for critic in [int(c) for c in args.critic.split(",")]:
            for path in args.paths.split(",") if args.search else []:
                found[path, critic] = search(functools.partial(attempt, path, critic), args.start, args.limit)
            for size in [] if args.search else [int(s) for s in args.sizes.split(",")]:
                for path in args.paths.split(","):
                    attempt(path, critic, size)
    load = os.getloadavg()
    table = Table(
        title=f"{loaded.version}, {threads} torch thread(s), {psutil.cpu_count()} cores, {args.seconds:g} s a "
        f"trial of {args.piece_seconds:g} s pieces, starts spread over {args.spread:g} s, hog: {args.hog} busy "
        f"process(es), load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "path" else "right")
    for trial in trials:
        table.add_row(*row(trial))
    Console(width=250).print(table)
    print("| " + " | ".join(COLUMNS) + " |")  # the same, for the README
    print("|---|" + "---:|" * (len(COLUMNS) - 1))
    for trial in trials:
        print("| " + " | ".join(row(trial)) + " |")
    for (path, critic), size in found.items():
        print(f"largest number of concerts with no underrun: {path}, critic {critic}: {size}")


if __name__ == "__main__":
    main()
