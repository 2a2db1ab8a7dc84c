"""Start-up: the playing path imports only what plays, and every command computes on the threads set for it.

Each check runs a fresh interpreter, as a user's command does: in this test process torch and transformers are
long imported by other tests, so `sys.modules` here would say nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import ConfigError
from generator.threads import ENV, wanted_threads

ROOT = Path(__file__).resolve().parents[1]
# Training's machinery, none of which a concert needs before (or after) its first note.
NOT_FOR_PLAYING = ("transformers", "torch._dynamo", "miditok.pytorch_data", "accelerate", "huggingface_hub")

# The player's whole set-up in a fresh interpreter: the CLI and the concert's modules, the settings, the shipped
# model, a live session on FluidSynth, and a piece until its first audio block, then what was imported.
PLAY_UNTIL_FIRST_AUDIO = """
import json, sys, time
import numpy as np
import bot.cli, bot.app
from bot.concert.player import LiveSession
from config import load_settings
from generator.model import load_model
from generator.recipes import make_request

class Sink:
    name = "null"
    heard = False
    def open(self, sample_rate): pass
    def write(self, block): self.heard = self.heard or bool(np.abs(block).max() > 0)
    def close(self): pass

settings = load_settings()
loaded = load_model(settings.paths.model_dir)
sink = Sink()
with LiveSession(settings, loaded, [sink]) as session:
    request = make_request(loaded, "bach", seconds=5.0, seed=3)
    piece = session.request("p", request, requested_at=time.monotonic())
    started = session.wait_for(piece.id, ("start",), timeout=60)
    deadline = time.monotonic() + 60
    while not sink.heard and time.monotonic() < deadline:
        time.sleep(0.05)
    session.engine.skip()
print(json.dumps({"started": started is not None, "heard": sink.heard,
                  "modules": [m for m in NOT_FOR_PLAYING if m in sys.modules]}))
"""

# A command run through the real entry point (`concertbot ...` is bot.cli:main), saying at exit the thread count
# torch computed with, from torch itself.
REPORT_THREADS = """
import atexit, sys
def report():
    import torch
    print("torch threads:", torch.get_num_threads(), file=sys.stderr)
atexit.register(report)
from bot.cli import main
sys.argv = ["concertbot", *sys.argv[1:]]
main()
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != ENV and not k.startswith("CONCERTBOT_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_playing_to_first_audio_imports_no_training_machinery():
    done = _python(f"NOT_FOR_PLAYING = {NOT_FOR_PLAYING!r}\n" + PLAY_UNTIL_FIRST_AUDIO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["started"] and report["heard"], report  # it did play: the check below is not of a no-op
    assert report["modules"] == []


def _compose(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[bytes, int]:
    out = tmp_path / f"{name}.mid"
    args = ["compose", "irish", "--seed", "5", "--seconds", "12", "--out", str(out)]
    done = _python(REPORT_THREADS, *args, env=env)
    assert done.returncode == 0, done.stderr
    threads = [line for line in done.stderr.splitlines() if line.startswith("torch threads:")]
    return out.read_bytes(), int(threads[-1].split(":")[1])


def test_compose_samples_on_one_thread_and_the_count_does_not_change_the_notes(tmp_path):
    one, threads_one = _compose(tmp_path, "default", {})
    two, threads_two = _compose(tmp_path, "two", {ENV: "2"})
    assert threads_one == 1  # the default for every sampling command
    assert threads_two == 2  # the variable overrides it
    assert one == two and len(one) > 100  # same seed, same bytes on either thread count


def test_the_setting_sets_the_sampling_threads_and_a_bad_variable_is_one_line(tmp_path):
    _, threads = _compose(tmp_path, "setting", {"CONCERTBOT_ENGINE__TORCH_THREADS": "2"})
    assert threads == 2
    out = tmp_path / "x.mid"
    done = _python(REPORT_THREADS, "compose", "bach", "--out", str(out), env={ENV: "two"})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {ENV}='two': give a number of threads (1, 2, ...), or 0 for one per core"]
    assert "Traceback" not in done.stderr and not out.exists()


def test_training_keeps_one_thread_per_core_unless_told():
    assert wanted_threads("train", configured=1, environ={}) == 0  # 0: torch's default, one per core
    assert wanted_threads("train", configured=1, environ={ENV: "1"}) == 1
    assert wanted_threads("sample", configured=3, environ={}) == 3
    assert wanted_threads("sample", configured=3, environ={ENV: " 2 "}) == 2
    for bad in ("-1", "1.5", "²"):
        with pytest.raises(ConfigError, match=ENV):
            wanted_threads("sample", environ={ENV: bad})
