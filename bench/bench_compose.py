"""Speed of composing: tokens per second and real-time factor of a model, on this machine.

    python bench/bench_compose.py [--model DIR] [--seconds 60] [--pieces 3] [--device cpu|cuda]

Runs each 4-part request through our sampler three times: on the lean forward pass (generator/fastgpt.py,
what `Composer` uses) following the piece's plan (generator/steering.py), the same without a plan (what the
plan's masks and biases cost), and on transformers' own GPT-2 with its KV cache, so they are compared in one
run on one machine. Real-time factor = seconds of music made per second of wall time (5x means a one-minute
piece takes 12 s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from config import load_settings
from generator.model import load_model
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest
from generator.threads import use_torch_threads

REQUESTS = [
    ("bach", ("violin", "viola", "cello", "contrabass")),
    ("classical", ("violin", "viola", "cello")),
    ("palestrina", ("choir", "organ")),
]


class TransformersComposer(Composer):
    """The same sampler on transformers' forward pass, for comparison only."""

    def __init__(self, loaded, device: str = "cpu") -> None:
        super().__init__(loaded, device)
        self.model = loaded.transformers_model().to(device)

    def _forward(self, ids, cache):  # type: ignore[override]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        return out.logits[0, -1].to("cpu"), out.past_key_values


def run(
    composer: Composer, style: str, instruments: tuple[str, ...], seconds: float, pieces: int, plan: bool = True
) -> dict:
    tempo = style_defaults(composer.loaded, style)[1]
    tokens = music = wall = 0.0
    for seed in range(pieces):
        start = time.perf_counter()
        piece = composer.compose(PieceRequest(style, instruments, tempo, seconds, seed, plan=plan))
        wall += time.perf_counter() - start
        tokens += len(piece.tokens)
        music += max(n.end() for n in piece.notes) / 8 * 60 / tempo
    return {"tokens_per_s": tokens / wall, "rtf": music / wall, "music_tokens_per_s": tokens / music}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pieces", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    use_torch_threads("sample", load_settings().engine.torch_threads)  # as `concertbot compose` samples
    loaded = load_model(args.model, device=args.device)
    device = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    table = Table(title=f"{loaded.version} on {device}: {args.pieces} pieces x {args.seconds:g} s each")
    for col in ("request", "forward pass", "tokens/s", "tokens per s of music", "real-time factor"):
        table.add_column(col, justify="left" if col in ("request", "forward pass") else "right")
    for style, instruments in REQUESTS:
        if style not in loaded.vocab.styles:
            continue
        for name, cls, plan in (
            ("lean, plan (used)", Composer, True),
            ("lean, no plan", Composer, False),
            ("transformers, plan", TransformersComposer, True),
        ):
            r = run(cls(loaded, args.device), style, instruments, args.seconds, args.pieces, plan)
            table.add_row(f"{style}: {' '.join(instruments)}", name, f"{r['tokens_per_s']:.0f}",
                          f"{r['music_tokens_per_s']:.1f}", f"{r['rtf']:.1f}x")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
