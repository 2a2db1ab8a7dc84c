"""Steady loudness on the stream: a slow gain toward a target level, then a peak limiter.

A solo flute through TimGM6mb and a full quartet through FluidR3_GM differ by well over 10 dB straight out of
the synth; viewers should not have to reach for the volume between pieces. The live stream, a downloaded
`/p/<seed>.wav` and `concertbot compose --out x.wav` all level through `leveler_for` and
`FluidSynthRenderer.level`, so a piece sounds as loud in a file as it did on stream.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from config.settings import Loudness

FULL_SCALE = 32768.0


def db_to_gain(db: float) -> float:
    # float ** float is typed Any (a negative base gives a complex); 10 is positive.
    gain: float = 10.0 ** (db / 20.0)
    return gain


def leveler_for(settings: Loudness, sample_rate: int) -> Leveler | None:
    """The `[loudness]` settings' leveler for audio at `sample_rate`; None when levelling is off."""
    if not settings.enabled:
        return None
    return Leveler(
        sample_rate,
        target_dbfs=settings.target_dbfs,
        limit_dbfs=settings.limit_dbfs,
        max_boost_db=settings.max_boost_db,
    )


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

    @property
    def fresh(self) -> bool:
        """Whether nothing loud enough to measure has passed yet (the gain is still where it started)."""
        return self.mean_square is None

    def prime(self, opening: np.ndarray, applied_gain: float = 1.0) -> None:
        """Start at the gain the music's opening needs, as a stream that has been playing would be.

        Offline a piece is rendered alone, with no music before it to settle the gain: without this its
        first seconds would be the synth's raw level while the gain slews towards the target.
        """
        mean_square = self._mean_square(opening, applied_gain)
        if mean_square > 0 and 10.0 * math.log10(mean_square) > self.gate:
            self.mean_square = mean_square
            self.gain_db = self._wanted_db(mean_square)

    def _mean_square(self, block: np.ndarray, applied_gain: float) -> float:
        # Every fourth frame is plenty to estimate a level, at a quarter of the cost.
        sample = block[::4].astype(np.float32).reshape(-1)
        return float(sample @ sample) / (sample.size * FULL_SCALE * FULL_SCALE) / applied_gain**2

    def _wanted_db(self, mean_square: float) -> float:
        wanted = self.target - 10.0 * math.log10(mean_square)
        return min(self.max_boost, max(-self.max_cut, wanted))

    def observe(self, block: np.ndarray, applied_gain: float) -> float:
        """Measure a block that was rendered at `applied_gain`; return the gain for the blocks after it.

        The gain is applied by the synth itself (its master gain), so levelling costs no pass over the
        samples; a peak over the limit that gets through before the gain drops is clipped here, in place.
        """
        n = block.shape[0]
        if n == 0:
            return applied_gain
        peak = max(int(block.max()), -int(block.min())) / FULL_SCALE
        mean_square = self._mean_square(block, applied_gain)
        if mean_square > 0 and 10.0 * math.log10(mean_square) > self.gate:
            if self.mean_square is None:
                self.mean_square = mean_square
            else:
                keep = math.exp(-n / (self.window * self.rate))
                self.mean_square = keep * self.mean_square + (1.0 - keep) * mean_square
        if self.mean_square is not None:
            wanted = self._wanted_db(self.mean_square)
            step = self.slew * n / self.rate
            self.gain_db += min(step, max(-step, wanted - self.gain_db))
        if peak > self.limit:
            bound = round(self.limit * FULL_SCALE)
            self.clipped += int(np.count_nonzero((block > bound) | (block < -bound)))
            np.clip(block, -bound, bound, out=block)
        # The limiter: drop at once to what this block's peak needed, recover with `release`.
        recovered = 1.0 - (1.0 - self.limiter_gain) * math.exp(-n / (self.release * self.rate))
        raw_peak = peak / applied_gain
        fits = self.limit / (raw_peak * db_to_gain(self.gain_db)) if raw_peak > 0 else 1.0
        self.limiter_gain = min(recovered, fits, 1.0)
        return db_to_gain(self.gain_db) * self.limiter_gain
