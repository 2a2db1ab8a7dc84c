"""Where rendered audio goes: the contract every output follows."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class AudioSink(Protocol):
    """One output of the live engine (sound device, file, HTTP stream, ffmpeg push).

    The engine drives each sink from a thread of its own: `open`, then `write` for every block, then `close`.
    Any exception from `open` or `write` marks the sink failed: the engine logs it, calls `close`, waits with
    backoff and calls `open` again, while the music and the other sinks go on.
    """

    name: str  # short and free of secrets: it appears in logs (an ffmpeg URL's stream key must not)
    # Optional: a sink may set `max_queue_seconds` to keep its queue, and so its latency, that short.

    def open(self, sample_rate: int) -> None:
        """Acquire the device, file, process or socket; raise if that is impossible now."""

    def write(self, block: np.ndarray) -> None:
        """Take one block of int16 stereo audio, shape [n_frames, 2]; may block briefly; raise on failure."""

    def close(self) -> None:
        """Release everything; safe to call after a failed `open` and more than once."""
