"""Chat load through the fake Twitch and the real twitchio client, while the concert plays.

    python bench/bench_chat.py          # about a minute

Measures: how many chat messages per second the bot handles, the reply latency at 200 messages/s (from the
fake sending the EventSub frame to the bot's reply being queued; Twitch itself lets a bot post only 20 lines
per 30 s, so what viewers then see is paced by that limit), and votes lost at 2,000 messages/s, with the
engine's underruns counted over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_live import NullSink  # this folder is on the path when the script runs
from fake_twitch import FakeTwitch

from bot.app import Concert, run_concert
from config import load_settings
from generator.threads import use_torch_threads

console = Console()


async def blast(fake: FakeTwitch, texts: list[tuple[str, str]], rate: float) -> list[tuple[str, float]]:
    """Say each (login, text) at `rate` per second; returns (message id, send time)."""
    sent: list[tuple[str, float]] = []
    started = time.perf_counter()

    async def one(i: int, login: str, text: str) -> None:
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        sent.append((await fake.say(login, text), t0))

    await asyncio.gather(*(one(i, login, text) for i, (login, text) in enumerate(texts)))
    return sent


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    settings = load_settings(
        paths={"data_dir": str(work)},
        sampling={"seconds": 600.0},
        concert={"viewer_cooldown_seconds": 0.0, "global_cooldown_seconds": 0.0, "error_reply_seconds": 0.0},
        outputs={"device": "off"},
    )
    use_torch_threads("sample", settings.engine.torch_threads)  # as `concertbot run` samples
    handled: dict[str, float] = {}
    async with FakeTwitch(keepalive=5.0) as fake:
        ready: asyncio.Future[Concert] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_concert(
                settings,
                fake.settings(),
                sinks=[NullSink()],
                started=ready.set_result,
                namespace=f"bench-{uuid.uuid4().hex[:6]}",
            )
        )
        concert = await ready
        original = concert.commands.handle

        async def timed(msg):  # the replies are queued for sending when handle returns
            replies = await original(msg)
            handled[msg.message_id] = time.perf_counter()
            return replies

        concert.commands.handle = timed  # type: ignore[method-assign]
        while concert.conductor.current is None:  # autoplay: music is playing during the load
            await asyncio.sleep(0.1)

        # 1. Throughput: as fast as the fake can send.
        texts = [(f"fan{i % 300}", "!np" if i % 2 else "!queue") for i in range(args.messages)]
        t0 = time.perf_counter()
        ids = await blast(fake, texts, rate=1e9)
        while not all(mid in handled for mid, _ in ids):
            await asyncio.sleep(0.01)
        throughput = len(ids) / (max(handled[mid] for mid, _ in ids) - t0)

        # 2. Latency at 200 messages/s.
        texts = [(f"fan{i % 300}", "!np") for i in range(int(200 * args.seconds))]
        ids = await blast(fake, texts, rate=200)
        while not all(mid in handled for mid, _ in ids):
            await asyncio.sleep(0.01)
        latencies = sorted((handled[mid] - t) * 1000 for mid, t in ids)
        p99 = latencies[round(0.99 * (len(latencies) - 1))]

        # 3. Votes at 2,000 messages/s from distinct viewers (plus chatter), every one must count once.
        seed = concert.conductor.current.record.seed
        voters = [f"voter{i}" for i in range(int(1000 * args.seconds))]
        texts = [(v, "!vote") for v in voters] + [(f"fan{i}", "hello chat") for i in range(len(voters))]
        texts = [t for pair in zip(texts[: len(voters)], texts[len(voters) :], strict=True) for t in pair]
        t0 = time.perf_counter()
        ids = await blast(fake, texts, rate=2000)
        achieved = len(ids) / (time.perf_counter() - t0)
        while not all(mid in handled for mid, _ in ids):
            await asyncio.sleep(0.01)
        counted = await concert.store.votes(seed)
        underruns = concert.session.engine.stats.underruns
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    table = Table(title="chat load through the fake Twitch (real twitchio, embedded Redis, concert playing)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("messages handled per second (burst)", f"{throughput:.0f}")
    table.add_row("reply latency at 200 msg/s, p50 ms", f"{statistics.median(latencies):.1f}")
    table.add_row("reply latency at 200 msg/s, p99 ms", f"{p99:.1f}")
    table.add_row("vote burst: rate achieved by the fake, msg/s", f"{achieved:.0f}")
    table.add_row("votes sent / counted / lost", f"{len(voters)} / {counted} / {len(voters) - counted}")
    table.add_row("engine underruns during the run", str(underruns))
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the 200/s and 2,000/s runs")
    asyncio.run(main(parser.parse_args()))
