"""Serving an aiohttp app on a free local port for tests that talk to it over real HTTP, and waiting for a
local listener (an ffmpeg RTMP server) without connecting to it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web


@contextlib.asynccontextmanager
async def running(app: web.Application, shutdown_timeout: float = 2.0) -> AsyncIterator[str]:
    """Serve `app` on a free port of 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def listening_quietly(port: int) -> bool:
    """Whether a local TCP socket listens on `port`, read from /proc so that no probe connection is made: a
    probe would be taken as the one client that `ffmpeg -listen 1` serves."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    return True
    return False


def rtmp_listener(
    ffmpeg: str, url: str, port: int, out: Path, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen:
    """`ffmpeg -listen 1` receiving `url` (served on `port`) into `out`, returned once it listens."""
    server = subprocess.Popen(
        [ffmpeg, "-v", "error", "-listen", "1", "-i", url, "-c", "copy", "-y", str(out)], stderr=stderr
    )
    deadline = time.monotonic() + 10
    try:
        while not listening_quietly(port):
            assert server.poll() is None and time.monotonic() < deadline, "the RTMP server did not start"
            time.sleep(0.02)
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server
