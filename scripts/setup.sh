#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs to run concertbot and its tests:
# FluidSynth and a General MIDI SoundFont from the system's packages, then a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
ldconfig -p | grep -q libfluidsynth.so.3 || need+=(libfluidsynth3)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
ldconfig -p | grep -q libportaudio.so.2 || need+=(libportaudio2)  # sounddevice's PortAudio
command -v ffmpeg >/dev/null || need+=(ffmpeg)  # the live MP3 stream and RTMP/Icecast pushes
command -v chromium >/dev/null || need+=(chromium)  # the overlay's browser tests
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# The CPU build of torch 2.13 keeps the install small; a GPU machine can install its own torch first.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, fluidsynth, miditok, music21; print('concertbot is set up: torch', torch.__version__)"
