"""Training-time augmentation on token ids: transpose, stretch tempo, give parts to other instruments.

All three work on the token array directly (no re-tokenizing), so a fresh variant of a piece costs
microseconds. Each takes its random generator as an argument: the same seed gives the same variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generator.instruments import BY_PROGRAM, DRUMS, INSTRUMENTS
from generator.vocab import KIND_PITCH, KIND_PROGRAM, Vocab

TEMPO_STRETCH = (0.85, 1.18)
MAX_TRANSPOSE = 6
REASSIGN_PROBABILITY = 0.6


@dataclass(frozen=True)
class Variant:
    programs: dict[int, int]  # original program -> program in this variant
    semitones: int
    tempo: float


class Augmenter:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        pitch_ids = np.flatnonzero(vocab.kind == KIND_PITCH)
        self.pitch_id = {int(vocab.value[i]): int(i) for i in pitch_ids}
        self.program_id = {int(vocab.value[i]): int(i) for i in np.flatnonzero(vocab.kind == KIND_PROGRAM)}

    def choose(self, ranges: dict[int, tuple[int, int]], tempo: float, rng: np.random.Generator) -> Variant:
        """Pick instruments, a transposition that keeps every part in its instrument's range, and a tempo."""
        original = {p: p for p in ranges}
        mapping = original
        if rng.random() < REASSIGN_PROBABILITY:
            mapping = _reassigned(ranges, rng) or original
        low, high = _shift_window(ranges, mapping)
        if low > high:  # the new instruments cannot all fit at once: keep the original ones
            mapping = original
            low, high = _shift_window(ranges, mapping)
        semitones = (
            int(rng.integers(max(low, -MAX_TRANSPOSE), min(high, MAX_TRANSPOSE) + 1)) if low <= high else 0
        )
        stretch = float(rng.uniform(*TEMPO_STRETCH))
        return Variant(mapping, semitones, tempo * stretch)

    def apply(self, tokens: np.ndarray, variant: Variant) -> np.ndarray:
        """The token ids of `variant` of a piece (a window of it is fine if it starts on a boundary)."""
        out = tokens.astype(np.int64).copy()
        kind = self.vocab.kind[out]
        value = self.vocab.value[out]
        is_program = kind == KIND_PROGRAM
        # The program each token belongs to: carry the last Program token forward.
        last = np.maximum.accumulate(np.where(is_program, np.arange(len(out)), -1))
        owner = np.where(last >= 0, value[np.maximum(last, 0)], DRUMS)
        for program, new in variant.programs.items():
            if new != program:
                out[is_program & (value == program)] = self.program_id[new]
        if variant.semitones:
            shift = (kind == KIND_PITCH) & (owner != DRUMS) & (last >= 0)
            for i in np.flatnonzero(shift):
                target = int(value[i]) + variant.semitones
                if target in self.pitch_id:
                    out[i] = self.pitch_id[target]
        return out


def _reassigned(ranges: dict[int, tuple[int, int]], rng: np.random.Generator) -> dict[int, int] | None:
    """Give every part an instrument whose range fits it, no two parts the same one.

    Two parts on one instrument would teach the model that a program's notes may jump between voices, and
    it would stop following each part's line (a Bach chorale's tenor then wanders by leaps). None when the
    parts cannot all get instruments of their own: the piece then keeps its original ones.
    """
    mapping = {p: p for p in ranges}
    taken: set[int] = {DRUMS}
    for program, (lo, hi) in ranges.items():
        if program == DRUMS:
            continue
        fits = [
            i.program
            for i in INSTRUMENTS
            if i.program not in taken and i.low - MAX_TRANSPOSE <= lo and hi <= i.high + MAX_TRANSPOSE
        ]
        if not fits:
            return None
        mapping[program] = int(rng.choice(fits))
        taken.add(mapping[program])
    return mapping


def _shift_window(ranges: dict[int, tuple[int, int]], mapping: dict[int, int]) -> tuple[int, int]:
    """The transpositions that keep every (non-drum) part inside its new instrument's range."""
    low, high = -MAX_TRANSPOSE, MAX_TRANSPOSE
    for program, (lo, hi) in ranges.items():
        if program == DRUMS:
            continue
        inst = BY_PROGRAM[mapping[program]]
        low, high = max(low, inst.low - lo), min(high, inst.high - hi)
    return low, high
