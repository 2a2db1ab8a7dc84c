"""Steady loudness on the stream: a slow gain toward a target level, then a peak limiter.

A solo flute through TimGM6mb and a full quartet through FluidR3_GM differ by well over 10 dB straight out of
the synth; viewers should not have to reach for the volume between pieces.
"""

from __future__ import annotations

import math

import numpy as np

FULL_SCALE = 32768.0


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


class Leveler:
    """Block-by-block automatic gain plus limiter over int16 stereo audio; keeps state between blocks."""

    def __init__(
        self,
        sample_rate: int,
        target_dbfs: float = -18.0,
        max_boost_db: float = 18.0,
        max_cut_db: float = 18.0,
        window_seconds: float = 3.0,
        slew_db_per_second: float = 6.0,
        gate_dbfs: float = -50.0,
        limit_dbfs: float = -1.0,
        release_seconds: float = 0.25,
    ) -> None:
        """Set the level the stream should sit at.

        Args:
            sample_rate: frames per second of the audio to be processed.
            target_dbfs: RMS level the gain steers toward, in dB relative to full scale.
            max_boost_db: most gain added to a quiet piece; max_cut_db: most taken from a loud one.
            window_seconds: how much recent music the level is measured over.
            slew_db_per_second: how fast the gain may move, so that it never audibly pumps.
            gate_dbfs: blocks quieter than this (pauses, the gap between pieces) leave the measurement alone.
            limit_dbfs: no sample leaves louder than this.
            release_seconds: how fast the limiter lets go after a peak.
        """
        self.rate = sample_rate
        self.target = target_dbfs
        self.max_boost, self.max_cut = max_boost_db, max_cut_db
        self.window = window_seconds
        self.slew = slew_db_per_second
        self.gate = gate_dbfs
        self.limit = db_to_gain(limit_dbfs)
        self.release = release_seconds
        self.mean_square: float | None = None
        self.gain_db = 0.0
        self.limiter_gain = 1.0
        self.clipped = 0  # samples the final safety clip had to touch

    def process(self, block: np.ndarray) -> np.ndarray:
        """The block at the steered level, as int16 of the same shape."""
        n = block.shape[0]
        if n == 0:
            return block
        x = block.astype(np.float32) / FULL_SCALE
        mean_square = float(np.mean(np.square(x, dtype=np.float64)))
        if mean_square > 0 and 10.0 * math.log10(mean_square) > self.gate:
            if self.mean_square is None:
                self.mean_square = mean_square
            else:
                keep = math.exp(-n / (self.window * self.rate))
                self.mean_square = keep * self.mean_square + (1.0 - keep) * mean_square
        before = self.gain_db
        if self.mean_square is not None:
            wanted = self.target - 10.0 * math.log10(self.mean_square)
            wanted = min(self.max_boost, max(-self.max_cut, wanted))
            step = self.slew * n / self.rate
            self.gain_db += min(step, max(-step, wanted - self.gain_db))
        ramp = np.linspace(db_to_gain(before), db_to_gain(self.gain_db), n, dtype=np.float32)[:, None]
        y = x * ramp
        y = self._limit(y)
        out = np.clip(y, -self.limit, self.limit)
        self.clipped += int(np.count_nonzero(out != y))
        return np.round(out * FULL_SCALE).astype(np.int16)

    def _limit(self, y: np.ndarray) -> np.ndarray:
        # The limiter gain drops at once to what this block's peak needs and recovers with `release`; a ramp
        # between the two keeps the change click-free, and the clip after it catches what a ramp lets by.
        peak = float(np.max(np.abs(y)))
        recovered = 1.0 - (1.0 - self.limiter_gain) * math.exp(-y.shape[0] / (self.release * self.rate))
        needed = self.limit / peak if peak > self.limit else 1.0
        new = min(recovered, needed)
        ramp = np.linspace(min(self.limiter_gain, new), new, y.shape[0], dtype=np.float32)[:, None]
        self.limiter_gain = new
        return y * ramp
