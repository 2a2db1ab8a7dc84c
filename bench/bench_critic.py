"""What the critic costs and buys: speed and quality for K = 1, 2, 3, 4 candidates per bar, on a few styles.

    python bench/bench_critic.py [--styles bach,palestrina,irish,folk] [--ks 1,2,3,4] [--pieces 3]
                                 [--seconds 30] [--seed 101]

Each piece is the style's default instruments and tempo, sampled on one torch thread as concerts sample.
Speed is seconds of music per CPU second of the sampling process (`time.process_time`, so other jobs on a
shared machine count less than they would in wall time): 5x means a minute of music costs 12 s of one core.
First bar is the CPU seconds before the first token comes out (with K > 1, a bar's candidates all come
first): what a live piece waits before it can start. Quality, as `concertbot eval` measures it
(generator.form_metrics): the share of onsets of 3+ pitch classes that form a chord, the share of melodic
intervals over 4 semitones (the style's real share in brackets, from the model card), pieces whose estimated
key is the asked one, the least-heard instrument's share of the notes, pieces with a 2-bar passage that
recurs, notes per second, and the critic's own mean bar score.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from generator import critic
from generator.decode import Note, decode, notes_array
from generator.form_metrics import (
    chordal_onset_share,
    key_kept,
    leap_share,
    recurrence,
    smallest_instrument_share,
)
from generator.metrics import notes_per_second
from generator.model import load_model
from generator.plan import form_profile, key_of
from generator.recipes import make_request
from generator.sampling import Composer, PieceRequest, chosen_key


def bar_scores(composer: Composer, request: PieceRequest, notes: list[Note]) -> float:
    """The critic's mean score over the piece's bars, judged as the sampler judged them."""
    plan = composer.plan(request)
    bar = plan.bar if plan is not None else 32
    key = chosen_key(composer.loaded, request.style, request.seed, request.key)
    profile = form_profile(composer.loaded.card, request.style)
    setup = critic.Setup(
        plan,
        key,
        tuple(request.programs()),
        critic.leap_share(profile),
        bar,
        critic.pitch_classes(profile),
        critic.interval_shares(profile),
    )
    scores = []
    for start in range(0, max(n.start for n in notes) + 1, bar):
        before = critic.context([n for n in notes if n.start < start], start, bar)
        scores.append(
            critic.score(setup, before, [n for n in notes if start <= n.start < start + bar], start).total
        )
    return float(np.mean(scores))


def measure(composer: Composer, request: PieceRequest) -> dict[str, float]:
    cpu = time.process_time()
    stream = composer.stream(request)
    tokens = [next(stream)]
    first = time.process_time() - cpu
    tokens += list(stream)
    spent = time.process_time() - cpu
    decoded = decode(composer.vocab, tokens)
    plan = composer.plan(request)
    notes = notes_array(decoded)
    music = float(notes[:, 0].max() + 1) / 8 * 60 / request.tempo
    key = chosen_key(composer.loaded, request.style, request.seed, request.key)
    tonic, minor = key_of(key)
    bar = plan.bar if plan is not None else 32
    return {
        "speed": music / spent,
        "first": first,
        "chordal": chordal_onset_share(notes),
        "leaps": leap_share(notes),
        "key": float(key_kept(notes, tonic, minor)),
        "least": smallest_instrument_share(notes, request.programs()),
        "recurs": float(recurrence(notes, bar, 0).recurs),
        "notes/s": notes_per_second(notes, request.tempo),
        "score": bar_scores(composer, request, decoded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--styles", default="bach,palestrina,irish,folk")
    parser.add_argument("--ks", default="1,2,3,4")
    parser.add_argument("--pieces", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=101)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model()
    composer = Composer(loaded)
    table = Table(title=f"critic: {args.pieces} pieces of {args.seconds:g} s per style, seeds from {args.seed}")
    for name in (
        "style",
        "K",
        "x real time",
        "first bar s",
        "chordal",
        "leaps (real)",
        "key kept",
        "least instrument",
        "2-bar recurs",
        "notes/s",
        "critic score",
    ):
        table.add_column(name, justify="left" if name == "style" else "right")
    for style in args.styles.split(","):
        real_leaps = critic.leap_share(form_profile(loaded.card, style))
        for k in (int(k) for k in args.ks.split(",")):
            rows = []
            for i in range(args.pieces):
                request = replace(
                    make_request(loaded, style, seconds=args.seconds, seed=args.seed + i), critic=k
                )
                rows.append(measure(composer, request))
            mean = {name: float(np.nanmean([r[name] for r in rows])) for name in rows[0]}
            table.add_row(
                style,
                str(k),
                f"{mean['speed']:.1f}x",
                f"{mean['first']:.2f}",
                f"{mean['chordal']:.0%}",
                f"{mean['leaps']:.0%} ({real_leaps:.0%})" if real_leaps is not None else f"{mean['leaps']:.0%}",
                f"{mean['key']:.0%}",
                f"{mean['least']:.0%}",
                f"{mean['recurs']:.0%}",
                f"{mean['notes/s']:.1f}",
                f"{mean['score']:.3f}",
            )
            Console(stderr=True).print(f"{style} K={k} done", style="dim")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
