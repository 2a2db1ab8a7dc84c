"""`concertbot run` refuses, in one line and before anything plays, what another program already holds."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from serving import free_port

BOT = [sys.executable, "-m", "bot.cli", "run", "--local", "--device", "off"]
Bot = subprocess.Popen[str]


def env(data_dir: Path, port: int) -> dict[str, str]:
    return os.environ | {
        "CONCERTBOT_PATHS__DATA_DIR": str(data_dir),
        "CONCERTBOT_HTTP_PORT": str(port),
        "CONCERTBOT_SAMPLING__SECONDS": "20",
    }


def run_to_the_end(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOT, "--seconds", "30"],
        env=env(data_dir, port),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start(data_dir: Path, port: int, *, background: bool = False, stderr: int = subprocess.DEVNULL) -> Bot:
    """A bot that plays until stopped, once its web side answers.

    `background` starts it as a shell's `concertbot run &` does: SIGINT ignored, stdin from /dev/null.
    """
    bot = subprocess.Popen(
        BOT,
        env=env(data_dir, port),
        text=True,
        stdin=subprocess.DEVNULL if background else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=ignore_sigint if background else None,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert bot.poll() is None, f"the bot exited with {bot.returncode}"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return bot
            assert time.monotonic() < deadline, "the bot's web side never answered"
            time.sleep(0.2)
    except BaseException:
        stop(bot, signal.SIGKILL)
        raise


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop(bot: Bot, sig: int = signal.SIGINT) -> None:
    bot.send_signal(sig)
    try:
        bot.wait(30)
    except subprocess.TimeoutExpired:
        bot.kill()
        bot.wait()


def test_a_taken_http_port_fails_in_one_line_before_anything_plays(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_to_the_end(tmp_path / "data", port)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "now playing" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and f"concert.http_port = {port}" in errors[0]
    assert "Address already in use" in errors[0]
    assert not (tmp_path / "data" / "redis").exists()  # no Redis was started for it either


def test_a_second_bot_on_the_same_data_folder_is_refused_and_a_dead_ones_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = start(data, free_port())
    try:
        second = run_to_the_end(data, free_port())
        assert first.poll() is None  # the first one plays on
    finally:
        stop(first, signal.SIGKILL)  # as a crash leaves it: the lock file still names this pid
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    errors = [line for line in second.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"another concertbot (pid {first.pid})" in errors[0]
    assert (data / "concertbot.lock").read_text().strip() == str(first.pid)

    third = start(data, free_port())  # the dead bot's lock is no obstacle
    try:
        assert (data / "concertbot.lock").read_text().strip() == str(third.pid)
    finally:
        stop(third)


def test_ctrl_c_stops_a_bot_started_in_the_background(tmp_path: Path) -> None:
    # A shell's `concertbot run &` (and the soak bench, run so) starts it with SIGINT ignored; Ctrl-C, or the
    # bench's SIGINT, must still stop it, its embedded Redis with it.
    bot = start(tmp_path / "data", free_port(), background=True, stderr=subprocess.PIPE)
    try:
        bot.send_signal(signal.SIGINT)
        _, err = bot.communicate(timeout=60)
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait()
    assert bot.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "redis" / "redis.pid").exists()  # the embedded Redis stopped with it
