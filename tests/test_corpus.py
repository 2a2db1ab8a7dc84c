"""How the music21 corpus becomes pieces: ABC books tune by tune, the metre's beat, Josquin's voices, keys."""

from __future__ import annotations

from collections import Counter

import numpy as np

from generator import data
from generator.corpus import Piece, abc_tunes, extract_music21, part_programs

BOOK = """%abc-2.1
% a book of two tunes; the header above the first X: belongs to every tune
X:1
T:First
M:2/4
L:1/8
K:D
DEFG|ABcd|d4|]

X:2
T:Second
M:4/2
L:1/4
K:G
G4 A4|B4 c4|d4 c4|B4 A4|G8|]
"""


def test_an_abc_book_splits_into_tunes_that_keep_the_header():
    tunes = abc_tunes(BOOK)
    assert len(tunes) == 2
    assert all(t.startswith("%abc-2.1") for t in tunes)
    assert "T:First" in tunes[0] and "T:Second" not in tunes[0]
    assert "T:Second" in tunes[1] and "T:First" not in tunes[1]
    assert abc_tunes("X:1\nT:Only\nK:C\nCDEF|\n") == ["X:1\nT:Only\nK:C\nCDEF|\n"]


def test_a_tune_without_a_tempo_moves_at_the_style_tempo_in_its_metres_beat(tmp_path):
    book = tmp_path / "book.abc"
    book.write_text(BOOK)
    quarters = extract_music21(str(book), "book.abc", "folk", ("flute",), 100, tune=0)
    halves = extract_music21(str(book), "book.abc", "folk", ("flute",), 100, tune=1)
    assert [p.tempo for p in quarters.pieces] == [100.0]  # 2/4: the beat is a quarter
    assert [p.tempo for p in halves.pieces] == [200.0]  # 4/2: the beat is a half note
    assert quarters.pieces[0].id != halves.pieces[0].id
    assert len(halves.pieces[0].notes) == 9


def test_a_broken_tune_is_skipped_with_its_reason(tmp_path):
    book = tmp_path / "book.abc"
    book.write_text(BOOK)
    result = extract_music21(str(book), "book.abc", "folk", ("flute",), 100, tune=7)
    assert result.pieces == []
    assert result.skipped and "IndexError" in result.skipped[0][1]


def test_a_capped_style_draws_from_every_book_not_the_first_files():
    folk = data.corpus_sources(["folk"])
    assert len(folk) > 8000  # the Essen collection, tune by tune
    first = Counter(s.rel.split("/")[-1] for s in folk[:600])
    assert len(first) >= 20  # alphabetical order gave two files of old German songs
    assert max(first.values()) < 150
    assert folk == data.corpus_sources(["folk"])  # stable


def test_josquins_voices_become_one_piece_with_parts():
    (source, *_) = data.corpus_sources(["josquin"])
    assert source.tune is None
    pieces = data._extract(source).pieces
    assert len(pieces) == 1
    counts = Counter(int(row[0]) for row in pieces[0].notes)
    assert max(counts.values()) >= 2  # voices sound together: it is polyphony, not one melody


def test_a_piece_key_is_estimated_from_its_pitches():
    def scale(root: int, steps: tuple[int, ...]) -> Piece:
        pitches = [root + s for s in steps] * 4 + [root] * 4
        notes = np.array([(i * 48, 48, p, 0) for i, p in enumerate(pitches)], dtype=np.int32)
        return Piece("x", "s", 100.0, notes)

    assert data.piece_key(scale(62, (0, 2, 4, 5, 7, 9, 11, 12))) == "D"
    assert data.piece_key(scale(57, (0, 2, 3, 5, 7, 8, 11, 12))) == "Am"


def _first_piece(style: str) -> Piece:
    for source in data.corpus_sources([style]):
        pieces = data._extract(source).pieces
        if pieces:
            return pieces[0]
    raise AssertionError(f"no {style} piece extracted")


def test_every_voice_of_a_chorale_motet_or_quartet_has_its_own_instrument():
    # Voices sharing a program read to the model as one line leaping between them: each part gets its own.
    from music21 import corpus

    for style in ("bach", "palestrina", "josquin", "classical", "medieval"):
        piece = _first_piece(style)
        assert len(piece.programs) >= 3, (style, piece.programs)
    quartet = corpus.parse("haydn/opus74no1/movement1")
    names = [part.partName for part in quartet.parts]
    voices = [[(0, 1, int(n.pitch.midi)) for n in part.flatten().notes if n.isNote] for part in quartet.parts]
    programs, stand_ins = part_programs(names, voices, ("violin", "violin", "viola", "cello"))
    assert len(set(programs)) == 4 and programs[0] == 40 and programs[2:] == [41, 42]  # only violin II moves
    assert stand_ins == {programs[1]: 40}  # ... and the data set remembers it is a violin


def test_a_keyboards_two_staves_stay_one_instrument():
    voices = [[(0, 96, 72), (96, 96, 76)], [(0, 192, 55)]]
    assert part_programs(["Piano", "Piano"], voices, ("piano",)) == ([0, 0], {})
    # two flutes: the lower takes the clarinet's program and is remembered as a flute
    assert part_programs(["", ""], voices, ("flute",)) == ([73, 71], {71: 73})
