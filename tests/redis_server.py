"""A real redis-server on a free port, for tests that kill it and start it again mid-concert."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from serving import free_port, listening

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """`redis-server` keeping its append-only file in `directory`, so that a restart finds the data again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None, "needs the redis-server program"
        self.directory.mkdir(parents=True, exist_ok=True)
        # appendfsync always: under "everysec" a kill a few milliseconds after a write may lose it (Redis's
        # documented bargain), and the tests check that nothing acknowledged is lost.
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            assert self._proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would; nothing is flushed or said to the clients."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()
