"""The style classifier of `concertbot eval`: what a piece's music is like, whoever plays it, and how fast.

`features` describes a piece by its pitch classes from the tonic, the melodic moves within each part, its
rhythm against the beat and its texture: how chordal, how many of its parts sound and strike together.
Nothing in it depends on the instruments, the register or the tempo, so another ensemble with each part in
its own octaves (generator.disguises) gives the same fingerprint, and denser notes change only where in the
beat the onsets fall.
Note arrays as in generator.metrics: int [N, 4] of (start, pitch, duration, program), times in 1/8 beats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generator import form_metrics
from generator.metrics import (
    DURATION,
    MAX_INTERVAL,
    PITCH,
    PROGRAM,
    START,
    STEPS_PER_BEAT,
    _checked,
    _melody,
    _normalised,
    _pitched,
    key_free_pitch_class_histogram,
    pitch_class_histogram,
)

# Note lengths are told apart as multiples of the piece's median note in half-octave steps (x1.41), from an
# eighth of it to eight times it: a dotted note lands one bin above the even note it lengthens.
# Lengths in beats would say as much and more, but a piece played in notes of half the length would read as
# another style (bench/bench_classifier.py measured it); onset positions keep the beat.
RELATIVE_DURATION_STEPS = 6  # bins either side of the median

FEATURE_GROUPS: tuple[tuple[str, int], ...] = (
    ("pitch classes", 12),  # from the estimated tonic unless key_free is off
    ("melodic moves", 2 * MAX_INTERVAL),  # -12..-1, +1..+12 semitones within each part
    ("stepwise share", 1),  # moves of one or two semitones
    ("pitch spread", 1),  # each part's pitch standard deviation in octaves, averaged over the parts
    ("onset in the beat", STEPS_PER_BEAT),
    ("relative duration", 2 * RELATIVE_DURATION_STEPS + 1),
    ("chordal onsets", 1),  # form_metrics.chordal_onset_share, 0 where nothing sounds three pitch classes
    ("full onsets", 1),  # onsets at which three pitch classes or more sound
    ("parts sounding", 1),  # share of the parts sounding at an onset
    ("parts striking", 1),  # share of the parts striking at an onset
    ("struck together", 1),  # onsets at which two parts or more strike
)
FEATURES = sum(size for _, size in FEATURE_GROUPS)
"""Length of `features`."""


def features(notes: np.ndarray, key_free: bool = True) -> np.ndarray:
    """A style fingerprint of a piece: float [FEATURES], all zeros for a piece with no pitched notes.

    Args:
        notes: note array [N, 4]; drums are left out, and each other program is one part.
        key_free: rotate the pitch-class histogram to the estimated tonic (`generator.metrics.key`), since
            training transposes pieces on purpose; off, the histogram starts at C.

    Returns:
        The FEATURE_GROUPS in order, histograms summing to one and shares in [0, 1]: pitch classes (12);
        melodic moves within each part's top line, repeated notes left out so that a note struck twice
        moves as it did (24); the share of those moves that are steps (1); the mean over the parts of each
        part's pitch standard deviation in octaves (1); where in the beat the piece's onsets fall, on the
        1/8-beat grid (8); note lengths against the piece's median note, in half-octave steps (13); then
        texture, over the piece's onsets: the chordal share, the share sounding three pitch classes, the
        mean share of the parts sounding and of those striking, and the share struck by two parts or more
        (5). Only pitch classes, intervals within a part and the beat grid enter, so moving a part by
        octaves or onto another program changes nothing, and neither does the tempo, which is not an
        argument; striking every note twice at half its length moves only the onset positions.
    """
    pitched = _pitched(_checked(notes))
    if len(pitched) == 0:
        return np.zeros(FEATURES)
    parts = [pitched[pitched[:, PROGRAM] == p] for p in np.unique(pitched[:, PROGRAM])]
    moves = np.concatenate([np.diff(_melody(part)) for part in parts])
    moves = moves[moves != 0]
    onsets = np.unique(pitched[:, START])
    durations = pitched[:, DURATION].astype(np.float64)
    ratio = np.rint(2 * np.log2(np.maximum(durations, 1) / max(1.0, float(np.median(durations)))))
    duration_bin = np.clip(ratio, -RELATIVE_DURATION_STEPS, RELATIVE_DURATION_STEPS) + RELATIVE_DURATION_STEPS
    sounding, striking = _part_activity(parts, onsets)
    full = form_metrics._sounding_pitch_classes(pitched, onsets).sum(axis=1) >= 3
    chordal = form_metrics.chordal_onset_share(pitched)
    out = np.concatenate(
        [
            key_free_pitch_class_histogram(pitched) if key_free else pitch_class_histogram(pitched),
            _move_histogram(moves),
            [np.mean(np.abs(moves) <= 2) if len(moves) else 0.0],
            [np.mean([part[:, PITCH].std() for part in parts]) / 12],
            _normalised(np.bincount(onsets % STEPS_PER_BEAT, minlength=STEPS_PER_BEAT).astype(np.float64)),
            _normalised(np.bincount(duration_bin.astype(np.int64), minlength=2 * RELATIVE_DURATION_STEPS + 1)),
            [0.0 if np.isnan(chordal) else chordal, full.mean()],
            [sounding.mean() / len(parts), striking.mean() / len(parts), np.mean(striking >= 2)],
        ]
    )
    assert out.shape == (FEATURES,)
    return out


def _move_histogram(moves: np.ndarray) -> np.ndarray:
    """Share of each melodic move from -MAX_INTERVAL to +MAX_INTERVAL semitones, leaving out 0: float [24]."""
    clipped = np.clip(moves, -MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
    counts = np.bincount(clipped, minlength=2 * MAX_INTERVAL + 1).astype(np.float64)
    return _normalised(np.delete(counts, MAX_INTERVAL))


def _part_activity(parts: list[np.ndarray], onsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many parts sound, and how many strike, at each onset (a note sounds over [start, end))."""
    sounding = np.zeros(len(onsets), dtype=np.int64)
    striking = np.zeros(len(onsets), dtype=np.int64)
    for part in parts:
        starts = np.sort(part[:, START])
        ends = np.sort(part[:, START] + part[:, DURATION])
        active = np.searchsorted(starts, onsets, side="right") - np.searchsorted(ends, onsets, side="right")
        sounding += active > 0
        striking += np.isin(onsets, starts)
    return sounding, striking


class StyleClassifier:
    """Multinomial logistic regression on standardised feature vectors, fitted by full-batch gradient descent.

    Starts from zero weights and takes fixed steps, so the same data always gives the same model.

    Args:
        l2: weight of the squared-norm penalty on the weights (the biases are not penalised).
        iterations: gradient steps taken by `fit`.
    """

    def __init__(self, l2: float = 1e-2, iterations: int = 500) -> None:
        self.l2 = l2
        self.iterations = iterations
        self.classes: list[str] = []
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.weights = np.zeros((0, 0))  # [features + 1 (bias), classes]

    def _design(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"expected features of shape [N, {len(self.mean)}], got shape {X.shape}")
        Z = (X - self.mean) / self.scale
        return np.hstack([Z, np.ones((len(Z), 1))])

    def fit(self, X: np.ndarray, y: Sequence[str]) -> StyleClassifier:
        """Learn the styles in `y` from feature rows `X` [N, F]; returns self."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
            raise ValueError(f"need a non-empty [N, F] feature array and N labels, got {X.shape} and {len(y)}")
        self.classes = sorted(set(y))
        index = {c: i for i, c in enumerate(self.classes)}
        targets = np.zeros((len(y), len(self.classes)))
        targets[np.arange(len(y)), [index[c] for c in y]] = 1.0
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        # A feature constant over the training set (an interval never used) must not divide by zero.
        self.scale = np.where(std > 1e-12, std, 1.0)
        A = self._design(X)  # [N, F + 1]
        n = len(A)
        # The softmax Hessian's eigenvalues are at most 1/2, so the loss gradient is Lipschitz with constant
        # below L = |A|^2 / 2n + l2, and a step of 1/L descends every time without any tuning.
        step = 1.0 / (0.5 * np.linalg.norm(A, 2) ** 2 / n + self.l2)
        W = np.zeros((A.shape[1], len(self.classes)))
        penalised = np.ones((A.shape[1], 1))
        penalised[-1] = 0.0
        for _ in range(self.iterations):
            grad = A.T @ (_softmax(A @ W) - targets) / n + self.l2 * penalised * W
            W -= step * grad
        self.weights = W
        return self

    def predict(self, X: np.ndarray) -> list[str]:
        """The most likely style of each feature row."""
        if not self.classes:
            raise RuntimeError("StyleClassifier.predict called before fit")
        logits = self._design(X) @ self.weights
        return [self.classes[i] for i in np.argmax(logits, axis=1)]

    def accuracy(self, X: np.ndarray, y: Sequence[str]) -> float:
        """Share of rows whose predicted style is the one in `y`."""
        if len(y) == 0:
            return 0.0
        return float(np.mean([p == t for p, t in zip(self.predict(X), y, strict=True)]))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities
