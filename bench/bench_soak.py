"""Soak: a real local concert under steady simulated chat for an hour, sampled every minute for leaks.

    python bench/bench_soak.py                     # one hour (--minutes 60), then a table and a verdict
    nice -n 5 python bench/bench_soak.py --minutes 5 --json

`concertbot run --local --device off` runs as a subprocess on a data folder of its own with the embedded
defaults (embedded Redis, no sound card), recording the concert to a FLAC file there (--no-record: none).
Many viewers speak through the local web chat (`POST /api/chat`, the same command path as Twitch) at a steady
rate: requests, votes, replays of pieces that played, !queue, !np, !top, !voteskip, !cancel, typos, small talk;
an overlay stays connected to `/ws` (reconnecting as the page does) and the API is read every 5 s, as OBS would.
Every minute the bot's process is sampled: RSS (and its embedded Redis's), threads, open file descriptors and,
from `/metrics`, the asyncio tasks on its loop and the engine's underruns; pieces are the "now playing" lines
it printed, replies the lines `POST /api/chat` answered. Threads, fds and tasks are the least of three probes a
fifth of a second apart, so a request in flight is not mistaken for a leak; what leaks stays in all three.
Two pools are counted apart, because their size follows the load, not the hours: the HTTP connections the
bench's own client keeps alive to the bot (each an fd and an aiohttp handler task in the bot; when the bot
answers slowly the client opens more and keeps them while it reuses them), and the bot's connections to its
Redis (redis-py's pool, capped at bot.state.store.POOL_SIZE). A slow minute can step both up once; the leak
check is on what is left (fds less both pools, tasks less the HTTP connections), and the Redis pool must stay
under its cap, so a connection that is never given back still fails the run.

The verdict: underruns over the whole run, the memory slope (least squares over the samples after the warm-up,
in MB per 10 minutes), and tasks, threads and fds at the end minus at the end of the warm-up; tracebacks in the
bot's log count against it too. It exits 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

from bot.state.store import POOL_SIZE

REDIS_CAP = POOL_SIZE  # one channel, one store, one pool: the bot's only unix sockets

HERE = Path(__file__).resolve().parents[1]
START_LIMIT = 180.0  # seconds the bot may take to answer /healthz
# Used when the bot's own !styles / !instruments replies cannot be read.
STYLES = ("bach", "classical", "folk", "irish")
INSTRUMENTS = ("violin", "viola", "cello", "flute", "clarinet", "harp", "piano")
console = Console(stderr=True)


@dataclass
class Sample:
    minute: float
    rss_mb: float
    redis_mb: float
    threads: int
    fds: int
    tasks: int
    underruns: int
    pieces: int
    lines: int
    replies: int
    votes: int
    own_fds: int = 0  # fds less the two pools (below)
    own_tasks: int = 0  # tasks less the HTTP connections' handler tasks
    clients: int = 0  # HTTP connections the bench's client holds open to the bot
    redis_conns: int = 0  # the bot's connections to its Redis


@dataclass
class Log:
    """What the bot printed, counted as it comes (a reader thread)."""

    path: Path
    pieces: int = 0
    seeds: list[int] = field(default_factory=list)
    tracebacks: int = 0
    errors: int = 0
    warnings: int = 0
    tail: list[str] = field(default_factory=list)


class Bot:
    """`concertbot run --local --device off` on `work`, with the web side on `port`."""

    def __init__(self, work: Path, port: int, piece_seconds: float | None, record: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCERTBOT_", "TWITCH_", "REDIS_URL"))}
        self.data = work / "data"
        env |= {
            "CONCERTBOT_PATHS__DATA_DIR": str(self.data),
            "CONCERTBOT_HTTP_PORT": str(port),
            "PYTHONPATH": str(HERE),
        }
        if piece_seconds:
            env["CONCERTBOT_SAMPLING__SECONDS"] = str(piece_seconds)
        command = [sys.executable, "-m", "bot.cli", "run", "--local", "--device", "off"]
        self.recording = work / "concert.flac" if record else None
        if self.recording:
            command += ["--record", str(self.recording)]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = Log(work / "bot.log")
        self.proc = subprocess.Popen(
            command,
            cwd=HERE,
            env=env,
            stdin=subprocess.PIPE,  # local chat in the terminal that never speaks, and never ends
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        seed = re.compile(r"^bot> (@\S+ )?now playing .*: seed (\d+)")  # the concert's own announcement
        with self.log.path.open("w") as out:
            for line in self.proc.stdout:
                out.write(line)
                log = self.log
                if match := seed.search(line):
                    log.pieces += 1
                    log.seeds.append(int(match.group(2)))
                log.tracebacks += line.startswith("Traceback")
                log.errors += " ERROR " in line or " CRITICAL " in line
                log.warnings += " WARNING " in line
                log.tail = [*log.tail[-39:], line.rstrip()]

    def exited(self) -> str:
        return f"the bot exited with {self.proc.returncode}; it said:\n" + "\n".join(self.log.tail[-20:])

    def redis(self) -> psutil.Process | None:
        """The embedded Redis, which daemonizes (it is no child of the bot); None when it is not running."""
        try:
            pid = int((self.data / "redis" / "redis.pid").read_text().strip())
            process = psutil.Process(pid)
            return process if process.name().startswith("redis") else None
        except (OSError, ValueError, psutil.Error):
            return None

    def redis_mb(self) -> float:
        try:
            return (redis.memory_info().rss if (redis := self.redis()) else 0) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> int:
        """Ctrl-C, as a person stops it: the embedded Redis goes down with it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in Prometheus text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


class Chat:
    """Viewers talking at a steady rate through `POST /api/chat`; counts lines, replies and failures."""

    def __init__(self, bot: Bot, http: aiohttp.ClientSession, viewers: int, seed: int) -> None:
        self.bot, self.http = bot, http
        self.random = random.Random(seed)
        self.viewers = [f"viewer{i:03d}" for i in range(viewers)]
        self.styles, self.instruments = list(STYLES), list(INSTRUMENTS)
        self.lines = self.replies = self.failures = 0
        self.latencies: list[float] = []
        self.inflight: set[asyncio.Task[list[str]]] = set()

    async def say(self, user: str, text: str) -> list[str]:
        started = time.perf_counter()
        try:
            async with self.http.post(f"{self.bot.url}/api/chat", json={"user": user, "text": text}) as r:
                body = await r.json() if r.content_type == "application/json" else {}
                if r.status != 200:
                    raise aiohttp.ClientResponseError(r.request_info, (), status=r.status, message=str(body))
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures += 1
            console.print(f"[yellow]{text!r}: {exc}[/yellow]")
            return []
        self.lines += 1
        self.latencies.append(time.perf_counter() - started)
        replies: list[str] = body.get("replies", [])
        self.replies += len(replies)
        return replies

    async def learn_names(self) -> None:
        """The styles and instruments the bot itself lists, so that requests are ones it can play."""
        for command, names in (("!styles", self.styles), ("!instruments", self.instruments)):
            text = " ".join(await self.say("soak", command))
            words = re.findall(r"[a-z]+", text.split(":", 1)[-1].lower())
            found = [w for w in dict.fromkeys(words) if len(w) > 2 and w not in {"and", "the", "for", "more"}]
            if len(found) >= 2:
                names[:] = found[:12]

    def line(self) -> str:
        """One chat line, drawn with the weights of a lively channel."""
        r = self.random
        kind = r.choices(
            ["compose", "vote", "queue", "np", "top", "replay", "voteskip", "cancel", "info", "typo", "talk"],
            weights=[20, 25, 10, 8, 6, 7, 2, 4, 4, 4, 10],
        )[0]
        if kind == "compose":
            words = [r.choice(self.styles), *r.sample(self.instruments, r.randint(0, 2))]
            if r.random() < 0.3:
                words.append(str(r.randint(60, 180)))
            return "!compose " + " ".join(words)
        if kind == "replay":
            seeds = self.bot.log.seeds
            return f"!replay {r.choice(seeds) if seeds and r.random() < 0.8 else r.randint(1, 10**9)}"
        if kind == "top":
            return "!top " + r.choice(["", "stream", "week", "all"])
        if kind == "info":
            return r.choice(["!styles", "!instruments", "!help"])
        if kind == "typo":
            return r.choice(["!compose bahc", "!compose irsh flute", "!replay nothing-like-it", "!vote please"])
        if kind == "talk":
            return r.choice(["hello", "this is lovely", "more bach!", "what seed is this?", "gg"])
        return f"!{kind}"

    async def run(self, rate: float, until: float) -> None:
        """Lines at `rate` per second, on a fixed schedule (a slow reply never slows the chat) until `until`."""
        start, i = time.monotonic(), 0
        while (due := start + i / rate) < until:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self.say(self.random.choice(self.viewers), self.line()))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            i += 1
        await asyncio.gather(*self.inflight, return_exceptions=True)


class Overlay:
    """What OBS does all hour: the overlay's WebSocket (reconnecting, as the page does) and the API polled."""

    def __init__(self, bot: Bot, http: aiohttp.ClientSession) -> None:
        self.bot, self.http = bot, http
        self.messages = self.reconnects = self.polls = self.poll_failures = 0

    async def watch(self) -> None:
        while True:
            try:
                async with self.http.ws_connect(f"{self.bot.url.replace('http', 'ws', 1)}/ws") as ws:
                    async for message in ws:
                        self.messages += message.type == aiohttp.WSMsgType.TEXT
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.reconnects += 1  # the hub closed it or it failed: the page would come back too
            await asyncio.sleep(1.0)

    async def poll(self, every: float = 5.0) -> None:
        while True:
            for path in ("/api/now", "/api/queue", "/api/leaderboard"):
                self.polls += 1
                try:
                    async with self.http.get(f"{self.bot.url}{path}") as r:
                        await r.read()
                        self.poll_failures += r.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    self.poll_failures += 1
            await asyncio.sleep(every)


async def probe(bot: Bot, http: aiohttp.ClientSession) -> dict[str, int]:
    """Threads, fds, tasks and both pools, each the least of three probes, and the underruns."""
    seen: dict[str, list[int]] = {k: [] for k in ("threads", "fds", "tasks", "own_fds", "own_tasks")}
    seen |= {"clients": [], "redis_conns": []}
    underruns = 0
    for i in range(3):
        if i:
            await asyncio.sleep(0.2)
        async with http.get(f"{bot.url}/metrics") as r:
            text = await r.text()
        count = metric(text, "concertbot_asyncio_tasks")
        if count is None:
            raise RuntimeError("/metrics has no concertbot_asyncio_tasks gauge")
        fds = bot.ps.num_fds()
        clients = sum(
            c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == bot.port
            for c in bot.ps.net_connections("tcp")
        )
        redis_conns = len(bot.ps.net_connections("unix"))  # the embedded Redis is the bot's only unix socket
        for k, v in (
            ("threads", bot.ps.num_threads()),
            ("fds", fds),
            ("tasks", int(count)),
            ("own_fds", fds - clients - redis_conns),
            ("own_tasks", int(count) - clients),
            ("clients", clients),
            ("redis_conns", redis_conns),
        ):
            seen[k].append(v)
        underruns = int(metric(text, "concertbot_underruns_total") or 0)
    least = {k: min(v) for k, v in seen.items()}
    least["redis_conns"] = max(seen["redis_conns"])  # the cap is checked on the most seen
    return least | {"underruns": underruns}


async def sample(bot: Bot, http: aiohttp.ClientSession, chat: Chat, minute: float) -> Sample:
    p = await probe(bot, http)
    async with http.get(f"{bot.url}/metrics") as r:
        votes = int(metric(await r.text(), "concertbot_votes_total") or 0)
    return Sample(
        minute=round(minute, 2),
        rss_mb=round(bot.ps.memory_info().rss / 2**20, 1),
        redis_mb=round(bot.redis_mb(), 1),
        threads=p["threads"],
        fds=p["fds"],
        tasks=p["tasks"],
        underruns=p["underruns"],
        pieces=bot.log.pieces,
        lines=chat.lines,
        replies=chat.replies,
        votes=votes,
        own_fds=p["own_fds"],
        own_tasks=p["own_tasks"],
        clients=p["clients"],
        redis_conns=p["redis_conns"],
    )


async def wait_healthy(bot: Bot, http: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if bot.proc.poll() is not None:
            raise RuntimeError(bot.exited())
        try:
            async with http.get(f"{bot.url}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError("the bot's web side never answered; it said:\n" + "\n".join(bot.log.tail[-20:]))


async def soak(bot: Bot, args: argparse.Namespace) -> tuple[list[Sample], Chat, Overlay]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await wait_healthy(bot, http)
        chat = Chat(bot, http, args.viewers, args.seed)
        await chat.learn_names()
        started = time.monotonic()
        until = started + args.minutes * 60
        overlay = Overlay(bot, http)
        talking = asyncio.create_task(chat.run(args.rate, until))
        watching = [asyncio.create_task(overlay.watch()), asyncio.create_task(overlay.poll())]
        samples = []
        try:
            for i in range(int(args.minutes * 60 // args.interval) + 1):
                await asyncio.sleep(max(0.0, started + i * args.interval - time.monotonic()))
                if bot.proc.poll() is not None:
                    raise RuntimeError(bot.exited())
                samples.append(await sample(bot, http, chat, (time.monotonic() - started) / 60))
                s = samples[-1]
                console.print(
                    f"minute {s.minute:5.1f}: {s.rss_mb} MB, {s.threads} threads, {s.fds} fds, "
                    f"{s.tasks} tasks ({s.own_fds} fds, {s.own_tasks} tasks less {s.clients} HTTP and "
                    f"{s.redis_conns} Redis connections), {s.underruns} underruns, {s.pieces} pieces, "
                    f"{s.replies} replies"
                )
            await talking
        finally:
            for task in (talking, *watching):
                task.cancel()
            await asyncio.gather(talking, *watching, return_exceptions=True)
    return samples, chat, overlay


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs; 0 with fewer than two points."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def verdict(samples: list[Sample], log: Log, exit_code: int, args: argparse.Namespace) -> dict:
    warm = [s for s in samples if s.minute >= args.warmup - 1e-6] or samples[-1:]
    base, end = warm[0], samples[-1]
    mb_per_10 = 10 * slope([s.minute for s in warm], [s.rss_mb for s in warm])
    leaks = {k: getattr(end, k) - getattr(base, k) for k in ("own_tasks", "threads", "own_fds")}
    raw = {k: getattr(end, k) - getattr(base, k) for k in ("tasks", "fds", "clients", "redis_conns")}
    most_redis = max(s.redis_conns for s in samples)
    problems = []
    if end.underruns:
        problems.append(f"{end.underruns} underruns")
    if mb_per_10 > args.max_slope:
        problems.append(f"memory grows {mb_per_10:+.2f} MB per 10 min (limit {args.max_slope})")
    problems += [f"{n} {k} more than at minute {base.minute:g}" for k, n in leaks.items() if n > args.max_leak]
    if most_redis > REDIS_CAP:
        problems.append(f"{most_redis} connections to Redis (its pool holds {POOL_SIZE})")
    if log.tracebacks:
        problems.append(f"{log.tracebacks} tracebacks in the log")
    if exit_code != 0:
        problems.append(f"exit status {exit_code} after Ctrl-C")
    if end.pieces < 1:
        problems.append("nothing played")
    return {
        "ok": not problems,
        "problems": problems,
        "underruns": end.underruns,
        "memory_mb_per_10_min": round(mb_per_10, 2),
        "warmup_minute": base.minute,
        "leaked": leaks,
        "raw_end_minus_warmup": raw,
        "most_redis_connections": most_redis,
        "tracebacks": log.tracebacks,
        "errors_logged": log.errors,
        "warnings_logged": log.warnings,
        "exit_code": exit_code,
    }


def table(samples: list[Sample]) -> Table:
    t = Table(title="soak: the bot process, sampled each minute")
    for name in ("minute", "RSS MB", "Redis MB", "threads", "fds", "tasks", "own fds", "own tasks"):
        t.add_column(name, justify="right")
    for name in ("HTTP conns", "Redis conns", "underruns", "pieces"):
        t.add_column(name, justify="right")
    for name in ("lines", "replies"):
        t.add_column(name, justify="right")
    for s in samples:
        row: tuple[float, ...] = (s.rss_mb, s.redis_mb, s.threads, s.fds, s.tasks, s.own_fds, s.own_tasks)
        row += (s.clients, s.redis_conns, s.underruns, s.pieces, s.lines, s.replies)
        t.add_row(f"{s.minute:.1f}", *map(str, row))
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="How long the chat goes on (default 60).")
    parser.add_argument("--rate", type=float, default=2.0, help="Chat lines a second, all viewers (default 2).")
    parser.add_argument("--viewers", type=int, default=60, help="How many viewers speak (default 60).")
    parser.add_argument("--interval", type=float, default=60.0, help="Seconds between samples (default 60).")
    parser.add_argument(
        "--warmup", type=float, help="Minutes before leaks are measured from (default 5, at most half the run)."
    )
    parser.add_argument("--piece-seconds", type=float, help="Length of each piece (default: the settings').")
    parser.add_argument("--no-record", action="store_true", help="No FLAC recording of the concert.")
    parser.add_argument("--max-slope", type=float, default=2.0, help="MB per 10 min still called flat (2).")
    parser.add_argument("--max-leak", type=int, default=0, help="Tasks, threads or fds more at the end (0).")
    parser.add_argument("--seed", type=int, default=14, help="Seed of the simulated chat.")
    parser.add_argument("--keep", action="store_true", help="Keep the data folder, log and recording.")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table.")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(5.0, args.minutes / 2)

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    bot = Bot(work, free_port(), args.piece_seconds, record=not args.no_record)
    try:
        samples, chat, overlay = asyncio.run(soak(bot, args))
    finally:
        code = bot.stop()
        left = bot.redis()
    aof = sum(p.stat().st_size for p in (bot.data / "redis").rglob("*.aof*") if p.is_file())
    recorded = bot.recording.stat().st_size if bot.recording and bot.recording.exists() else 0
    result = verdict(samples, bot.log, code, args)
    latencies = sorted(chat.latencies)
    summary = {
        "lines_sent": chat.lines,
        "lines_failed": chat.failures,
        "replies": chat.replies,
        "reply_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "reply_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        "pieces": bot.log.pieces,
        "overlay_messages": overlay.messages,
        "overlay_reconnects": overlay.reconnects,
        "api_polls": overlay.polls,
        "api_poll_failures": overlay.poll_failures,
        "recording_mb": round(recorded / 2**20, 1),
        "redis_aof_mb": round(aof / 2**20, 2),
    }
    if left is not None:
        left.terminate()
        result["ok"] = False
        result["problems"].append(f"the embedded Redis (pid {left.pid}) outlived the bot; stopped it")
    if chat.failures:
        result["ok"] = False
        result["problems"].append(f"{chat.failures} chat lines got no answer")
    if overlay.poll_failures or overlay.reconnects or not overlay.messages:
        result["ok"] = False
        result["problems"].append(
            f"overlay: {overlay.messages} updates, {overlay.reconnects} reconnects, "
            f"{overlay.poll_failures} of {overlay.polls} API reads failed"
        )
    if args.json:
        settings = {k: getattr(args, k) for k in ("minutes", "rate", "viewers", "interval", "warmup")}
        print(json.dumps({"settings": settings, "samples": [asdict(s) for s in samples], **summary, **result}))
    else:
        out = Console(width=120)
        out.print(table(samples))
        out.print(
            f"{summary['lines_sent']} chat lines from {args.viewers} viewers at {args.rate}/s, "
            f"{summary['replies']} replies (answered in p95 {summary['reply_p95_ms']} ms, "
            f"max {summary['reply_max_ms']} ms), "
            f"{summary['pieces']} pieces, {summary['recording_mb']} MB recorded; the overlay: "
            f"{overlay.messages} updates, {overlay.reconnects} reconnects, "
            f"{overlay.poll_failures} of {overlay.polls} API reads failed; the log: "
            f"{result['errors_logged']} errors, {result['warnings_logged']} warnings"
        )
        leaks = ", ".join(f"{k} {n:+d}" for k, n in result["leaked"].items())
        out.print(
            f"verdict: {'PASS' if result['ok'] else 'FAIL'}: {result['underruns']} underruns, memory "
            f"{result['memory_mb_per_10_min']:+.2f} MB per 10 min after minute {result['warmup_minute']:g}, "
            f"leaked (end minus minute {result['warmup_minute']:g}) {leaks}"
            + (f"; {'; '.join(result['problems'])}" if result["problems"] else "")
        )
    if args.keep:
        console.print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
