"""Round trips on real corpus pieces: notes -> MidiTok tokens -> our incremental decoder (and MidiTok's)."""

from __future__ import annotations

import pytest

from generator import data
from generator.corpus import extract_music21
from generator.decode import decode, midi_bytes, to_midi
from generator.styles import CORPUS_BY_NAME
from generator.vocab import Vocab


def _pieces(style: str, count: int):
    spec = CORPUS_BY_NAME[style]
    out = []
    for source in data.corpus_sources([style]):
        result = extract_music21(source.path, source.rel, style, spec.ensemble, spec.tempo)
        out += result.pieces
        if len(out) >= count:
            return out[:count]
    return out


def _quantized(piece):
    """The piece's notes on MidiTok's grid (1/8 beat up to 4 beats, 1/4 beat beyond)."""
    out = set()
    for start, _dur, pitch, program in piece.notes.tolist():
        out.add((round(start * 8 / 96), pitch, program))
    return out


@pytest.mark.parametrize("style", ["bach", "irish", "palestrina"])
def test_round_trip_keeps_every_note(style):
    vocab = Vocab.build([style])
    for piece in _pieces(style, 2):
        notes = decode(vocab, piece.tokens.tolist())
        assert {(n.start, n.pitch, n.program) for n in notes} == _quantized(piece)
        assert len(notes) == len(_quantized(piece))  # unisons within one instrument merge into one note


def test_our_decoder_agrees_with_miditok():
    vocab = Vocab.build(["bach"])
    piece = _pieces("bach", 1)[0]
    ours = sorted((n.start, n.pitch, n.duration, n.program) for n in decode(vocab, piece.tokens.tolist()))
    score = vocab.tokenizer.decode([int(t) for t in piece.tokens])
    tpq = score.ticks_per_quarter
    theirs = sorted(
        (n.time * 8 // tpq, n.pitch, n.duration * 8 // tpq, track.program)
        for track in score.tracks
        for n in track.notes
    )
    assert ours == theirs


def test_midi_file_is_deterministic_and_readable():
    import io

    import mido

    vocab = Vocab.build(["bach"])
    piece = _pieces("bach", 1)[0]
    notes = decode(vocab, piece.tokens.tolist())
    first = midi_bytes(to_midi(notes, 80))
    assert first == midi_bytes(to_midi(list(reversed(notes)), 80))
    midi = mido.MidiFile(file=io.BytesIO(first))
    ons = [m for m in midi if m.type == "note_on" and m.velocity > 0]
    assert len(ons) == len(notes)
    programs = {m.program for m in midi if m.type == "program_change"}
    assert programs == {n.program for n in notes}
