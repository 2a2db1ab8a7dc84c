"""How many threads torch computes with: decided here for every command, sampling and training alike.

Sampling runs at batch size 1, where every small matrix product split over two threads waits for the slower
one: on a 2-core machine two threads never beat one, and with another busy program beside them they lost
2-10x (issue 15). So a sampler gets one thread, leaving the other cores to the synth, OBS or a game. Training
multiplies 16 x 512 tokens at a time, products big enough to share, so it keeps torch's default of one thread
per core. Notes do not depend on the count: a seed gives the same bytes with 1 or 2 threads
(tests/test_startup.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from config.errors import ConfigError

Job = Literal["sample", "train"]
ENV = "CONCERTBOT_TORCH_THREADS"
TORCH_DEFAULT = 0  # leave torch's own choice: one thread per core (or OMP_NUM_THREADS)


def wanted_threads(job: Job, configured: int = 1, environ: Mapping[str, str] = os.environ) -> int:
    """The thread count for `job`; 0 means torch's default.

    Args:
        job: "sample" (compose, play, run, eval, the bench scripts) or "train".
        configured: the settings' `engine.torch_threads`, which sampling follows.
        environ: CONCERTBOT_TORCH_THREADS there overrides both, for any job.

    Raises:
        ConfigError: CONCERTBOT_TORCH_THREADS is not a whole number from 0 up.
    """
    text = environ.get(ENV, "").strip()
    if text:
        if not text.isdigit() or not text.isascii():
            raise ConfigError(f"{ENV}={text!r}: give a number of threads (1, 2, ...), or 0 for one per core")
        return int(text)
    return configured if job == "sample" else TORCH_DEFAULT


def use_torch_threads(job: Job = "sample", configured: int = 1) -> int:
    """Set torch's intra-op threads for this process (threads started later follow); the count in force.

    Raises:
        ConfigError: CONCERTBOT_TORCH_THREADS is malformed.
    """
    global _torch_default
    count = wanted_threads(job, configured)
    import torch  # not at the top: a malformed variable is said before torch's second of importing

    if _torch_default is None:
        _torch_default = torch.get_num_threads()  # what torch chose, before any command changed it
    torch.set_num_threads(count or _torch_default)
    return torch.get_num_threads()


_torch_default: int | None = None
