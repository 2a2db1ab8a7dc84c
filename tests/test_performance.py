"""How a piece is played: accents, phrase swells, a singing top voice and a ritardando into the final chord."""

from __future__ import annotations

import io

import mido
import pytest

from generator.decode import MIDI_TPQ, Note, midi_bytes, timed_messages, to_midi
from generator.performance import RITARDANDO_TO, flat, performance, planned
from generator.plan import Phrase, Plan, Section

BAR = 32  # 4/4 in steps of 1/8 beat
PLAN = Plan(BAR, 8, (Section("A", 0, 8),), (Phrase(0, 4, 7, 0), Phrase(4, 4, 0, 0)))


def _played():
    return planned(PLAN, 120.0, [40, 42])  # violin over cello


def test_strong_beats_weigh_more_and_a_phrase_swells_to_its_middle():
    played = flat(120.0)
    downbeat, midbar, beat, offbeat = (played.velocity(s) for s in (0, 16, 8, 4))
    assert downbeat > midbar > beat > offbeat
    shaped = _played()
    # The first phrase is bars 0-3 (steps 0-127): quiet at its start, loudest past its middle, relaxing after.
    start, peak, cadence = (shaped.velocity(s) for s in (8, 8 * 9 + 8, 120))
    assert peak > start and peak > cadence


def test_the_tune_sings_above_the_bass():
    shaped = _played()
    assert shaped.voices[40] > shaped.voices[42]  # the violin, highest, over the cello
    notes = [Note(0, 76, 8, 40), Note(0, 48, 8, 42)]
    velocities = {
        m.channel: m.velocity for _, m in timed_messages(notes, 120.0, [40, 42], shaped) if m.type == "note_on"
    }
    assert velocities[0] > velocities[1]  # channels as programs sort: cello 42 on 1, violin 40 on 0


def test_the_last_bar_broadens_into_the_final_chord():
    shaped, even = _played(), flat(120.0)
    final = PLAN.cadence_times()[-1]  # the last bar's downbeat, step 224
    assert shaped.seconds(final - 4 * 8) == pytest.approx(even.seconds(final - 4 * 8))  # as written until then
    beats = [shaped.seconds(final - 8 * k) - shaped.seconds(final - 8 * (k + 1)) for k in range(4)]
    # beats[0] is the last beat before the final chord: each beat is longer than the one before it.
    assert beats == sorted(beats, reverse=True) and beats[0] > beats[-1] * 1.2
    held = shaped.seconds(final + BAR) - shaped.seconds(final)
    assert held == pytest.approx(even.seconds(BAR) / RITARDANDO_TO)


def test_a_midi_file_plays_as_the_stream_does():
    shaped = _played()
    notes = [Note(s, 60 + (s // 8) % 12, 8, 40) for s in range(0, 8 * BAR, 8)]
    data = midi_bytes(to_midi(notes, 120.0, shaped))
    assert data == midi_bytes(to_midi(list(reversed(notes)), 120.0, shaped))  # the same notes, the same bytes
    midi = mido.MidiFile(file=io.BytesIO(data))
    tempos, tick, starts = [], 0, []
    for msg in midi.tracks[0]:
        tick += msg.time
        if msg.type == "set_tempo":
            tempos.append(mido.tempo2bpm(msg.tempo))
        elif msg.type == "note_on" and msg.velocity > 0:
            starts.append(tick)
    assert tempos[0] == pytest.approx(120.0) and tempos[-1] == pytest.approx(120.0 * RITARDANDO_TO)
    assert starts == [n.start * MIDI_TPQ // 8 for n in notes]  # notes stay on the beat grid
    streamed = [t for t, m in timed_messages(notes, 120.0, [40], shaped) if m.type == "note_on"]
    assert midi.length == pytest.approx(max(t for t, m in timed_messages(notes, 120.0, [40], shaped)), abs=1e-3)
    assert streamed[-1] == pytest.approx(shaped.seconds(notes[-1].start))


def test_a_piece_without_a_plan_plays_as_written_but_for_its_accents():
    played = performance(100.0, [0])
    assert played.seconds(800) == pytest.approx(800 * 60.0 / 100.0 / 8)
    assert played.voices == {}  # one instrument: no voice to bring out
