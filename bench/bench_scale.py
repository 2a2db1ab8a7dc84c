"""Many pieces at once: tokens per second against batch size, one at a time against batched (issue 15).

    nice -n 10 python bench/bench_scale.py [--sizes 1,2,4,...,128] [--seconds 30] [--critic 1,2] [--device cpu]

For each batch size B, B pieces (a mix of styles and ensembles, each at its style's tempo) are kept live:
when one ends, the next request takes its place, as concerts do. "one at a time" is today's path, one
`Composer.stream` per piece, each asked for a token in turn; "batched" is generator/batch.py, one forward pass
for all B per step. Each runs `--warmup` rounds (a token from every piece) before at least `--tokens` measured
tokens. Rates are tokens per second of this process's CPU time (one torch thread, generator/threads.py), not
of the wall clock: on a shared machine the wall clock measures the neighbours. Per piece = aggregate / B.
Real time needs the mix's tokens per second of music, measured from the pieces this run finished (tokens /
seconds of their notes); "x real time" is one piece's speed against that, and "real-time pieces" how many
pieces the aggregate rate keeps in real time on one core (aggregate / need), generation alone (rendering and
the outputs cost more). "same tokens": of the pieces both ways finished, how many have the very same tokens.
Each `--critic` K (candidates written per bar, the best kept: a critic's tokens are the kept ones) runs every
size; "batched vs critic 1" is its batched rate against critic 1's at the same size, in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from generator.batch import BatchComposer, BatchPiece
from generator.decode import STEPS_PER_BEAT, decode
from generator.model import LoadedModel, load_model
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest
from generator.threads import use_torch_threads
from generator.vocab import Vocab

MIX = [
    ("bach", ("violin", "violin", "viola", "cello")),
    ("irish", ("flute", "harp")),
    ("classical", ("violin", "viola", "cello")),
    ("folk", ("guitar", "violin")),
    ("scottish", ("violin",)),
    ("palestrina", ("choir", "organ")),
]


def requests(loaded: LoadedModel, args: argparse.Namespace) -> Iterator[PieceRequest]:
    """An endless, fixed sequence of requests cycling through the mix with new seeds, `args.critic` candidates
    a bar."""
    mix = [(s, i) for s, i in MIX if s in loaded.vocab.styles]
    for seed in itertools.count():
        style, instruments = mix[seed % len(mix)]
        tempo = style_defaults(loaded, style)[1]
        yield PieceRequest(style, instruments, tempo, args.seconds, seed, critic=args.critic)


class Tally:
    """Tokens counted in the measured rounds, and the music of every piece that finished."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.tokens = 0
        self.piece_tokens = 0
        self.music_s = 0.0
        self.context = 0  # summed over measured tokens: the cached length each was sampled after
        self.pieces: dict[int, list[int]] = {}  # seed -> tokens of each finished piece

    def finished(self, request: PieceRequest, tokens: list[int]) -> None:
        self.pieces[request.seed] = list(tokens)
        notes = decode(self.vocab, tokens)
        if notes:
            self.piece_tokens += len(tokens)
            self.music_s += max(n.end() for n in notes) / STEPS_PER_BEAT * 60 / request.tempo


def one_at_a_time(loaded: LoadedModel, args: argparse.Namespace, size: int, rounds: int, tally: Tally) -> float:
    """CPU seconds for `rounds` rounds of today's path: a Composer per piece, a token from each in turn."""
    source, device, warmup = requests(loaded, args), args.device, args.warmup
    slots = [Composer(loaded, device) for _ in range(size)]
    live: list[tuple[PieceRequest, Iterator[int], list[int]]] = []
    for composer in slots:
        request = next(source)
        live.append((request, composer.stream(request), []))
    start = 0.0
    for round_ in range(warmup + rounds):
        if round_ == warmup:
            start = time.process_time()
        for i, (request, stream, tokens) in enumerate(live):
            token = next(stream)
            tokens.append(token)
            if round_ >= warmup:
                tally.tokens += 1
                tally.context += slots[i].fast.length
            if token == loaded.vocab.eos:
                tally.finished(request, tokens)
                fresh = next(source)
                live[i] = (fresh, slots[i].stream(fresh), [])
    return time.process_time() - start


def batched(loaded: LoadedModel, args: argparse.Namespace, size: int, rounds: int, tally: Tally) -> float:
    """CPU seconds for `rounds` steps of generator/batch.py with `size` pieces live."""
    source, device, warmup = requests(loaded, args), args.device, args.warmup
    with BatchComposer(Composer(loaded, device)) as batch:
        for _ in range(size):
            batch.add(next(source))
        start = 0.0
        for round_ in range(warmup + rounds):
            if round_ == warmup:
                start = time.process_time()
            if round_ >= warmup:
                tally.context += sum(p.cache.length for p in batch.live)
            done: list[BatchPiece] = []
            for piece, token in batch.step():
                if round_ >= warmup:
                    tally.tokens += 1
                if token == loaded.vocab.eos:
                    done.append(piece)
            for piece in done:
                tally.finished(piece.request, piece.tokens)
                batch.add(next(source))
        return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--seconds", type=float, default=30.0, help="music per piece")
    parser.add_argument("--warmup", type=int, default=120, help="rounds before measuring")
    parser.add_argument("--tokens", type=int, default=1500, help="tokens measured per row, at least 12 rounds")
    parser.add_argument("--critic", default="1", help="candidates per bar, a list (concerts: sampling.critic)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = use_torch_threads("sample")
    loaded = load_model(args.model, device=args.device)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {threads} torch thread(s)"
    rows = []
    need_tally = Tally(loaded.vocab)
    sizes = [int(s) for s in args.sizes.split(",")]
    for critic, size in itertools.product([int(k) for k in str(args.critic).split(",")], sizes):
        args.critic = critic  # what `requests` asks for
        rounds = max(12, args.tokens // size)
        row: dict[str, float] = {"size": size, "critic": critic}
        finished = {}
        for name, run in (("alone", one_at_a_time), ("batched", batched)):
            tally = finished[name] = Tally(loaded.vocab)
            cpu = run(loaded, args, size, rounds, tally)
            row[name] = tally.tokens / cpu
            row[name + "_context"] = tally.context / max(1, tally.tokens)
            need_tally.piece_tokens += tally.piece_tokens
            need_tally.music_s += tally.music_s
        # Both runs take the same requests in the same order: a piece both finished must have the same tokens.
        both = finished["alone"].pieces.keys() & finished["batched"].pieces.keys()
        row["compared"] = len(both)
        row["same"] = sum(finished["alone"].pieces[s] == finished["batched"].pieces[s] for s in both)
        rows.append(row)
        print(
            f"critic {critic}, B={size}: {row['alone']:.0f} one at a time, {row['batched']:.0f} batched",
            "tok/CPU-s",
            flush=True,
        )
    if not need_tally.music_s:
        raise SystemExit("no piece finished: measure more rounds (--tokens) or shorter pieces (--seconds)")
    need = need_tally.piece_tokens / need_tally.music_s
    table = Table(
        title=f"{loaded.version} on {where}; the mix needs {need:.1f} tokens per second "
        f"of music ({need_tally.piece_tokens} tokens of finished pieces)"
    )
    columns = ["critic", "B", "one at a time tok/CPU-s", "batched tok/CPU-s", "speed-up", "per piece"]
    columns += ["x real time"]
    columns += ["real-time pieces, alone", "real-time pieces, batched", "batched vs critic 1", "mean context"]
    columns += ["same tokens"]
    plain = {r["size"]: r["batched"] for r in rows if r["critic"] == 1}
    for col in columns:
        table.add_column(col, justify="right")
    lines = []
    for r in rows:
        per = r["batched"] / r["size"]
        speedup = r["batched"] / r["alone"]
        cells = [f"{r['critic']:.0f}", f"{r['size']:.0f}", f"{r['alone']:.0f}", f"{r['batched']:.0f}"]
        cells += [f"{speedup:.2f}x", f"{per:.1f}", f"{per / need:.1f}x", f"{r['alone'] / need:.0f}"]
        against = f"{r['batched'] / plain[r['size']]:.2f}x" if r["size"] in plain else "-"
        cells += [f"{r['batched'] / need:.0f}", against, f"{r['batched_context']:.0f}"]
        cells += [f"{r['same']:.0f} of {r['compared']:.0f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    print("| " + " | ".join(str(c.header) for c in table.columns) + " |")  # the same, for the README
    print("|" + "---:|" * len(table.columns))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
