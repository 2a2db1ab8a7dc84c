"""Live engine figures: time to first audio, the rendering path against bare pyfluidsynth, and a long run.

    python bench/bench_live.py                     # 20 requests + render-path ratio (about a minute)
    python bench/bench_live.py --long-minutes 10   # also a real-time concert: underruns, CPU, memory

Prints tables; the README quotes them. Everything runs on the CPU with the shipped model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from bot.concert.player import LiveSession
from config import load_settings
from generator.decode import timed_messages
from generator.model import load_model
from generator.recipes import make_request
from generator.sampling import Composer
from generator.threads import use_torch_threads
from synth.engine import LiveEngine
from synth.feed import EventFeed
from synth.loudness import Leveler
from synth.render import FluidSynthRenderer
from synth.soundfonts import find_soundfont

STYLES = ["bach", "classical", "irish", "palestrina", "folk", "scottish", "monteverdi", "josquin", "medieval"]
console = Console()


@dataclass
class NullSink:
    """Counts frames and drops them: the outputs' own cost is not what is measured here."""

    name: str = "null"
    frames: int = 0

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, block: np.ndarray) -> None:
        self.frames += len(block)

    def close(self) -> None:
        pass


def time_to_first_audio(requests: int) -> list[float]:
    settings = load_settings()
    loaded = load_model(settings.paths.model_dir)
    out = []
    with LiveSession(settings, loaded, [NullSink()]) as session:
        for i in range(requests):
            request = make_request(loaded, STYLES[i % len(STYLES)], seconds=30.0, seed=1000 + i)
            piece = session.request(f"r{i}", request, requested_at=time.monotonic())
            start = session.wait_for(piece.id, ("start",), timeout=10)
            out.append(float("inf") if start is None else (start.at - piece.requested_at) * 1000)
            time.sleep(0.3)
            session.engine.skip()
            session.engine.wait_idle(10)
    return out


def render_path(seconds: float, rounds: int) -> tuple[float, float, int]:
    """Best-of-rounds seconds for a bare pyfluidsynth loop and for the engine, on the same events."""
    settings = load_settings()
    loaded = load_model(settings.paths.model_dir)
    request = make_request(loaded, "classical", seconds=seconds, seed=7)
    notes = Composer(loaded).compose(request).notes
    events = list(timed_messages(notes, request.tempo, request.programs()))
    font = find_soundfont(settings.synth.soundfont)
    rate = settings.synth.sample_rate
    block = settings.engine.block_frames
    bare, engine = [], []
    for _ in range(rounds):
        with FluidSynthRenderer(font, sample_rate=rate) as r:
            started = time.perf_counter()
            fs = r._fs  # the bare loop: get_samples up to each event, then the call that plays it
            done = 0
            for t, msg in events:
                offset = round(t * rate)
                if offset > done:
                    fs.get_samples(offset - done)
                    done = offset
                if msg.type == "note_on":
                    fs.noteon(msg.channel, msg.note, msg.velocity)
                elif msg.type == "note_off":
                    fs.noteoff(msg.channel, msg.note)
                elif msg.type == "program_change":
                    fs.program_select(msg.channel, r._sfid, 0, msg.program)
            fs.get_samples(round(1.5 * rate))
            bare.append(time.perf_counter() - started)
        with FluidSynthRenderer(font, sample_rate=rate) as r:
            sink, ended = NullSink(), threading.Event()
            eng = LiveEngine(
                r,
                [sink],
                block_frames=block,
                realtime=False,
                prebuffer_seconds=0.0,
                gap_seconds=0.0,
                leveler=Leveler(rate),
                on_event=lambda e, ended=ended: e.kind == "end" and ended.set(),
            )
            feed = EventFeed(lookahead_seconds=seconds * 2)
            feed.put(events[-1][0], events, done=True)
            with eng:
                started = time.perf_counter()
                eng.play("p", feed)
                ended.wait()
                eng.wait_idle()
                took = time.perf_counter() - started
            engine.append(took)
    return min(bare), min(engine), len(events)


def long_run(minutes: float) -> dict[str, float]:
    settings = load_settings()
    loaded = load_model(settings.paths.model_dir)
    proc = psutil.Process(os.getpid())
    rss: dict[str, float] = {}
    with LiveSession(settings, loaded, [NullSink()]) as session:
        started = time.monotonic()
        cpu0 = proc.cpu_times()
        pieces = []
        i = 0
        while time.monotonic() - started < minutes * 60:
            if session.engine.pending() == 0:
                request = make_request(loaded, STYLES[i % len(STYLES)], seconds=60.0, seed=2000 + i)
                pieces.append(session.request(f"long{i}", request))
                i += 1
            elapsed = time.monotonic() - started
            if "1 min" not in rss and elapsed >= 60:
                rss["1 min"] = proc.memory_info().rss / 2**20
            time.sleep(0.5)
        rss[f"{minutes:g} min"] = proc.memory_info().rss / 2**20
        cpu1 = proc.cpu_times()
        wall = time.monotonic() - started
        stats = session.engine.stats
    generated = [p for p in pieces if p.generation_seconds > 0]
    return {
        "wall_minutes": wall / 60,
        "pieces": len(generated),
        "underruns": stats.underruns,
        "underrun_seconds": stats.underrun_seconds,
        "late_blocks": stats.late_blocks,
        "generation_rtf": statistics.median(p.generation_rtf for p in generated),
        "cpu_share": ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall,
        "cores": psutil.cpu_count() or 1,
        **{f"rss_mib_{k}": v for k, v in rss.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--render-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-minutes", type=float, default=0.0)
    args = parser.parse_args()
    use_torch_threads("sample", load_settings().engine.torch_threads)  # as `concertbot run` samples

    ttfa = sorted(time_to_first_audio(args.requests))
    table = Table(title=f"time from request to first audio sample, {args.requests} requests")
    for col in ("p50 ms", "p95 ms", "max ms"):
        table.add_column(col, justify="right")
    p95 = ttfa[min(len(ttfa) - 1, round(0.95 * (len(ttfa) - 1)))]
    table.add_row(f"{statistics.median(ttfa):.0f}", f"{p95:.0f}", f"{ttfa[-1]:.0f}")
    console.print(table)

    bare, engine, n_events = render_path(args.render_seconds, args.rounds)
    table = Table(
        title=f"rendering {args.render_seconds:g} s of a classical trio ({n_events} events), "
        f"best of {args.rounds}"
    )
    for col in ("path", "seconds", "x real time", "speed vs bare"):
        table.add_column(col, justify="right")
    table.add_row("bare pyfluidsynth loop", f"{bare:.3f}", f"{args.render_seconds / bare:.0f}", "100 %")
    table.add_row(
        "engine (blocks, feed, leveler)",
        f"{engine:.3f}",
        f"{args.render_seconds / engine:.0f}",
        f"{bare / engine:.0%}",
    )
    console.print(table)

    if args.long_minutes:
        result = long_run(args.long_minutes)
        table = Table(title=f"real-time concert, {result['wall_minutes']:.1f} min, back-to-back 60 s pieces")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, value in result.items():
            table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
        console.print(table)


if __name__ == "__main__":
    main()
