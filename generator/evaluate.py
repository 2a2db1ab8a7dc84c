"""`concertbot eval`: how close the model's pieces come to each style's real held-out pieces.

Per style: held-out loss (from the model card), then over N generated pieces: Jensen-Shannon distance of the
pitch-class and interval histograms to the real held-out pieces (next to the same distance between the real
training and held-out pieces, the floor a perfect model would reach), notes per second, share of degenerate
pieces, share of notes on the requested instruments when the prefix alone asks for them, and how often a
classifier trained on real pieces recognises the requested style (and which style it most often takes the
others for, to say where a model falls short), next to how often it recognises the real held-out pieces, whole
and cut to the generated pieces' length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from config.errors import ConcertbotError
from generator import metrics
from generator.data import read_index
from generator.decode import decode, notes_array
from generator.model import LoadedModel
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest

MAX_REAL_PER_STYLE = 150  # enough for stable histograms and a classifier; keeps eval quick


@dataclass
class StyleReport:
    style: str
    valid_loss: float | None
    real_pieces: int  # held-out pieces the "(real)" figures come from: with one or two, they are anecdotes
    pitch_class_js: float
    pitch_class_js_real: float
    interval_js: float
    interval_js_real: float
    notes_per_second: float
    notes_per_second_real: float
    degenerate_share: float
    on_instruments_share: float
    recognised: float
    recognised_real: float
    mistaken_for: str  # what the classifier most often takes the unrecognised generated pieces for, or "-"
    # The held-out pieces cut to their first `seconds`, as long as the generated ones: the like-for-like
    # control, since a whole piece shows the classifier more than a generated opening can.
    recognised_real_openings: float
    # The same two measures with each piece's key rotated to its tonic, since training transposes on purpose.
    key_free_pitch_class_js: float
    key_free_pitch_class_js_real: float
    key_free_recognised: float
    key_free_recognised_real: float


def _real(dataset: Path, loaded: LoadedModel, split: str) -> dict[str, list[tuple[np.ndarray, float]]]:
    tokens = np.load(dataset / "tokens.npy", mmap_mode="r")
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for row in read_index(dataset):
        if row["split"] != split or row["style"] not in loaded.vocab.styles:
            continue
        mine = out.setdefault(row["style"], [])
        if len(mine) < MAX_REAL_PER_STYLE:
            ids = tokens[row["offset"] : row["offset"] + row["length"]].tolist()
            mine.append((notes_array(decode(loaded.vocab, ids)), row["tempo"]))
    return out


def _opening(notes: np.ndarray, tempo: float, seconds: float) -> np.ndarray:
    """The notes that start in a piece's first `seconds`."""
    return notes[notes[:, metrics.START] < seconds * tempo / 60.0 * metrics.STEPS_PER_BEAT]


def _pooled(
    pieces: list[tuple[np.ndarray, float]], histogram: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    return np.sum([histogram(n) * max(1, len(n)) for n, _ in pieces], axis=0)


def _distances(histogram: Callable[[np.ndarray], np.ndarray], made: list, train: list, valid: list) -> tuple:
    """JS distance of generated, and of real training, pieces to the real held-out ones."""
    target = _pooled(valid, histogram)
    return metrics.js_distance(_pooled(made, histogram), target), metrics.js_distance(
        _pooled(train, histogram), target
    )


def evaluate(
    loaded: LoadedModel,
    dataset: Path,
    pieces_per_style: int,
    seconds: float,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    only: Sequence[str] = (),
    voice_leading: bool = True,
) -> list[StyleReport]:
    """Report on each style with real training and held-out pieces, or on the styles in `only`.

    The classifier always learns every style, so leaving styles out changes no figure of those kept.
    """
    train = _real(dataset, loaded, "train")
    valid = _real(dataset, loaded, "valid")
    styles = [s for s in loaded.vocab.styles if s in train and s in valid]
    unknown = sorted(set(only) - set(styles))
    if unknown:
        raise ConcertbotError(f"no real training and held-out pieces to compare with for {', '.join(unknown)}")
    labels = [s for s in styles for _ in train[s]]
    classifier = metrics.StyleClassifier().fit(
        np.array([metrics.features(n, t) for s in styles for n, t in train[s]]), labels
    )
    key_free_classifier = metrics.StyleClassifier().fit(
        np.array([metrics.features(n, t, key_free=True) for s in styles for n, t in train[s]]), labels
    )

    def guesses(model: metrics.StyleClassifier, pieces: list, key_free: bool) -> list[str]:
        return model.predict(np.array([metrics.features(n, t, key_free=key_free) for n, t in pieces]))

    def share(found: list[str], style: str) -> float:
        return sum(g == style for g in found) / len(found) if found else 0.0

    def recognised(model: metrics.StyleClassifier, pieces: list, style: str, key_free: bool) -> float:
        return share(guesses(model, pieces, key_free), style)

    composer = Composer(loaded)
    reports = []
    for style in [s for s in styles if s in only] if only else styles:
        instruments, tempo = style_defaults(loaded, style)
        made, on_instruments, total_notes = [], 0, 0
        for i in range(pieces_per_style):
            request = PieceRequest(
                style, instruments, tempo, seconds, seed + i, temperature, top_p, voice_leading=voice_leading
            )
            piece = composer.compose(request)
            made.append((notes_array(piece.notes), tempo))
            loose = composer.compose(replace(request, strict_instruments=False))
            wanted = set(request.programs())
            on_instruments += sum(n.program in wanted for n in loose.notes)
            total_notes += len(loose.notes)
        progress(style)
        real_valid, real_train = valid[style], train[style]

        pc = _distances(metrics.pitch_class_histogram, made, real_train, real_valid)
        iv = _distances(metrics.interval_histogram, made, real_train, real_valid)
        kf = _distances(metrics.key_free_pitch_class_histogram, made, real_train, real_valid)
        card_loss = loaded.card.get("valid_per_style", {}).get(style, {}).get("loss")
        made_guesses = guesses(classifier, made, key_free=False)
        wrong = Counter(g for g in made_guesses if g != style).most_common(1)
        reports.append(
            StyleReport(
                style=style,
                valid_loss=card_loss,
                real_pieces=len(real_valid),
                pitch_class_js=pc[0],
                pitch_class_js_real=pc[1],
                interval_js=iv[0],
                interval_js_real=iv[1],
                notes_per_second=float(np.mean([metrics.notes_per_second(n, t) for n, t in made])),
                notes_per_second_real=float(np.mean([metrics.notes_per_second(n, t) for n, t in real_valid])),
                degenerate_share=float(np.mean([metrics.loop_report(n).degenerate for n, _ in made])),
                on_instruments_share=on_instruments / max(1, total_notes),
                recognised=share(made_guesses, style),
                recognised_real=recognised(classifier, real_valid, style, False),
                mistaken_for=wrong[0][0] if wrong else "-",
                recognised_real_openings=recognised(
                    classifier, [(_opening(n, t, seconds), t) for n, t in real_valid], style, False
                ),
                key_free_pitch_class_js=kf[0],
                key_free_pitch_class_js_real=kf[1],
                key_free_recognised=recognised(key_free_classifier, made, style, True),
                key_free_recognised_real=recognised(key_free_classifier, real_valid, style, True),
            )
        )
    return reports
