"""Reading bars of notes back, for the tests of music that plays earlier music again."""

from __future__ import annotations

import numpy as np


def bars(notes: np.ndarray, first: int, count: int, bar: int = 16) -> list[tuple[int, ...]]:
    """The onsets, pitches and instruments of `count` bars from bar `first`, timed from its start (a note held
    past a return's or a rhyme's end is cut short there, so durations may differ)."""
    inside = notes[(notes[:, 0] >= first * bar) & (notes[:, 0] < (first + count) * bar)]
    return sorted((s - first * bar, p, g) for s, p, _, g in inside.tolist())
