"""Each style's melodic leaps, learnt from its real pieces, and the sampling rule built from them.

A small model writes the odd leap a style never makes: real Palestrina voices never leap a tritone, a sixth
down or a seventh, yet the shipped model's Palestrina openings did, in about one interval in twelve. The data
says which leaps a style's voices take (kept in the model card with the style's other defaults); sampling then
never offers a voice a pitch whose leap from its previous note that style's real voices (almost) never make.
Leaps are measured as `metrics.interval_histogram` measures them: each program is a voice, and its melody is
its highest note at each onset, so the notes of a chord are free among themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from generator import metrics
from generator.data import read_index
from generator.decode import Note, decode, notes_array
from generator.instruments import DRUMS
from generator.vocab import Vocab

MAX_LEAP = 24  # wider leaps count as this wide: two octaves either way
MIN_SHARE = 0.0005  # a leap rarer than one in 2,000 of a style's real intervals is not offered
MAX_PIECES = 400  # training pieces read per style, spread over the style: enough to meet every common leap


def learn_leaps(dataset_dir: Path, vocab: Vocab) -> dict[str, list[int]]:
    """Per style, the leaps in semitones (clipped to ±MAX_LEAP) its real training voices take."""
    tokens = np.load(dataset_dir / "tokens.npy", mmap_mode="r")
    rows = [r for r in read_index(dataset_dir) if r["split"] == "train" and r["length"] > 0]
    out: dict[str, list[int]] = {}
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        counts = np.zeros(2 * MAX_LEAP + 1)
        for row in mine[:: max(1, len(mine) // MAX_PIECES)][:MAX_PIECES]:
            ids = tokens[row["offset"] : row["offset"] + row["length"]].tolist()
            counts += metrics.interval_counts(notes_array(decode(vocab, ids)), MAX_LEAP)
        if counts.sum() > 0:
            out[style] = [int(i) - MAX_LEAP for i in np.flatnonzero(counts / counts.sum() >= MIN_SHARE)]
    return out


class VoiceLeading:
    """Follows each voice's melody while a piece is sampled and says which pitches it may take next.

    Args:
        leaps: the style's leaps (`learn_leaps`), or None for no rule (a card from before leaps were learnt).
        pitch_of: per token id, the MIDI pitch it stands for, or -1 for a token that is not a pitch.
    """

    def __init__(self, leaps: Sequence[int] | None, pitch_of: torch.Tensor) -> None:
        self.pitch_of = pitch_of
        self.ok: torch.Tensor | None = None
        if leaps is not None:
            taken = set(leaps)
            self.ok = torch.tensor([max(-MAX_LEAP, min(MAX_LEAP, d)) in taken for d in range(-127, 128)])
        # program -> (latest onset, highest pitch there, highest pitch at the onset before)
        self.voices: dict[int, tuple[int, int, int | None]] = {}

    def on_note(self, note: Note) -> None:
        onset, top, before = self.voices.get(note.program, (-1, -1, None))
        if note.start == onset:
            self.voices[note.program] = (onset, max(top, note.pitch), before)
        else:
            self.voices[note.program] = (note.start, note.pitch, top if onset >= 0 else None)

    def allowed(self, program: int, time: int) -> torch.Tensor | None:
        """Token mask for the pitch of `program`'s next note, starting at `time`; None when anything goes."""
        if self.ok is None or program == DRUMS or program not in self.voices:
            return None
        onset, top, before = self.voices[program]
        not_pitch = self.pitch_of < 0
        if time != onset:
            return not_pitch | self.ok[(self.pitch_of - top).clamp(-127, 127) + 127]
        if before is None:
            return None
        # Another note at this onset: below the top it is harmony; above, it becomes the melody's new note.
        return not_pitch | (self.pitch_of <= top) | self.ok[(self.pitch_of - before).clamp(-127, 127) + 127]
