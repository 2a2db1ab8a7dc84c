"""Kill the bot with SIGKILL mid-concert, start it again: queue, votes and leaderboard intact, music goes on."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BOT = [sys.executable, "-m", "bot.cli", "run", "--device", "off"]


class Bot:
    """`concertbot run` with local chat on a pipe; what it prints is collected line by line."""

    def __init__(self, data_dir: Path) -> None:
        env = os.environ | {
            "CONCERTBOT_PATHS__DATA_DIR": str(data_dir),
            "CONCERTBOT_SAMPLING__SECONDS": "40",
            "CONCERTBOT_CONCERT__AUTOPLAY": "false",
            "CONCERTBOT_CONCERT__VIEWER_COOLDOWN_SECONDS": "0",
            "CONCERTBOT_CONCERT__GLOBAL_COOLDOWN_SECONDS": "0",
            "CONCERTBOT_CONCERT__HTTP_PORT": "0",
        }
        self.proc = subprocess.Popen(
            BOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip())

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; the bot said:\n" + "\n".join(seen[-30:]))


def test_sigkill_mid_concert_loses_nothing(tmp_path: Path):
    first = Bot(tmp_path)
    try:
        first.say("ada: !compose bach violin cello")
        seed = int(first.expect(r"now playing .*bach .*seed (\d+)").group(1))
        first.say("bob: !compose irish flute")
        first.expect(r"@bob your irish .* is #1 in the queue")
        first.say("cyd: !compose folk")
        first.expect(r"@cyd your folk .* is #2 in the queue")
        first.say("bob: !vote")
        first.say("cyd: !vote")
        first.expect(r"@bob.*vote.*counted|@cyd.*vote.*counted")
        first.say("ada: !top")
        first.expect(rf"@ada top of the stream: #1 {seed} \(bach, 2\)")
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

    second = Bot(tmp_path)
    try:
        # The piece that was cut plays again from the start, the queue and the board are as they were.
        second.expect(rf"now playing .*bach .*seed {seed}")
        second.say("ada: !queue")
        second.expect(r"@ada 2 requests in the queue")
        second.say("ada: !top")
        second.expect(rf"@ada top of the stream: #1 {seed} \(bach, 2\)")
        second.say("dan: !vote")
        second.expect(rf"@dan your vote for {seed} is counted")
    finally:
        second.proc.send_signal(signal.SIGTERM)  # as a service manager stops it: a clean stop, like Ctrl-C
        try:
            code = second.proc.wait(20)
        except subprocess.TimeoutExpired:
            second.proc.kill()
            raise
    assert code == 0
    # The embedded Redis went down with the bot (the first bot's was adopted by the second, then stopped).
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "redis")], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
