"""Offline FluidSynth rendering: timed MIDI messages in, int16 stereo samples out.

No audio driver is ever started; the caller decides where the samples go (a file, a stream, a test).
"""

from __future__ import annotations

import contextlib
import math
import sys
import wave
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

import numpy as np

from config.errors import ConfigError
from synth.loudness import db_to_gain
from synth.soundfonts import SoundFont, find_soundfont

# pyfluidsynth prints where it found the library when CI is set in the environment; stdout is the commands'
# output (`doctor --json`, `play --json`), so that line goes to stderr.
with contextlib.redirect_stdout(sys.stderr):
    import fluidsynth

if TYPE_CHECKING:
    import mido

    from config.settings import Synth as SynthSettings
    from synth.loudness import Leveler

CHANNELS = 16
DRUM_CHANNEL = 9  # General MIDI's percussion channel (10, counted from 1)
DRUM_BANK = 128  # where SoundFonts keep their drum kits
SUSTAIN, SOSTENUTO = 64, 66
FADE_BLOCK = 1024  # frames
LEVEL_BLOCK = 2048  # frames between gain changes in a levelled offline render, as the engine's default block
MAX_FADE_BLOCKS = 1000  # about 20 s at 48 kHz; a cut voice fades in well under one


class FluidSynthRenderer:
    """One FluidSynth instance that renders pieces into memory, one after another."""

    def __init__(
        self,
        soundfont: Path | SoundFont,
        sample_rate: int = 44100,
        gain: float = 0.5,
        reverb: bool = True,
        reverb_room: float = 0.5,
        reverb_level: float = 0.6,
    ) -> None:
        """Load the SoundFont into a fresh synth.

        Args:
            soundfont: the .sf2/.sf3 file, or a `SoundFont` from `find_soundfont`.
            sample_rate: output rate in Hz; FluidSynth accepts 8000 to 96000.
            gain: FluidSynth's master gain; lower leaves more headroom for dense pieces.
            reverb: whether the reverb effect is on.
            reverb_room: reverb room size, 0 to 1.
            reverb_level: reverb output level, 0 to 1.

        Raises:
            ConfigError: FluidSynth refused the sample rate or could not load the SoundFont.
        """
        self.soundfont = soundfont if isinstance(soundfont, SoundFont) else SoundFont(Path(soundfont), "given")
        self.sample_rate = sample_rate
        self.gain = gain
        self.base_gain = gain  # the settings' gain, which a leveler's gain multiplies
        options = {
            "synth.verbose": 0,
            "synth.reverb.active": int(reverb),
            "synth.reverb.room-size": float(reverb_room),
            "synth.reverb.level": float(reverb_level),
        }
        self._fs: Any = fluidsynth.Synth(gain=gain, samplerate=sample_rate, channels=CHANNELS, **options)
        try:
            # An out-of-range rate becomes 44.1 kHz with only a log line, and every offset would be wrong.
            if self._fs.get_setting("synth.sample-rate") != sample_rate:
                raise ConfigError(f"synth.sample_rate = {sample_rate}: FluidSynth accepts 8000 to 96000 Hz")
            self._sfid = self._fs.sfload(str(self.soundfont.path))
            if self._sfid < 0:
                raise ConfigError(
                    f"FluidSynth could not load the SoundFont '{self.soundfont.path}' ({self.soundfont.origin})"
                )
        except BaseException:
            self._fs.delete()
            raise
        self.reset()

    @classmethod
    def from_settings(cls, settings: SynthSettings, search_dir: Path | None = None) -> Self:
        """A renderer for the `[synth]` settings, its SoundFont chosen by `find_soundfont`."""
        return cls(
            find_soundfont(settings.soundfont, search_dir),
            sample_rate=settings.sample_rate,
            gain=settings.gain,
            reverb=settings.reverb,
            reverb_room=settings.reverb_room,
            reverb_level=settings.reverb_level,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Free the synth and its SoundFont; safe to call twice."""
        if self._fs is not None:
            self._fs.delete()
            self._fs = None

    def render(
        self,
        messages: Iterable[tuple[float, mido.Message]],
        tail_seconds: float = 1.5,
        leveler: Leveler | None = None,
    ) -> np.ndarray:
        """Play timed messages into an int16 array of shape [n_samples, 2].

        Args:
            messages: `(seconds, message)` pairs in time order; each message takes effect at sample
                `round(seconds * sample_rate)`. note_on, note_off, program_change, control_change and
                pitchwheel are played; other types change nothing in a General MIDI piece and are skipped.
            tail_seconds: how long to keep rendering after the last message, once every note is released,
                so that releases and reverb fade out instead of being cut.
            leveler: the loudness control the live stream applies (`synth.loudness.leveler_for`), so that a
                file sounds as loud as the stream; a fresh one is first primed on the piece's opening
                (rendered twice: a few seconds of extra synth work). None renders the synth's raw level.

        Returns:
            `round(last_seconds * sample_rate) + round(tail_seconds * sample_rate)` stereo frames.

        Raises:
            ValueError: a message is earlier than the one before it; call `reset()` before the next piece.
        """
        if leveler is None:
            return self._render(messages, tail_seconds, self.frames)
        messages = list(messages)
        if leveler.fresh:
            opening = [(t, m) for t, m in messages if t < leveler.window]
            leveler.prime(
                self._render(opening, leveler.window - (opening[-1][0] if opening else 0.0), self.frames)
            )
            self.reset()
        self.set_gain(self.base_gain * db_to_gain(leveler.gain_db) * leveler.limiter_gain)

        def leveled(n: int) -> np.ndarray:
            parts = [
                self.level(self.frames(min(LEVEL_BLOCK, n - i)), leveler) for i in range(0, n, LEVEL_BLOCK)
            ]
            return np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int16)

        try:
            return self._render(messages, tail_seconds, leveled)
        finally:
            self.set_gain(self.base_gain)

    def _render(
        self,
        messages: Iterable[tuple[float, mido.Message]],
        tail_seconds: float,
        frames: Callable[[int], np.ndarray],
    ) -> np.ndarray:
        chunks: list[np.ndarray] = []
        done = 0  # frames rendered so far
        for seconds, msg in messages:
            offset = round(seconds * self.sample_rate)
            if offset < done:
                raise ValueError(
                    f"{msg} at {seconds:.4f} s comes after a message at {done / self.sample_rate:.4f} s"
                )
            # FluidSynth renders 64-frame blocks, so an event may land up to 63 frames (1.4 ms) late: inaudible.
            chunks.append(frames(offset - done))
            done = offset
            self.play(msg)
        self.release_all()
        chunks.append(frames(round(tail_seconds * self.sample_rate)))
        return np.concatenate(chunks)

    def level(self, block: np.ndarray, leveler: Leveler) -> np.ndarray:
        """Pass a block just rendered through `leveler` (in place) and set the gain for the next one.

        The gain is the synth's own master gain, so levelling costs no pass over the samples; the live
        engine and the offline renders both level through here.
        """
        self.set_gain(self.base_gain * leveler.observe(block, self.gain / self.base_gain))
        return block

    def reset(self) -> None:
        """Cut every sound and restore the default programs, ready for an unrelated piece."""
        # Voices cut by a reset still fade for a fraction of a second, feeding the reverb as they go; render
        # that fade into nothing, then reset again, which also empties the reverb and chorus lines.
        self._fs.system_reset()
        for _ in range(MAX_FADE_BLOCKS):
            if self._fs.get_active_voice_count() == 0:
                break
            self.frames(FADE_BLOCK)
        self._fs.system_reset()
        for chan in range(CHANNELS):
            self._select(chan, 0)

    def frames(self, n: int) -> np.ndarray:
        """The next `n` frames of whatever is sounding, int16 of shape [n, 2]."""
        out = np.empty((n, 2), dtype=np.int16)
        if n:
            # Straight into our array: pyfluidsynth's get_samples allocates and copies twice per call, which
            # costs more than rendering a block of a quiet passage.
            pointer = out.ctypes.data
            fluidsynth.fluid_synth_write_s16(self._fs.synth, n, pointer, 0, 2, pointer, 1, 2)
        return out

    def set_gain(self, gain: float) -> None:
        """Change the master gain from the next rendered frame on (FluidSynth allows 0 to 10)."""
        gain = min(10.0, max(0.0, gain))
        if gain == self.gain:
            return
        self.gain = gain
        self._fs.setting("synth.gain", gain)

    def active_voices(self) -> int:
        return int(self._fs.get_active_voice_count())

    def play(self, msg: mido.Message) -> None:
        """Apply one message now, that is, at the next frame to be rendered."""
        match msg.type:
            case "note_on":  # velocity 0 is a note-off; FluidSynth treats it as one
                self._fs.noteon(msg.channel, msg.note, msg.velocity)
            case "note_off":
                self._fs.noteoff(msg.channel, msg.note)
            case "program_change":
                self._select(msg.channel, msg.program)
            case "control_change":
                self._fs.cc(msg.channel, msg.control, msg.value)
            case "pitchwheel":
                self._fs.pitch_bend(msg.channel, msg.pitch)

    def _select(self, chan: int, program: int) -> None:
        bank = DRUM_BANK if chan == DRUM_CHANNEL else 0
        if self._fs.program_select(chan, self._sfid, bank, program) != 0:
            # Small fonts lack some presets (most drum kits beyond the standard one); preset 0 still plays.
            self._fs.program_select(chan, self._sfid, bank, 0)

    def cut(self) -> None:
        """Stop every voice at once, skipping release tails: for a skip or a stop, not for a piece's end."""
        for chan in range(CHANNELS):
            self._fs.cc(chan, SUSTAIN, 0)
            self._fs.cc(chan, SOSTENUTO, 0)
            self._fs.all_sounds_off(chan)

    def release_all(self) -> None:
        """Release every note as a player would, letting releases and reverb ring out."""
        for chan in range(CHANNELS):
            # A held pedal would keep released notes sounding through the tail and into the next piece.
            self._fs.cc(chan, SUSTAIN, 0)
            self._fs.cc(chan, SOSTENUTO, 0)
            self._fs.all_notes_off(chan)


def write_wav(path: Path | BinaryIO, audio: np.ndarray, sample_rate: int) -> None:
    """Save int16 stereo audio of shape [n_samples, 2] as a 16-bit WAV file (a path or an open binary file)."""
    if audio.dtype != np.int16 or audio.ndim != 2 or audio.shape[1] != 2:
        raise ValueError(f"expected int16 audio of shape [n, 2], got {audio.dtype} {audio.shape}")
    with wave.open(str(path) if isinstance(path, Path | str) else path, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(audio.astype("<i2", copy=False).tobytes())


def rms_dbfs(audio: np.ndarray) -> float:
    """Loudness of int16 audio in dB relative to full scale; -inf for digital silence."""
    if audio.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(audio, dtype=np.float64))))
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -math.inf
