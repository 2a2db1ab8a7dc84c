#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs to run concertbot and its tests:
# FluidSynth and a General MIDI SoundFont from the system's packages, then a virtual environment in .venv.
# Each step prints its time; apt's and pip's own output goes to a log shown only when a step fails. Run it
# again at any time: what is already there is kept, and an unchanged set-up takes seconds.
set -Eeuo pipefail  # -E: the ERR trap that shows the log fires inside functions too
cd "$(dirname "$0")/.."

TORCH="torch==2.13.0"
STEPS=5
log=$(mktemp -t concertbot-setup.XXXXXX.log)
started=$SECONDS
step_no=0

# step LABEL: start a step; done_step [NOTE]: end it with its time. A failing command ends the script
# through the ERR trap, which shows the log.
step() {
    step_no=$((step_no + 1))
    step_started=$SECONDS
    printf '[%d/%d] %s ... ' "$step_no" "$STEPS" "$1"
}
done_step() {
    printf '%s%d s\n' "${1:+$1, }" $((SECONDS - step_started))
}
failed() {
    echo "failed"
    rm -f .venv/.concertbot-setup  # the next run installs again rather than trusting the last one
    echo "--- the last lines of $log ---" >&2
    tail -n 40 "$log" >&2
    echo "--- set-up stopped; the whole log is in $log ---" >&2
    exit 1
}
trap failed ERR

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

step "system packages (apt-get)"
need=()
# Read once, then searched: `ldconfig -p | grep -q` fails under pipefail when grep stops reading early.
libs=$(ldconfig -p)
grep -q libfluidsynth.so.3 <<<"$libs" || need+=(libfluidsynth3)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || need+=(fluid-soundfont-gm)
grep -q libportaudio.so.2 <<<"$libs" || need+=(libportaudio2)  # sounddevice's PortAudio
command -v ffmpeg >/dev/null || need+=(ffmpeg)  # the live MP3 stream and RTMP/Icecast pushes
command -v chromium >/dev/null || need+=(chromium)  # the overlay's browser tests
if [ ${#need[@]} -gt 0 ]; then
    printf '%s ... ' "${need[*]}"
    $sudo apt-get update -qq >>"$log" 2>&1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >>"$log" 2>&1
    done_step "installed"
else
    done_step "all there"
fi

step "virtual environment (.venv)"
python=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
    done_step "kept"
else
    "$python" -m venv .venv >>"$log" 2>&1
    done_step "made with $("$python" --version 2>&1)"
fi

# The pip steps are skipped when the dependencies they installed last time are unchanged (same pyproject.toml,
# same torch pin, same Python) and still import; anything else installs again.
stamp=.venv/.concertbot-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH $(.venv/bin/python --version 2>&1)"
up_to_date=false
# find_spec looks for the packages without importing them (the check step imports them, once).
present="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && .venv/bin/python -c "$present" torch fluidsynth miditok music21 bot.cli >>"$log" 2>&1; then
    up_to_date=true
fi

pip() {
    # Quiet, and into the log: pip's warnings (a find-links location that does not exist, "Location ... is
    # ignored") are noise unless the install fails.
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >>"$log" 2>&1
}

step "torch ($TORCH, the CPU build)"
if $up_to_date; then
    done_step "up to date"
else
    # The CPU build keeps the install small; a GPU machine can install its own torch first.
    pip "$TORCH"
    done_step
fi

step "concertbot and its Python packages (pip install -e .[dev])"
if $up_to_date; then
    done_step "up to date"
else
    pip -e ".[dev]"
    echo "$want" >"$stamp"
    done_step
fi

step "check"
version=$(.venv/bin/python -c "import torch, fluidsynth, miditok, music21, bot.cli; print(torch.__version__)" 2>>"$log")
done_step "torch $version imports, with FluidSynth, MidiTok and music21"

trap - ERR
rm -f "$log"
took=$((SECONDS - started))
printf '\nconcertbot is set up (%d min %d s). Next:\n' $((took / 60)) $((took % 60))
echo "  .venv/bin/concertbot run      a local concert: type !compose bach violin cello; Ctrl-C stops"
echo "  .venv/bin/concertbot doctor   checks the sound card, ffmpeg, SoundFont, port, Redis and Twitch token"
echo "  bash .ci/run                  the tests, as CI runs them (set-up, ruff, mypy, pytest)"
