"""The data builder on real corpus pieces and a user's MIDI folder holding broken files."""

from __future__ import annotations

import json

import numpy as np

from generator import data
from generator.corpus import to_score
from generator.vocab import Vocab


def test_builds_corpus_and_midi_styles_and_skips_broken_files(dataset):
    rows = data.read_index(dataset)
    styles = {r["style"] for r in rows}
    assert styles == {"bach", "irish", "anthems"}
    assert sum(r["style"] == "anthems" for r in rows) == 2
    skipped = [json.loads(line) for line in (dataset / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert reasons.get("broken.mid")
    assert reasons["empty.mid"] == "only 0 notes"
    tokens = np.load(dataset / "tokens.npy")
    assert sum(r["length"] for r in rows) == len(tokens)
    vocab = Vocab.load(dataset)
    assert vocab.styles == ["anthems", "bach", "irish"]
    assert int(tokens.max()) < len(vocab)


def test_user_midi_keeps_its_instruments(dataset):
    rows = [r for r in data.read_index(dataset) if r["style"] == "anthems"]
    assert sorted(int(p) for r in rows for p in r["ranges"]) == [56, 57]  # trumpet, trombone


def test_second_build_comes_from_cache(dataset, midi_folder, tmp_path):
    sources = data.corpus_sources(["bach"])[:3] + data.midi_sources(midi_folder)
    cache = dataset.parent / "cache"
    report = data.extract_all(sources, cache, workers=1, max_per_style=4)
    assert report.from_cache == len(sources)
    first = {p.id for p in report.pieces}
    again = data.extract_all(sources, cache, workers=1, max_per_style=4)
    assert {p.id for p in again.pieces} == first


def test_split_is_by_piece_and_stable(dataset):
    rows = data.read_index(dataset)
    for r in rows:
        if data.is_valid(r["id"], 40.0):
            assert r["split"] == "valid"
    assert len({r["id"] for r in rows}) == len(rows)
    for style in {r["style"] for r in rows}:
        mine = [r for r in rows if r["style"] == style]
        assert len(mine) < 2 or any(r["split"] == "valid" for r in mine)
    assert any(len([r for r in rows if r["style"] == s]) >= 2 for s in {r["style"] for r in rows})


def test_every_style_of_two_or_more_pieces_holds_one_out():
    from generator.corpus import Piece

    notes = np.zeros((8, 4), np.int32)
    pieces = [Piece(f"{i:04x}0000", "small", 100.0, notes) for i in range(1, 9)]
    assert not any(data.is_valid(p.id, 5.0) for p in pieces)
    assert data.held_out(pieces, 5.0) == {"00020000"}  # lowest rank (131072 % 10000): the same every build
    assert data.held_out(pieces[:1], 5.0) == set()  # a style of one piece keeps it for training
    assert data.held_out(pieces, 0.0) == set()


def test_summary_counts_every_piece(dataset):
    rows = data.read_index(dataset)
    table = data.summarize(rows)
    total = table[-1]
    assert total["style"] == "total"
    assert total["pieces"] == len(rows)
    assert total["tokens"] == sum(r["length"] for r in rows)
    assert total["hours"] > 0


def test_a_folder_without_midi_is_a_clear_error(tmp_path):
    import pytest

    from config.errors import ConfigError

    (tmp_path / "empty_style").mkdir()
    with pytest.raises(ConfigError, match="no <style>/"):
        data.midi_sources(tmp_path)


def test_piece_survives_score_conversion():
    from generator.corpus import extract_music21

    source = data.corpus_sources(["bach"])[0]
    result = extract_music21(source.path, source.rel, "bach", ("violin", "viola", "cello", "contrabass"), 80)
    piece = result.pieces[0]
    score = to_score(piece)
    assert sum(len(t.notes) for t in score.tracks) == len(piece.notes)
