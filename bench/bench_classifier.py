"""Can the style classifier be fooled by instruments and note density? Old features against new, per style.

    python bench/bench_classifier.py [--dataset data/dataset] [--train 150] [--valid 40] [--seconds 30]

Trains `concertbot eval`'s classifier on real training pieces, once on the features it used to have (absolute
pitch classes, intervals, notes per second, pitch mean and spread, mean duration, polyphony and register bands)
and once on generator.style_classifier's, then shows the share of real held-out pieces whose style it names:
as they are; played by the other styles' ensembles in turn, each part moved by octaves into its instrument's
range (as eval's `recognised_real_reorchestrated`); with every note struck twice as two halves; 20 % faster;
and cut to their first `--seconds`. A classifier that hears the music names all five alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from generator import metrics
from generator.disguises import split_notes
from generator.evaluate import RealPiece, opening, other_ensembles, real_pieces
from generator.instruments import find_instrument
from generator.style_classifier import StyleClassifier, features
from generator.styles import CORPUS_BY_NAME
from generator.vocab import Vocab

REGISTER_BANDS = (0, 48, 60, 72, 84, 96)  # the old features' bass, tenor, alto, soprano, high, very high

Timed = tuple[np.ndarray, float]  # notes and tempo


def old_features(notes: np.ndarray, tempo: float) -> np.ndarray:
    """The fingerprint eval's classifier had before issue 13 (absolute pitch classes, as its main column)."""
    pitched = metrics._pitched(metrics._checked(notes))
    size = 12 + 2 * metrics.MAX_INTERVAL + 1 + 5 + len(REGISTER_BANDS)
    if len(pitched) == 0:
        return np.zeros(size)
    pitches = pitched[:, metrics.PITCH].astype(np.float64)
    band = np.searchsorted(REGISTER_BANDS, pitched[:, metrics.PITCH], side="right") - 1
    starts = np.sort(pitched[:, metrics.START])
    ends = np.sort(pitched[:, metrics.START] + pitched[:, metrics.DURATION])
    onsets = np.unique(starts)
    polyphony = np.searchsorted(starts, onsets, side="right") - np.searchsorted(ends, onsets, side="right")
    return np.concatenate(
        [
            metrics.pitch_class_histogram(pitched),
            metrics.interval_histogram(pitched),
            [metrics.notes_per_second(notes, tempo)],
            [pitches.mean() / 128, pitches.std() / 128],
            [np.log1p(pitched[:, metrics.DURATION].mean() / metrics.STEPS_PER_BEAT)],
            [polyphony.mean()],
            metrics._normalised(np.bincount(band, minlength=len(REGISTER_BANDS)).astype(np.float64)),
        ]
    )


def new_features(notes: np.ndarray, tempo: float) -> np.ndarray:
    return features(notes)


def conditions(style: str, pieces: list[RealPiece], ensembles: dict, seconds: float) -> dict[str, list[Timed]]:
    """The held-out pieces of one style as they are and in each disguise."""
    timed = [(p.notes, p.tempo) for p in pieces]
    moved = other_ensembles([n for n, _ in timed], style, ensembles)
    return {
        "as they are": timed,
        "re-orchestrated": [(m, t) for m, (_, t) in zip(moved, timed, strict=True)],
        "notes split": [(split_notes(n), t) for n, t in timed],
        "tempo +20 %": [(n, t * 1.2) for n, t in timed],
        f"first {seconds:g} s": [(opening(n, t, seconds), t) for n, t in timed],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    parser.add_argument("--train", type=int, default=150, help="training pieces per style at most")
    parser.add_argument("--valid", type=int, default=40, help="held-out pieces per style at most")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    began = time.perf_counter()
    vocab = Vocab.load(args.dataset)
    train = real_pieces(args.dataset, vocab, "train", args.train)
    valid = real_pieces(args.dataset, vocab, "valid", args.valid)
    styles = [s for s in vocab.styles if s in train and s in valid]
    ensembles = {
        s: [find_instrument(name).program for name in dict.fromkeys(CORPUS_BY_NAME[s].ensemble)]
        if s in CORPUS_BY_NAME
        else [0]
        for s in styles
    }
    held_out = {s: conditions(s, valid[s], ensembles, args.seconds) for s in styles}
    kinds: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"old": old_features, "new": new_features}
    labels = [s for s in styles for _ in train[s]]
    shares: dict[str, dict[str, dict[str, float]]] = {}  # kind -> style -> condition -> share
    for kind, fingerprint in kinds.items():
        rows = np.array([fingerprint(p.notes, p.tempo) for s in styles for p in train[s]])
        classifier = StyleClassifier().fit(rows, labels)
        shares[kind] = {
            s: {
                name: classifier.accuracy(np.array([fingerprint(n, t) for n, t in pieces]), [s] * len(pieces))
                for name, pieces in held_out[s].items()
            }
            for s in styles
        }

    names = list(held_out[styles[0]])
    table = Table(
        title=f"{args.dataset}: real held-out pieces recognised, old features / new "
        f"(trained on up to {args.train} pieces a style)"
    )
    for column in ["style", "train", "held out", *names]:
        table.add_column(column, justify="left" if column == "style" else "right")
    for s in styles:
        cells = [f"{shares['old'][s][n]:.0%} / {shares['new'][s][n]:.0%}" for n in names]
        table.add_row(s, str(len(train[s])), str(len(valid[s])), *cells)
    # A style of one held-out piece weighs as much as one of forty in the mean; the pooled share does not.
    held = {s: len(valid[s]) for s in styles}
    mean = {k: {n: float(np.mean([shares[k][s][n] for s in styles])) for n in names} for k in kinds}
    pooled = {
        k: {n: sum(shares[k][s][n] * held[s] for s in styles) / sum(held.values()) for n in names}
        for k in kinds
    }
    totals = [str(len(labels)), str(sum(held.values()))]
    for name, figures in (("mean of styles", mean), ("all pieces", pooled)):
        table.add_row(name, *totals, *[f"{figures['old'][n]:.0%} / {figures['new'][n]:.0%}" for n in names])
    Console(width=160).print(table)
    print(f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
