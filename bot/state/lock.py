"""One concert per data folder: a lock file that names its owner's pid, released by the kernel when it dies.

Two bots on one data folder would share its embedded Redis (the second adopts the first one's server) and play
over each other's queue. The lock is `flock`, not the file's existence, so a bot killed with SIGKILL leaves
nothing in the way: the next one takes the lock over and writes its own pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from config.errors import ConfigError

LOCK_NAME = "concertbot.lock"


@contextlib.contextmanager
def data_folder_lock(data_dir: Path) -> Iterator[Path]:
    """Hold the data folder for this process; `ConfigError` naming the pid of the bot that holds it already."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ConfigError(
                f"another concertbot (pid {owner}) is running on the data folder '{data_dir}' (lock: {path}); "
                "stop it first, or give this one its own paths.data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # emptied rather than removed: removing it would race with the next bot's open
    finally:
        os.close(fd)
