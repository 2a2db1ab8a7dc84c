"""The synth against real FluidSynth and a real SoundFont: timing, silence, soundfont discovery, WAV output."""

from __future__ import annotations

import math
import shutil
import wave
from collections.abc import Iterator

import mido
import numpy as np
import pytest

from config.errors import ConfigError
from config.settings import Synth
from synth import soundfonts
from synth.render import FluidSynthRenderer, rms_dbfs, write_wav
from synth.soundfonts import SoundFont, find_soundfont

RATE = 44100
ONSET = 50  # |sample| above FluidSynth's dither (a few units) and below any played note's first milliseconds
SILENT_DBFS = -80.0  # the dither alone measures about -96 dBFS


def note(start: float, end: float, pitch: int, channel: int = 0) -> list[tuple[float, mido.Message]]:
    return [
        (start, mido.Message("note_on", channel=channel, note=pitch, velocity=80)),
        (end, mido.Message("note_off", channel=channel, note=pitch, velocity=0)),
    ]


def arpeggio(start: float) -> list[tuple[float, mido.Message]]:
    """C major up, a quarter second per note, in the (program changes first, then time order) form."""
    events = [
        e for i, p in enumerate((60, 64, 67, 72)) for e in note(start + 0.25 * i, start + 0.25 * (i + 1), p)
    ]
    return [(0.0, mido.Message("program_change", channel=0, program=0)), *sorted(events, key=lambda e: e[0])]


def frame(seconds: float) -> int:
    return round(seconds * RATE)


@pytest.fixture(scope="module")
def shared() -> Iterator[FluidSynthRenderer]:
    with FluidSynthRenderer(find_soundfont(None), sample_rate=RATE) as renderer:
        yield renderer


@pytest.fixture
def renderer(shared: FluidSynthRenderer) -> FluidSynthRenderer:
    shared.reset()
    return shared


def test_arpeggio_is_as_long_as_its_events_plus_tail_and_sounds_only_when_played(renderer):
    audio = renderer.render(arpeggio(start=1.0), tail_seconds=0.75)

    assert audio.dtype == np.int16
    assert audio.shape == (frame(2.0) + frame(0.75), 2)
    assert rms_dbfs(audio[: frame(1.0)]) < SILENT_DBFS
    assert rms_dbfs(audio[frame(1.0) : frame(2.0)]) > -50.0


@pytest.mark.parametrize("start", [0.5, 0.7321])
def test_note_starts_at_its_sample_offset(renderer, start):
    audio = renderer.render(note(start, start + 0.3, 60), tail_seconds=0.2)

    first = int(np.argmax(np.abs(audio.astype(np.int32)).max(axis=1) > ONSET))
    assert frame(start) <= first < frame(start + 0.010)


def test_no_voice_outlives_its_render(renderer):
    # An organ never decays by itself, and a held pedal would keep it going even after its note-off.
    organ = [
        (0.0, mido.Message("program_change", channel=0, program=19)),
        (0.0, mido.Message("note_on", channel=0, note=60, velocity=100)),
        (0.1, mido.Message("control_change", channel=0, control=64, value=127)),
        *note(0.2, 0.4, 38, channel=9),
    ]
    renderer.render(organ, tail_seconds=1.5)

    after = renderer.render([], tail_seconds=1.0)
    assert after.shape == (frame(1.0), 2)
    assert rms_dbfs(after) < SILENT_DBFS


def test_reset_cuts_a_piece_that_is_still_ringing(renderer):
    # Cut off by a zero tail: the render ends while the chord still sounds at full strength.
    chord = [e for p in (48, 60, 64, 67) for e in note(0.0, 1.0, p)[:1]]
    cut = renderer.render([*chord, (1.0, mido.Message("control_change", channel=0, control=7, value=100))], 0.0)
    assert rms_dbfs(cut[-frame(0.1) :]) > -50.0

    renderer.reset()
    assert rms_dbfs(renderer.render([], tail_seconds=0.5)) < SILENT_DBFS


def timbre_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean gap between log band spectra: blind to the small time shifts FluidSynth's 64-frame blocks cause."""

    def bands(audio: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.rfft(audio.astype(np.float64).mean(axis=1)))
        edges = np.geomspace(1, len(spectrum) - 1, 60).astype(int)
        return np.log10(np.add.reduceat(spectrum, edges) + 1e-9)

    return float(np.abs(bands(a) - bands(b)).mean())


def test_channel_9_plays_drums_and_program_changes_pick_instruments(renderer):
    piano = renderer.render(note(0.0, 0.5, 38))
    drum = renderer.render(note(0.0, 0.5, 38, channel=9))
    violin = renderer.render(
        [(0.0, mido.Message("program_change", channel=0, program=40)), *note(0.0, 0.5, 38)]
    )
    renderer.reset()
    after_reset = renderer.render(note(0.0, 0.5, 38))

    # The same instrument measures below 0.05 and a different one above 0.5.
    assert timbre_distance(drum, piano) > 0.2
    assert timbre_distance(violin, piano) > 0.2
    assert timbre_distance(after_reset, piano) < 0.1


def test_messages_out_of_time_order_are_refused(renderer):
    with pytest.raises(ValueError, match="comes after"):
        renderer.render([*note(1.0, 1.5, 60), *note(0.5, 0.7, 62)])


def test_soundfont_search_order(tmp_path, monkeypatch):
    real = find_soundfont(None, tmp_path)
    assert real.origin in {"Debian fluid-soundfont-gm", "pretty_midi TimGM6mb"}
    shutil.copy(real.path, tmp_path / "b_piano.sf2")
    (tmp_path / "c_later.sf3").write_bytes(b"")
    (tmp_path / "a_readme.txt").write_text("not a soundfont")

    found = find_soundfont(None, tmp_path)
    assert found == SoundFont(tmp_path / "b_piano.sf2", f"{tmp_path}/ folder")
    assert find_soundfont(tmp_path / "c_later.sf3", tmp_path) == SoundFont(
        tmp_path / "c_later.sf3", "configured"
    )
    with FluidSynthRenderer(found, sample_rate=RATE) as copied:
        assert rms_dbfs(copied.render(note(0.0, 0.3, 60))) > -50.0

    monkeypatch.setattr(soundfonts, "DEBIAN_SOUNDFONT", tmp_path / "missing" / "FluidR3_GM.sf2")
    bundled = find_soundfont(None, tmp_path / "missing")
    assert bundled.origin == "pretty_midi TimGM6mb"
    assert bundled.path.name == "TimGM6mb.sf2"
    assert bundled.path.is_file()

    monkeypatch.setattr(soundfonts, "PRETTY_MIDI_PACKAGE", "no_such_package_here")
    with pytest.raises(ConfigError, match="apt install fluid-soundfont-gm"):
        find_soundfont(None, tmp_path / "missing")


def test_configured_soundfont_must_exist_and_be_one(tmp_path):
    missing = tmp_path / "nowhere" / "Piano.sf2"
    with pytest.raises(ConfigError) as err:
        find_soundfont(missing)
    assert str(missing) in str(err.value)

    text = tmp_path / "notes.txt"
    text.write_text("la la la")
    with pytest.raises(ConfigError, match="not a SoundFont"):
        find_soundfont(text)


def test_operator_mistakes_the_synth_finds_become_config_errors(tmp_path):
    corrupt = tmp_path / "corrupt.sf2"
    corrupt.write_bytes(b"RIFF not really")
    with pytest.raises(ConfigError, match="could not load"):
        FluidSynthRenderer(corrupt)
    with pytest.raises(ConfigError, match="192000"):
        FluidSynthRenderer(find_soundfont(None), sample_rate=192000)


def test_from_settings_uses_the_settings_and_reports_its_soundfont(tmp_path):
    settings = Synth(sample_rate=22050, gain=0.3, reverb=False)
    with FluidSynthRenderer.from_settings(settings, search_dir=tmp_path) as renderer:
        assert renderer.soundfont == find_soundfont(None, tmp_path)
        assert renderer.render(note(0.0, 1.0, 60), tail_seconds=0.5).shape == (22050 + 11025, 2)


def test_wav_round_trip(tmp_path):
    audio = np.random.default_rng(0).integers(-32768, 32768, size=(1000, 2), dtype=np.int16)
    path = tmp_path / "piece.wav"
    write_wav(path, audio, 22050)

    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (
            2,
            2,
            22050,
            1000,
        )
        back = np.frombuffer(wav.readframes(1000), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(back, audio)


def test_rms_dbfs_reads_silence_and_full_scale():
    assert rms_dbfs(np.zeros((100, 2), dtype=np.int16)) == -math.inf
    full = np.tile(np.array([[32767, -32767], [-32767, 32767]], dtype=np.int16), (50, 1))
    assert rms_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(full // 10) == pytest.approx(-20.0, abs=0.01)


def test_a_gain_change_scales_what_is_rendered_next():
    font = find_soundfont(None)
    with (
        FluidSynthRenderer(font, sample_rate=RATE, gain=0.2) as steady,
        FluidSynthRenderer(font, sample_rate=RATE, gain=0.2) as moved,
    ):
        for r in (steady, moved):
            r.play(mido.Message("note_on", note=60, velocity=90))
        assert np.array_equal(steady.frames(2048), moved.frames(2048))
        moved.set_gain(0.4)
        moved.set_gain(0.4)  # the same gain again: nothing to do
        assert moved.gain == 0.4
        louder = rms_dbfs(moved.frames(8192)) - rms_dbfs(steady.frames(8192))
        assert louder == pytest.approx(20 * math.log10(2), abs=0.1)
