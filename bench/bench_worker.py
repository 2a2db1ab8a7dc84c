"""Generator workers (issue 15): time to recover when the worker writing a piece is SIGKILLed mid-piece.

    python bench/bench_worker.py                       # kills at tokens 100, 1000 and 2000, claim idle 3 s
    python bench/bench_worker.py --at 500 --claim-idle 1

A redis-server of its own and two real `concertbot worker` processes. For each kill point one long piece is
sent; when its stream holds that many tokens the worker writing it is SIGKILLed, and the bench times the
survivor's first new token after the kill (recovery: the claim's idle time, the survivor's next look for work,
and resampling the piece up to where the dead worker stopped). Every piece is checked against Composer.stream
of the same request: no token lost, repeated or out of order. "Ahead" is how much music the stream held beyond
a listener who started playing when the first token came: a recovery shorter than that is never heard. The
killed worker is restarted before the next round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from bot.concert.remote import GROUP, GenerationClient, connect  # noqa: E402
from bot.state.keys import Keys  # noqa: E402 (after the path is set, so the bench runs from a checkout)
from generator.decode import STEPS_PER_BEAT  # noqa: E402
from generator.model import load_model  # noqa: E402
from generator.recipes import make_request  # noqa: E402
from generator.sampling import Composer  # noqa: E402
from generator.threads import use_torch_threads  # noqa: E402
from generator.vocab import KIND_TIMESHIFT  # noqa: E402

NAMESPACE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def spawn(url: str, name: str, claim_idle: float, logs: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCERTBOT_")}
    env |= {
        "REDIS_URL": url,
        "CONCERTBOT_GENERATION__NAMESPACE": NAMESPACE,
        "CONCERTBOT_GENERATION__CLAIM_IDLE_SECONDS": str(claim_idle),
    }
    log = (logs / f"{name}.log").open("a")
    cmd = [sys.executable, "-m", "bot.cli", "worker", "--name", name]
    return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)


def music_seconds(composer: Composer, tokens: list[int], tempo: float) -> float:
    kind, value = composer.vocab.kind, composer.vocab.value
    steps = sum(int(value[t]) for t in tokens if kind[t] == KIND_TIMESHIFT)
    return steps / STEPS_PER_BEAT * 60.0 / tempo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--at", type=int, nargs="+", default=[100, 1000, 2000], help="tokens at the kill")
    parser.add_argument("--claim-idle", type=float, default=3.0, help="generation.claim_idle_seconds")
    parser.add_argument("--seconds", type=float, default=240.0, help="length of each piece")
    parser.add_argument(
        "--live", action="store_true", help="play each piece in real time through a concert's LiveSession"
    )
    args = parser.parse_args()

    use_torch_threads("sample")  # one thread, as the workers sample: two lose badly on a busy machine
    composer = Composer(load_model())
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    port = free_port()
    redis_bin = shutil.which("redis-server") or "redis-server"
    server = subprocess.Popen(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    procs: dict[str, subprocess.Popen] = {}
    rows = []
    try:
        client = connect(url)
        wait(lambda: _pings(client), "redis-server")
        keys = Keys(NAMESPACE)
        jobs = GenerationClient(client, keys, composer.loaded.version, wait_seconds=120)
        procs = {n: spawn(url, n, args.claim_idle, work) for n in ("w1", "w2")}
        for round_no, at in enumerate(args.at):
            if args.live:
                rows.append(live_round(url, client, keys, procs, composer, at, 100 + round_no, args))
            else:
                rows.append(one_round(client, keys, jobs, procs, composer, at, 100 + round_no, args))
            killed_name = rows[-1][-1]
            procs[killed_name] = spawn(url, killed_name, args.claim_idle, work)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    title = f"worker SIGKILLed mid-piece: claim idle {args.claim_idle:g} s, {args.seconds:g} s of Bach"
    table = Table(title=title + (", played live" if args.live else ""))
    ahead_or_heard = (
        ("first audio ms", "underruns", "silence s") if args.live else ("stream ahead of playback s",)
    )
    for col in ("killed at token", "of", "recovery s", *ahead_or_heard, "tokens differing"):
        table.add_column(col, justify="right")
    for resumed_at, total, recovered, *heard, lost, _ in rows:
        shown = [f"{x:.1f}" if isinstance(x, float) else str(x) for x in heard]
        table.add_row(str(resumed_at), str(total), f"{recovered:.2f}", *shown, str(lost))
    Console().print(table)
    print("recovery seconds:", np.round([r[2] for r in rows], 2).tolist())


def one_round(client, keys, jobs, procs, composer, at, seed, args) -> tuple:
    """One piece, its writer killed once `at` tokens are in its stream; the figures and whom it killed."""
    request = make_request(composer.loaded, "bach", seconds=args.seconds, seed=seed)
    expected = list(composer.stream(request))
    if at >= len(expected):
        raise SystemExit(f"--at {at}: the piece has only {len(expected)} tokens; raise --seconds")
    wait(lambda: set(procs) <= consumers(client, keys), "both workers")
    job = jobs.submit(request)
    out = keys.gen_out(job)
    tokens = jobs.tokens(job)
    got = [next(tokens)]
    first_token = time.monotonic()
    wait(lambda: written(client, out) >= at, f"{at} tokens")
    owner, killed, resumed_at, recovered = kill_the_writer(client, keys, procs, out)
    got += list(tokens)
    ahead = music_seconds(composer, expected[:resumed_at], request.tempo) - (killed - first_token)
    differing = sum(a != b for a, b in zip(got, expected, strict=False)) + abs(len(got) - len(expected))
    return resumed_at, len(expected), recovered, ahead, differing, owner


def kill_the_writer(client, keys, procs, out: str) -> tuple[str, float, int, float]:
    """SIGKILL the worker that owns the job, then wait for the other to write: (owner, when killed, tokens
    written by then, seconds until the survivor's first token)."""
    owner = client.xpending_range(keys.gen_jobs, GROUP, "-", "+", 1)[0]["consumer"].decode()
    procs[owner].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    procs[owner].wait()
    resumed_at = written(client, out)
    survivor = ({"w1", "w2"} - {owner}).pop()
    wait(lambda: client.xrevrange(out, count=1)[0][1][b"w"].decode() == survivor, "the survivor")
    return owner, killed, resumed_at, time.monotonic() - killed


def live_round(url, client, keys, procs, composer, at, seed, args) -> tuple:
    """One piece played in real time by a concert's LiveSession from remote workers, its writer killed."""
    from bot.concert.player import LiveSession
    from config.settings import load_settings

    class Silence:
        name = "null"

        def open(self, sample_rate: int) -> None:
            pass

        def write(self, block) -> None:
            pass

        def close(self) -> None:
            pass

    settings = load_settings(
        concert={"redis_url": url}, generation={"remote": True, "namespace": NAMESPACE, "wait_seconds": 120}
    )
    request = make_request(composer.loaded, "bach", seconds=args.seconds, seed=seed)
    expected = list(composer.stream(request))
    wait(lambda: set(procs) <= consumers(client, keys), "both workers")
    with LiveSession(settings, composer.loaded, [Silence()]) as session:
        piece = session.request("p", request, requested_at=time.monotonic())
        wait(lambda: client.xlen(keys.gen_jobs) > 0, "the concert's job")
        job = client.xrange(keys.gen_jobs, count=1)[0][1][b"job"].decode()
        out = keys.gen_out(job)
        wait(lambda: written(client, out) >= at, f"{at} tokens")
        owner, _, resumed_at, recovered = kill_the_writer(client, keys, procs, out)
        session.wait_for(piece.id, ("end", "skip", "error"), timeout=args.seconds + 120)
        piece.finished.wait(30)
        summary = session.summary(piece)
    got = piece.tokens
    differing = sum(a != b for a, b in zip(got, expected, strict=False)) + abs(len(got) - len(expected))
    heard = (summary.time_to_first_audio_ms or 0.0, summary.underruns, summary.underrun_seconds)
    return resumed_at, len(expected), recovered, *heard, differing, owner


def consumers(client, keys: Keys) -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers(keys.gen_jobs, GROUP)}


def written(client, out: str) -> int:
    return sum(int(f[b"n"]) for _, f in client.xrange(out))


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


if __name__ == "__main__":
    main()
