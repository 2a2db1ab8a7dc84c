"""Start-up figures: importing the CLI, loading the model, and a concert's first audio, fresh and after kill -9.

    python bench/bench_startup.py                          # this tree, 3 rounds (a few minutes)
    python bench/bench_startup.py --before /tmp/before     # also an older checkout, side by side, with ratios
    sudo python bench/bench_startup.py --drop-caches       # "cold" also empties the page cache first

Every figure is a fresh interpreter, as a user's command is. First audio is the concert's own signal: the
"now playing" line, said on the engine's start event, when the piece's first block is rendered for the outputs
(bench_live.py times the same event from a request). `run` plays with local chat, no sound card and no web
side, on a data folder of its own: "cold" is its first start on a new folder (a new embedded Redis), "warm" a
start after a clean stop, and "after kill -9" a start right after the previous bot was SIGKILLed mid-piece
(its data folder lock is released by the kernel, its embedded Redis is still running and is adopted). The
median of the rounds is shown; an older checkout runs in the same rounds, interleaved, so load on the machine
falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parents[1]
LIMIT = 180.0  # seconds any one start may take before the bench gives up on it
LOAD_MODEL = """
import time
from generator.model import load_model
from generator.sampling import Composer
t = time.perf_counter()
Composer(load_model())
print(time.perf_counter() - t)
"""


def environment(tree: Path, data_dir: Path | None = None) -> dict[str, str]:
    """The user's environment without concertbot settings, running `tree`'s code and, if given, data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCERTBOT_")}
    env["PYTHONPATH"] = str(tree)
    if data_dir is not None:
        env |= {"CONCERTBOT_PATHS__DATA_DIR": str(data_dir), "CONCERTBOT_CONCERT__HTTP_PORT": "0"}
    return env


def wall(tree: Path, code: str) -> float:
    """Seconds from starting an interpreter on `code` to its exit."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=environment(tree), capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{tree}: {code!r} failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - started


def printed(tree: Path, code: str) -> float:
    """The number `code` prints last (a time it measured itself)."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=environment(tree), capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{tree}: model load failed: {done.stderr[-500:]}")
    return float(done.stdout.split()[-1])


class Bot:
    """`concertbot run` on `data_dir`; `first_audio()` waits for its first "now playing" line."""

    def __init__(self, tree: Path, data_dir: Path) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run", "--local", "--device", "off"],
            cwd=tree,
            env=environment(tree, data_dir),
            stdin=subprocess.PIPE,  # local chat that never speaks, and never ends
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.said: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.perf_counter(), line.rstrip()))

    def first_audio(self) -> float:
        """Seconds from the process's start to its first "now playing"."""
        deadline = self.started + LIMIT
        while time.perf_counter() < deadline:
            try:
                at, line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.said.append(line)
            if "now playing" in line:
                return at - self.started
        self.proc.kill()
        raise RuntimeError("no first audio; the bot said:\n" + "\n".join(self.said[-20:]))

    def stop(self) -> None:
        """A clean stop, as a service manager's SIGTERM: the embedded Redis goes down with it."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if code != 0:  # not a start-up figure, but worth seeing: a stop that did not go cleanly
            time.sleep(0.2)  # its last lines, still in the reader's queue
            while not self.lines.empty():
                self.said.append(self.lines.get()[1])
            print(f"warning: the bot exited {code} after SIGTERM: {self.said[-1:]}", file=sys.stderr)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def concert_starts(tree: Path, cold_caches: bool) -> dict[str, float]:
    """Cold (new data folder), warm (after a clean stop) and after kill -9, on one data folder."""
    with tempfile.TemporaryDirectory(prefix="startup-") as folder:
        data_dir = Path(folder) / "data"
        if cold_caches:
            drop_caches()
        bot = Bot(tree, data_dir)
        cold = bot.first_audio()
        bot.stop()
        bot = Bot(tree, data_dir)
        warm = bot.first_audio()
        bot.kill()  # mid-piece: it leaves its lock file and a running embedded Redis behind
        bot = Bot(tree, data_dir)
        restart = bot.first_audio()
        bot.stop()
        stray_redis(data_dir)
    return {"cold": cold, "warm": warm, "restart": restart}


def stray_redis(data_dir: Path) -> None:
    """End an embedded Redis the bots left running (none should): the bench leaves nothing behind."""
    pidfile = data_dir / "redis" / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
        if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
            print(f"warning: an embedded Redis (pid {pid}) was left running; stopped it", file=sys.stderr)
    except (OSError, ValueError):
        pass


ROWS: list[tuple[str, str]] = [
    ("cli", "import bot.cli (every command)"),
    ("playing", "import the concert's modules (run, play)"),
    ("model", "load the model, ready to sample"),
    ("cold", "run: start to first audio, cold"),
    ("warm", "run: start to first audio, warm"),
    ("restart", "run: restart after kill -9 to first audio"),
]


def one_round(tree: Path, cold_caches: bool) -> dict[str, float]:
    figures = {
        "cli": wall(tree, "import bot.cli"),
        "playing": wall(tree, "import bot.cli, bot.app, bot.concert.player"),
        "model": printed(tree, LOAD_MODEL),
    }
    return figures | concert_starts(tree, cold_caches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="An older checkout to measure beside this one.")
    parser.add_argument("--drop-caches", action="store_true", help="Empty the page cache before 'cold' (root).")
    args = parser.parse_args()
    trees = {"this tree": HERE} | ({"before": args.before.resolve()} if args.before else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, tree in trees.items() if i % 2 == 0 else reversed(trees.items()):
            runs[name].append(one_round(tree, args.drop_caches))
            print(f"round {i + 1}: {name} done", file=sys.stderr)
    median: Callable[[str, str], float] = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
    load = os.getloadavg()[0]
    table = Table(
        title=f"start-up, median of {args.rounds} rounds, {os.cpu_count()} cores, load {load:.1f} at the end"
        + (", page cache dropped before cold" if args.drop_caches else "")
    )
    table.add_column("measure")
    for name in trees:
        table.add_column(f"{name} (s)", justify="right")
    if args.before:
        table.add_column("this / before", justify="right")
    for key, label in ROWS:
        row = [label] + [f"{median(name, key):.2f}" for name in trees]
        if args.before:
            row.append(f"{median('this tree', key) / median('before', key):.2f}")
        table.add_row(*row)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
