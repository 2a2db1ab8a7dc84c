"""Steering latency: from a vote closing to the first note that sounds different, on the live engine.

    python bench/bench_steer.py              # each steer once, on the shipped model (about two minutes)
    python bench/bench_steer.py --at 6       # ask 6 s into each piece instead of 3

Each piece plays in real time to a null output; `--at` seconds in, a steer is handed to the sampler exactly as
the conductor hands one that passed (`Steering.ask`, with the seconds heard). The piece is skipped once the
steer has landed and its first changed note is composed: its time in the piece is when it sounds. The bound
the issue sets is the look-ahead plus one bar: the sampler runs at most the look-ahead ahead of playback, and
a steer lands at the next bar line.
"""

from __future__ import annotations

import argparse
import time

from bench_live import NullSink
from rich.console import Console
from rich.table import Table

from bot.concert.player import LiveSession
from config import load_settings
from generator.decode import decode
from generator.instruments import find_instrument
from generator.model import load_model
from generator.recipes import make_request
from generator.steer import bar_seconds, steered_performance
from generator.threads import use_torch_threads

STEERS = [
    ("add", "violin"),
    ("drop", "harp"),
    ("faster", ""),
    ("slower", ""),
    ("louder", ""),
    ("minor", ""),
    ("wilder", ""),
    ("again", ""),
]
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, default=3.0, help="seconds into each piece to ask")
    parser.add_argument("--style", default="irish")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    use_torch_threads("sample")
    settings = load_settings(outputs={"device": "off"})
    loaded = load_model()
    lookahead = settings.engine.lookahead_seconds
    table = Table(title=f"steer latency, asked {args.at:g} s in, look-ahead {lookahead:g} s")
    for column in ("steer", "ahead", "bar", "landed", "first change", "latency", "bound"):
        table.add_column(column, justify="right")
    worst = 0.0
    with LiveSession(settings, loaded, [NullSink()]) as session:
        for i, (kind, arg) in enumerate(STEERS):
            # In D major, so that !minor has a mode to change.
            request = make_request(loaded, args.style, ["flute", "harp"], None, args.seconds, 100 + i, key="D")
            piece = session.request(f"s{i}", request)
            session.wait_for(piece.id, ("start",), timeout=60)
            while (session.engine.position(piece.id) or 0.0) < args.at:
                time.sleep(0.01)
            heard = session.engine.position(piece.id) or args.at
            ahead = piece.music_seconds - heard  # how far the sampler was ahead of what sounded
            piece.steering.ask(kind, arg, asked_at=heard)
            plan = session.worker.composer.plan(request)
            played = steered_performance(plan, request.tempo, request.programs(), piece.steering.landed)
            first: float | None = None
            while first is None and not piece.finished.is_set():
                time.sleep(0.05)
                if piece.steering.landed:
                    event = piece.steering.landed[0]
                    notes = decode(loaded.vocab, list(piece.tokens))
                    if kind == "add":
                        program = find_instrument(arg).program
                        changed = [n for n in notes if n.program == program and n.start >= event.step]
                    else:
                        changed = [n for n in notes if n.start >= event.step]
                    if changed:
                        first = played.seconds(min(n.start for n in changed))
            bound = lookahead + bar_seconds(plan, request.tempo)
            if first is None or not piece.steering.landed:
                table.add_row(
                    f"!{kind} {arg}".strip(), f"{ahead:.2f}", "", "did not land", "", "", f"{bound:.2f}"
                )
            else:
                event = piece.steering.landed[0]
                latency = first - heard
                worst = max(worst, latency - bound)
                landed = played.seconds(event.step)
                said = f"!{kind} {arg}".strip()
                row = (
                    f"{ahead:.2f} s",
                    str(event.bar),
                    f"{landed:.2f} s",
                    f"{first:.2f} s",
                    f"{latency:.2f} s",
                )
                table.add_row(said, *row, f"{bound:.2f} s")
            session.engine.skip()
            session.engine.wait_idle(10)
    console.print(table)
    console.print("every steer within its bound" if worst <= 0 else f"over the bound by up to {worst:.2f} s")


if __name__ == "__main__":
    main()
