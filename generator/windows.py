"""Training examples: random windows of pieces behind their conditioning prefix, augmented on the fly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import ConfigError
from generator.augment import Augmenter, Variant
from generator.data import read_index
from generator.instruments import BY_PROGRAM
from generator.vocab import KIND_PROGRAM, KIND_TIMESHIFT, Vocab, transpose_key

IGNORE = -100  # label value the loss skips: prefix and padding


@dataclass
class Batch:
    input_ids: np.ndarray  # int64 [B, T]
    labels: np.ndarray  # int64 [B, T], IGNORE where no loss is taken
    styles: list[str]


class Windows:
    """Windows of one split of a built data set."""

    def __init__(self, dataset_dir: Path, split: str, vocab: Vocab, context: int, augment: bool) -> None:
        self.vocab = vocab
        self.context = context
        self.augment = augment
        self.tokens = np.load(dataset_dir / "tokens.npy", mmap_mode="r")
        self.rows = [r for r in read_index(dataset_dir) if r["split"] == split and r["length"] > 0]
        if not self.rows:
            raise ConfigError(f"the {split!r} split of {str(dataset_dir)!r} is empty")
        if vocab.keyed and any("key" not in r for r in self.rows):
            raise ConfigError(
                f"{str(dataset_dir)!r} was built before pieces had keys; run `concertbot data build` again"
            )
        self.augmenter = Augmenter(vocab)
        styles = sorted({r["style"] for r in self.rows})
        self.styles = styles
        # Balance styles by the square root of their size, so small styles are heard without being memorised.
        sizes = {s: sum(r["length"] for r in self.rows if r["style"] == s) for s in styles}
        style_w = np.array([np.sqrt(sizes[s]) for s in styles])
        self.style_p = style_w / style_w.sum()
        self.by_style = {s: [i for i, r in enumerate(self.rows) if r["style"] == s] for s in styles}
        self.piece_p = {
            s: np.array([self.rows[i]["length"] for i in idx], dtype=float) / sizes[s]
            for s, idx in self.by_style.items()
        }

    def example(
        self, row: dict[str, Any], start: int, variant: Variant | None
    ) -> tuple[np.ndarray, np.ndarray]:
        music = np.asarray(self.tokens[row["offset"] + start : row["offset"] + row["length"]])
        programs = [int(p) for p in row["ranges"]]
        tempo = row["tempo"]
        key = row.get("key")
        if variant is not None:
            music = self.augmenter.apply(music, variant)
            programs = [variant.programs[p] for p in programs]
            tempo = variant.tempo
            key = transpose_key(key, variant.semitones) if key else None
        names = [BY_PROGRAM[p].name for p in programs]
        prefix = self.vocab.prefix(row["style"], names, tempo, key)
        room = self.context - len(prefix)
        body = music[:room]
        if len(body) < room:
            body = np.append(body, self.vocab.eos)
        ids = np.full(self.context, self.vocab.pad, dtype=np.int64)
        labels = np.full(self.context, IGNORE, dtype=np.int64)
        ids[: len(prefix)] = prefix
        ids[len(prefix) : len(prefix) + len(body)] = body
        labels[len(prefix) : len(prefix) + len(body)] = body
        return ids, labels

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        ids, labels, styles = [], [], []
        for _ in range(batch_size):
            style = self.styles[int(rng.choice(len(self.styles), p=self.style_p))]
            row = self.rows[
                self.by_style[style][int(rng.choice(len(self.by_style[style]), p=self.piece_p[style]))]
            ]
            start = self._boundary(row, int(rng.integers(0, max(1, row["length"] - self.context // 2))))
            variant = None
            if self.augment:
                ranges = {int(p): (lo, hi) for p, (lo, hi) in row["ranges"].items()}
                variant = self.augmenter.choose(ranges, row["tempo"], rng)
            x, y = self.example(row, start, variant)
            ids.append(x)
            labels.append(y)
            styles.append(style)
        return Batch(np.stack(ids), np.stack(labels), styles)

    def fixed(self, per_style: int) -> list[Batch]:
        """Deterministic held-out windows, one batch per style, for comparable evaluations."""
        out = []
        for style in self.styles:
            ids, labels = [], []
            for i in self.by_style[style]:
                row = self.rows[i]
                for start in range(0, row["length"], self.context // 2):
                    x, y = self.example(row, self._boundary(row, start), None)
                    ids.append(x)
                    labels.append(y)
                    if len(ids) >= per_style:
                        break
                if len(ids) >= per_style:
                    break
            out.append(Batch(np.stack(ids), np.stack(labels), [style] * len(ids)))
        return out

    def _boundary(self, row: dict[str, Any], start: int) -> int:
        """Move `start` forward to the first token that begins a note or a time step."""
        kinds = self.vocab.kind
        while start < row["length"]:
            token = int(self.tokens[row["offset"] + start])
            if kinds[token] in (KIND_PROGRAM, KIND_TIMESHIFT):
                return start
            start += 1
        return 0
