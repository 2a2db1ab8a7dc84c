"""Shared fixtures: a small real data set (corpus pieces plus a user's MIDI folder) and a tiny trained model."""

from __future__ import annotations

import warnings
from pathlib import Path

import mido
import pytest

warnings.filterwarnings("ignore", module="music21")


def write_midi(path: Path, notes: list[tuple[int, int, int]], program: int = 0, bpm: float = 100) -> None:
    """A one-track MIDI file of (start_beat_eighths, pitch, length_eighths) notes."""
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
    track.append(mido.Message("program_change", program=program, channel=0))
    events = []
    for start, pitch, length in notes:
        events.append((start * 60, 1, pitch))
        events.append(((start + length) * 60, 0, pitch))
    last = 0
    for tick, on, pitch in sorted(events):
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, note=pitch, velocity=90 if on else 0, time=tick - last))
        last = tick
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)


@pytest.fixture(scope="session")
def midi_folder(tmp_path_factory) -> Path:
    """A user's folder: two good anthems, a corrupt file and an empty one."""
    root = tmp_path_factory.mktemp("mydata")
    tune = [(i * 4, 60 + (i * 5) % 12, 4) for i in range(40)]
    write_midi(root / "anthems" / "one.mid", tune, program=56)
    write_midi(root / "anthems" / "two.mid", [(s, p + 2, n) for s, p, n in tune], program=57)
    (root / "anthems" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage that is not MIDI")
    write_midi(root / "anthems" / "empty.mid", [])
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, midi_folder) -> Path:
    """A data set of three Bach chorales, a few Irish tunes and the MIDI folder, 40 % held out."""
    from generator import data

    work = tmp_path_factory.mktemp("data")
    sources = (
        data.corpus_sources(["bach"])[:3] + data.corpus_sources(["irish"])[:1] + data.midi_sources(midi_folder)
    )
    report = data.extract_all(sources, work / "cache", workers=2, max_per_style=4)
    out = work / "dataset"
    data.write_dataset(report, out, valid_percent=40.0)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, dataset) -> Path:
    """A two-layer, 32-wide model trained for a few steps on `dataset`."""
    from config.settings import Train
    from generator.train import train

    run = tmp_path_factory.mktemp("run")
    cfg = Train(
        n_layer=2,
        n_embd=32,
        n_head=2,
        context=96,
        batch_size=8,
        warmup_steps=5,
        max_steps=40,
        eval_every=10,
        save_every=20,
        learning_rate=3e-3,
        dropout=0.0,
    )
    train(dataset, run, cfg, log=lambda _: None)
    return run
