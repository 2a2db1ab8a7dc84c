"""Outputs that fail for real: a full file system under the recording, an RTMP server that is not there.

A failing output must back off (doubling, capped), say so once when it starts failing and once when it works
again, keep its files tidy, and show its failures and state in `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from fake_concert import FakeConcert
from serving import free_port, rtmp_listener, running
from tones import BLOCK, RATE, tone

from bot.web.server import make_app
from synth.ffmpeg import FfmpegPush
from synth.outputs import FileSink, OutputStatus, SinkRunner

BACKOFF = (0.01, 0.16)  # the same doubling as a concert's (1 s to 60 s), a hundred times faster
KEY = "live_4242_s3cretStreamKey"
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 1 MiB (a tmpfs), mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mounted for the test, and mounting needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with one file, then free `leave` bytes of it again; the file, to delete for more room."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def feed(runner: SinkRunner, until: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Play a tone into `runner` as the engine would (a little faster than real time) until `until()` holds."""
    deadline = time.monotonic() + timeout
    start = 0
    while not until():
        if time.monotonic() > deadline:
            return False
        runner.submit(tone(start, BLOCK))
        start += BLOCK
        time.sleep(BLOCK / RATE / 4)
    return True


async def scrape(outputs: Callable[[], Sequence[OutputStatus]]) -> set[str]:
    app = make_app(FakeConcert(), None, outputs=outputs)
    async with running(app) as url, aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        return set((await r.text()).splitlines())


def test_a_full_disk_backs_off_logs_once_reuses_its_file_and_shows_in_metrics(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="synth.outputs")
    filler = fill(small_disk, leave=300_000)
    sink = FileSink(small_disk / "concert.wav")
    runner = SinkRunner(sink, RATE, backoff_seconds=BACKOFF, healthy_seconds=2.0)
    runner.start()
    try:
        # Ten failures in a row: the wait doubles up to its cap and stays there.
        assert feed(runner, lambda: runner.stats.failures >= 10), "the recording never failed"
        failing = runner.status()
        failing_metrics = asyncio.run(scrape(lambda: [failing]))
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        files_while_failing = sorted(p.name for p in small_disk.iterdir())

        filler.unlink()  # room again
        assert feed(runner, lambda: runner.state == "ok" and sink.current_path.stat().st_size > 50_000)
    finally:
        runner.stop()

    assert failing.state == "failing" and failing.retry_delay == BACKOFF[1]
    assert "No space left on device" in runner.stats.last_error
    # One line for all ten failures, and no traceback, not even from closing the file that could not be flushed.
    assert len(loud) == 1 and "No space left on device" in loud[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    # The recording that filled the disk, and one file (reused on every retry) for what comes after it.
    assert files_while_failing == ["concert-2.wav", "concert.wav", "filler"]
    assert sorted(p.name for p in small_disk.iterdir()) == ["concert-2.wav", "concert.wav"]
    with wave.open(str(small_disk / "concert-2.wav")) as resumed:
        assert resumed.getnframes() > 10_000
    recovered = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    name = f"recording {small_disk / 'concert.wav'}"
    assert {
        f'concertbot_output_failures_total{{output="{name}"}} {float(failing.failures)}',
        f'concertbot_output_state{{output="{name}",state="failing"}} 1.0',
        f'concertbot_output_state{{output="{name}",state="ok"}} 0.0',
        f'concertbot_output_retry_seconds{{output="{name}"}} {BACKOFF[1]}',
    } <= failing_metrics
    assert runner.status().state == "stopped" and runner.status().retry_delay == 0.0


def test_an_output_that_works_again_starts_its_backoff_over(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="synth.outputs")
    filler = fill(small_disk, leave=300_000)
    sink = FileSink(small_disk / "concert.wav")
    runner = SinkRunner(sink, RATE, backoff_seconds=BACKOFF, healthy_seconds=2.0)
    runner.start()
    try:
        assert feed(runner, lambda: runner.stats.failures >= 6)
        filler.unlink()
        assert feed(runner, lambda: runner.state == "ok")
        # Fill it again: a new episode, said once more, starting from the shortest wait.
        fill(small_disk, leave=0)
        failures_before = runner.stats.failures
        assert feed(runner, lambda: runner.stats.failures > failures_before)
        second = runner.status()
    finally:
        runner.stop()
    assert second.retry_delay == BACKOFF[0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("No space left on device" in m for m in messages) == 2
    assert sum("works again" in m for m in messages) == 1


# ffmpeg pushes


@needs_ffmpeg
def test_a_dead_rtmp_target_backs_off_and_says_so_once_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="synth")
    port = free_port()  # nothing listens there: every connection is refused
    push = FfmpegPush(f"rtmp://127.0.0.1:{port}/live/{KEY}", stall_timeout=5)
    runner = SinkRunner(push, RATE, backoff_seconds=BACKOFF)
    runner.start()
    try:
        assert feed(runner, lambda: runner.stats.failures >= 7, timeout=60), "ffmpeg never failed"
        failing = runner.status()
        failing_metrics = asyncio.run(scrape(lambda: [failing]))
    finally:
        runner.stop()
    assert failing.state == "failing" and failing.retry_delay == BACKOFF[1]  # it grew, and stopped at the cap
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and "Connection refused" in loud[0]
    assert sum("pushing audio to" in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO) == 1
    assert not any(KEY in r.getMessage() for r in caplog.records)
    name = f"rtmp://127.0.0.1:{port}/live/***"
    assert {
        f'concertbot_output_failures_total{{output="{name}"}} {float(failing.failures)}',
        f'concertbot_output_state{{output="{name}",state="failing"}} 1.0',
    } <= failing_metrics
    assert not any(KEY in line for line in failing_metrics)


class Tap:
    """A TCP relay that keeps what the client sent: proof of what reached the server."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if keep:
                    self.sent += data
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def live_command_line(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> bytes:
    """The command line of `proc`, read while it runs; the test fails if it exits first.

    A process that has exited (a zombie, not yet reaped) shows an empty /proc/<pid>/cmdline, and so does one
    caught between fork and exec: an empty read would pass "the key is not there" for nothing.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            command_line = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            # poll() reaps a process that has exited, so None here means it was running at the read above.
            if command_line and proc.poll() is None:
                return command_line
        if proc.poll() is not None:
            pytest.fail(f"ffmpeg exited (status {proc.returncode}) before its command line could be read")
        time.sleep(0.01)
    pytest.fail(f"ffmpeg's command line stayed empty for {timeout:g} s")


@needs_ffmpeg
def test_the_stream_key_reaches_the_server_but_not_ffmpegs_command_line(tmp_path: Path) -> None:
    port = free_port()
    received = tmp_path / "received.flv"
    server = rtmp_listener(str(FFMPEG), f"rtmp://127.0.0.1:{port}/live/{KEY}", port, received)
    tap = Tap(port)
    try:
        push = FfmpegPush(f"rtmp://127.0.0.1:{tap.port}/live/{KEY}")
        push.open(RATE)
        try:
            for i in range(0, 2 * RATE, BLOCK):
                push.write(tone(i, BLOCK))
            assert push._process is not None
            command_line = live_command_line(push._process.proc)
        finally:
            push.close()
        server.wait(timeout=15)
    finally:
        server.kill()
        server.wait()
        tap.close()
    assert command_line.startswith(FFMPEG.encode())  # really ffmpeg's, read while it was pushing
    assert KEY.encode() not in command_line
    assert f"rtmp://127.0.0.1:{tap.port}/live".encode() in command_line.split(b"\0")
    assert KEY.encode() in tap.sent and b"publish" in tap.sent  # the server was still told the key
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", received],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(probe.stdout) > 1.5
