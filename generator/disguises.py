"""Changes that leave a piece's style alone: other instruments in their own octaves, and denser notes.

The style classifier (generator.style_classifier) must name a real piece's style through them, or it is
judging the orchestration and the note density rather than the music. Note arrays as in generator.metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generator.instruments import BY_PROGRAM, DRUMS, INSTRUMENTS
from generator.metrics import DURATION, PITCH, PROGRAM, START, _checked

# Instruments for a part whose ensemble has run out, as data build's spare voices: single sustained lines
# (a piano or a string section would not read as one more voice).
_SPARE_PROGRAMS = (71, 68, 73, 60, 70, 57, 74, 41, 42, 43, 56)  # clarinet, oboe, flute, horn, bassoon, ...


def octave_shift(pitches: np.ndarray, low: int, high: int) -> int:
    """The whole octaves, in semitones, that bring the most of `pitches` into [low, high]; ties: the fewest."""
    shifts = sorted(range(-60, 61, 12), key=abs)
    outside = [int(np.sum((pitches + s < low) | (pitches + s > high))) for s in shifts]
    return shifts[int(np.argmin(outside))]


def reorchestrated(notes: np.ndarray, ensemble: Sequence[int]) -> np.ndarray:
    """The piece played by `ensemble` (General MIDI programs, top voice first), each part moved by octaves.

    Args:
        notes: note array [N, 4]; each pitched program is one part.
        ensemble: the instruments to play it, as `generator.recipes.style_defaults` lists them; drums and
            repeats are passed over.

    Returns:
        A note array of the same notes in the same order, each part on a new program and transposed by
        whole octaves into that instrument's range (as far as its range allows). Parts are spread over the
        ensemble top voice first, as data build does, so the lowest part gets the lowest instrument; a part
        whose instrument is taken, or for which the ensemble is too small, gets a free spare one, so no two
        parts ever merge into one line. Drums stay drums.
    """
    notes = _checked(notes).copy()
    instruments = [p for p in dict.fromkeys(ensemble) if p != DRUMS]
    if not instruments:
        raise ValueError(f"reorchestrated needs a pitched instrument, got programs {list(ensemble)}")
    pitched = notes[:, PROGRAM] != DRUMS
    parts = sorted(
        np.unique(notes[pitched, PROGRAM]).tolist(),
        key=lambda p: -float(notes[notes[:, PROGRAM] == p, PITCH].mean()),
    )
    chosen = _spread(len(parts), instruments)
    taken = {p for p in chosen if p is not None}
    new_program = notes[:, PROGRAM].copy()
    for part, program in zip(parts, chosen, strict=True):
        mine = notes[:, PROGRAM] == part
        if program is None:
            program = _spare(notes[mine, PITCH], taken)
            taken.add(program)
        instrument = BY_PROGRAM[program]
        notes[mine, PITCH] += octave_shift(notes[mine, PITCH], instrument.low, instrument.high)
        new_program[mine] = program
    notes[:, PROGRAM] = new_program
    return notes


def _spread(parts: int, ensemble: list[int]) -> list[int | None]:
    """The ensemble's instrument for each part, top first and the lowest for the bass; None: a spare one."""
    if parts <= len(ensemble):
        return [
            ensemble[0 if parts == 1 else round(i * (len(ensemble) - 1) / (parts - 1))] for i in range(parts)
        ]
    chosen: list[int | None] = [None] * parts
    for j, program in enumerate(ensemble):
        chosen[0 if len(ensemble) == 1 else round(j * (parts - 1) / (len(ensemble) - 1))] = program
    return chosen


def _spare(pitches: np.ndarray, taken: set[int]) -> int:
    """The free spare instrument that, moved by octaves, leaves the fewest of `pitches` out of its range."""

    def outside(program: int) -> int:
        low, high = BY_PROGRAM[program].low, BY_PROGRAM[program].high
        moved = pitches + octave_shift(pitches, low, high)
        return int(np.sum((moved < low) | (moved > high)))

    free = [p for p in _SPARE_PROGRAMS if p not in taken] or [
        i.program for i in INSTRUMENTS if i.program not in taken and i.program != DRUMS
    ]
    return min(free, key=outside)


def split_notes(notes: np.ndarray) -> np.ndarray:
    """Every note struck twice, each half as long: twice the notes a second, the same music.

    A note of one step cannot be halved and stays as it is; the two halves of an odd length differ by a step.
    """
    notes = _checked(notes)
    halves = notes[:, DURATION] >= 2
    first, second = notes[halves].copy(), notes[halves].copy()
    first[:, DURATION] = notes[halves, DURATION] // 2
    second[:, START] += first[:, DURATION]
    second[:, DURATION] -= first[:, DURATION]
    out = np.concatenate([notes[~halves], first, second])
    return out[np.lexsort((out[:, PITCH], out[:, START]))]
