"""Tokens -> notes -> MIDI, incrementally, so a piece can be played while it is still being sampled.

Time inside the generator is counted in ticks of 1/8 beat (MidiTok's finest TSD grid here); seconds only
appear when a tempo is applied in `timed_messages` and `to_midi`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import mido
import numpy as np

from generator.instruments import DRUMS
from generator.performance import Performance, flat
from generator.vocab import KIND_DURATION, KIND_PITCH, KIND_PROGRAM, KIND_TIMESHIFT, Vocab

STEPS_PER_BEAT = 8
MIDI_TPQ = 480


@dataclass(frozen=True, order=True)
class Note:
    """One note; times in 1/8 beats from the start of the piece."""

    start: int
    pitch: int
    duration: int
    program: int  # General MIDI program, or DRUMS (-1)

    def end(self) -> int:
        return self.start + self.duration


class NoteDecoder:
    """Feeds on token ids one at a time; yields each note as soon as its last token arrives."""

    def __init__(self, vocab: Vocab) -> None:
        self.kind = vocab.kind
        self.value = vocab.value
        self.time = 0
        self.program: int | None = None
        self.pitch: int | None = None

    def feed(self, token: int) -> Note | None:
        kind = self.kind[token]
        if kind == KIND_TIMESHIFT:
            self.time += int(self.value[token])
        elif kind == KIND_PROGRAM:
            self.program = int(self.value[token])
            self.pitch = None
        elif kind == KIND_PITCH:
            self.pitch = int(self.value[token])
        elif kind == KIND_DURATION and self.program is not None and self.pitch is not None:
            note = Note(self.time, self.pitch, max(1, int(self.value[token])), self.program)
            self.pitch = None
            return note
        return None


def decode(vocab: Vocab, tokens: Iterable[int]) -> list[Note]:
    """Every complete note in a token sequence (the conditioning prefix is ignored)."""
    decoder = NoteDecoder(vocab)
    return [n for t in tokens if (n := decoder.feed(int(t))) is not None]


def channels(programs: Iterable[int]) -> dict[int, int]:
    """A MIDI channel per program, drums on channel 9 as General MIDI wants."""
    out: dict[int, int] = {}
    free = [c for c in range(16) if c != 9]
    for program in sorted(set(programs)):
        out[program] = 9 if program == DRUMS else free[len([p for p in out if p != DRUMS]) % len(free)]
    return out


# (step, 1 for on or 0 for off, channel, pitch): sorted, these are in the order a piece plays them, note-offs
# before note-ons at a tick. The offline render and the live stream both order and time them this way.
NoteEvent = tuple[int, int, int, int]


def timed_messages(
    notes: Iterable[Note],
    tempo: float,
    programs: Iterable[int] | None = None,
    performance: Performance | None = None,
    sounds: Mapping[int, int] | None = None,
) -> Iterator[tuple[float, mido.Message]]:
    """(seconds, message) pairs in time order: program changes first, note-offs before note-ons at a tick.

    `programs` gives channels to the requested instruments rather than to those that happen to play, as a
    live stream must before it knows the notes; every note's program must then be among them.
    `performance` shapes loudness and time (generator.performance); None plays the notes as written.
    `sounds` gives a part's channel the program it is heard as (`PieceRequest.sound_programs`).
    """
    notes = sorted(notes)
    chans = channels(n.program for n in notes) if programs is None else channels(programs)
    played = performance or flat(tempo)
    voices = played.by_channel(chans)
    yield from program_changes(chans, sounds)
    for event in note_events(notes, chans):
        yield timed_message(event, played, voices)


def note_events(notes: Iterable[Note], chans: dict[int, int]) -> list[NoteEvent]:
    """Each note's on and off on its program's channel, in the order a piece plays them."""
    return sorted(
        event
        for n in notes
        for event in ((n.start, 1, chans[n.program], n.pitch), (n.end(), 0, chans[n.program], n.pitch))
    )


def timed_message(
    event: NoteEvent, performance: Performance, voices: dict[int, int]
) -> tuple[float, mido.Message]:
    """The event as a message at its time; `voices` gives each channel's role in the loudness."""
    step, on, chan, pitch = event
    kind = "note_on" if on else "note_off"
    velocity = performance.velocity(step, voices.get(chan, 0)) if on else 0
    return performance.seconds(step), mido.Message(kind, channel=chan, note=pitch, velocity=velocity)


def program_changes(
    chans: dict[int, int], sounds: Mapping[int, int] | None = None
) -> list[tuple[float, mido.Message]]:
    """At time 0, the program of every channel in use, by channel, as `sounds` says it is heard (a second
    violin's spare program sounds as a violin); drums need none."""
    heard = sounds or {}
    return [
        (0.0, mido.Message("program_change", channel=chan, program=heard.get(program, program)))
        for program, chan in sorted(chans.items(), key=lambda kv: kv[1])
        if program != DRUMS
    ]


def to_midi(
    notes: Iterable[Note],
    tempo: float,
    performance: Performance | None = None,
    sounds: Mapping[int, int] | None = None,
) -> mido.MidiFile:
    """A type-0 MIDI file of the notes at `tempo`, shaped by `performance` as the stream plays them (its
    ritardando as tempo changes, the notes on the beat grid), each part on the program it is heard as
    (`sounds`); the same notes always give the same bytes."""
    played = performance or flat(tempo)
    midi = mido.MidiFile(type=0, ticks_per_beat=MIDI_TPQ)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    ticks_per_step = MIDI_TPQ // STEPS_PER_BEAT
    notes = sorted(notes)
    chans = channels(n.program for n in notes)
    # (step, order, message): tempo changes come first at a step, then note-offs, then note-ons.
    timeline: list[tuple[int, int, mido.Message]] = [
        (0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo)))
    ]
    timeline += [
        (step, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
        for step, bpm in played.tempo_changes()
    ]
    timeline += [(0, 1, msg) for _, msg in program_changes(chans, sounds)]
    voices = played.by_channel(chans)
    timeline += [(event[0], 2, timed_message(event, played, voices)[1]) for event in note_events(notes, chans)]
    last = 0
    for step, _, msg in sorted(timeline, key=lambda item: (item[0], item[1])):
        tick = step * ticks_per_step
        track.append(msg.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return midi


def midi_bytes(midi: mido.MidiFile) -> bytes:
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def notes_array(notes: Iterable[Note]) -> np.ndarray:
    """Notes as an int array [N, 4] of (start, pitch, duration, program), for metrics."""
    return np.array([(n.start, n.pitch, n.duration, n.program) for n in notes], dtype=np.int32).reshape(-1, 4)
