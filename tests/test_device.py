"""The sound-card output through real PortAudio and ALSA, with ALSA's file plugin standing in for a card.

No machine here has a sound card; ALSA's `file` PCM (configured in a throwaway ~/.asoundrc) accepts audio like
a device and also writes it to a file, so what `DeviceSink` played can be compared with what it was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _has_sound_card() -> bool:
    cards = Path("/proc/asound/cards")
    return cards.is_file() and "no soundcards" not in cards.read_text()


PLAY = """
import numpy as np
from synth.outputs import DeviceSink, sound_device_problem
assert sound_device_problem(None) is None, sound_device_problem(None)
sink = DeviceSink(None)
sink.open(44100)
audio = np.load("{audio}")
for i in range(0, len(audio), 2048):
    sink.write(audio[i : i + 2048])
sink.close()
"""


def test_device_sink_plays_every_sample_to_the_default_device(tmp_path: Path):
    capture = tmp_path / "card.raw"
    (tmp_path / ".asoundrc").write_text(
        f'pcm.!default {{ type file\n slave.pcm "null"\n file "{capture}"\n format "raw" }}\n'
    )
    t = np.arange(44100 * 2) / 44100
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    audio = np.stack([tone, -tone], axis=1)
    np.save(tmp_path / "audio.npy", audio)
    # PortAudio reads the ALSA configuration when sounddevice is imported: a fresh process with its own HOME.
    env = os.environ | {"HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PLAY.format(audio=tmp_path / "audio.npy")],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    played = np.frombuffer(capture.read_bytes(), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(played, audio)


@pytest.mark.skipif(_has_sound_card(), reason="this machine has a sound card")
def test_without_a_device_the_problem_is_named(tmp_path: Path):
    (tmp_path / ".asoundrc").write_text("")  # no default device at all on this machine
    code = "from synth.outputs import sound_device_problem; print(sound_device_problem(None))"
    env = os.environ | {"HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() not in ("", "None")
