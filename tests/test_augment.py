"""Augmentation on token ids: instruments, transposition and tempo, within instrument ranges."""

from __future__ import annotations

import numpy as np

from generator.augment import Augmenter, Variant
from generator.decode import decode
from generator.instruments import BY_PROGRAM, DRUMS
from generator.vocab import Vocab


def _tokens(vocab: Vocab, notes: list[tuple[str, int, str]]) -> np.ndarray:
    ids = []
    for program, pitch, shift in notes:
        ids += [vocab.index[f"Program_{program}"], vocab.index[f"Pitch_{pitch}"], vocab.index["Duration_1.0.8"]]
        if shift:
            ids.append(vocab.index[shift])
    return np.array(ids)


def test_transpose_moves_pitched_notes_and_leaves_drums():
    vocab = Vocab.build(["x"])
    tokens = _tokens(vocab, [("40", 67, ""), ("-1", 36, "TimeShift_1.0.8"), ("42", 48, "")])
    out = Augmenter(vocab).apply(tokens, Variant({40: 40, -1: -1, 42: 42}, 3, 100.0))
    notes = decode(vocab, out.tolist())
    assert [(n.program, n.pitch) for n in notes] == [(40, 70), (-1, 36), (42, 51)]


def test_reassigned_parts_change_program_consistently():
    vocab = Vocab.build(["x"])
    tokens = _tokens(vocab, [("40", 67, ""), ("42", 48, "TimeShift_1.0.8"), ("40", 69, "")])
    out = Augmenter(vocab).apply(tokens, Variant({40: 73, 42: 70}, 0, 100.0))
    assert [(n.program, n.pitch) for n in decode(vocab, out.tolist())] == [(73, 67), (70, 48), (73, 69)]


def test_chosen_variants_stay_in_range_and_vary():
    vocab = Vocab.build(["x"])
    aug = Augmenter(vocab)
    ranges = {40: (62, 81), 41: (55, 72), 42: (43, 64), 43: (36, 55)}
    rng = np.random.default_rng(0)
    seen_programs, seen_shifts, tempos = set(), set(), []
    for _ in range(200):
        v = aug.choose(ranges, 100.0, rng)
        for program, (lo, hi) in ranges.items():
            inst = BY_PROGRAM[v.programs[program]]
            assert inst.low <= lo + v.semitones and hi + v.semitones <= inst.high
        seen_programs |= set(v.programs.values())
        seen_shifts.add(v.semitones)
        tempos.append(v.tempo)
    assert len(seen_programs) > 6 and len(seen_shifts) > 5
    assert 85.0 <= min(tempos) < 90.0 and 113.0 < max(tempos) <= 118.0


def test_same_seed_same_variant():
    vocab = Vocab.build(["x"])
    aug = Augmenter(vocab)
    ranges = {40: (62, 81)}
    a = aug.choose(ranges, 100.0, np.random.default_rng(5))
    b = aug.choose(ranges, 100.0, np.random.default_rng(5))
    assert a == b


def test_parts_never_share_an_instrument_after_reassignment():
    # Merged parts taught the model that one program's notes may leap between voices.
    aug = Augmenter(Vocab.build(["x"]))
    ranges = {40: (62, 81), 41: (55, 72), 42: (43, 64), 43: (36, 55), DRUMS: (35, 50)}
    rng = np.random.default_rng(1)
    reassigned = 0
    for _ in range(300):
        v = aug.choose(ranges, 100.0, rng)
        parts = [v.programs[p] for p in ranges if p != DRUMS]
        assert len(set(parts)) == len(parts) and DRUMS not in parts
        assert v.programs[DRUMS] == DRUMS
        reassigned += parts != [40, 41, 42, 43]
    assert reassigned > 100
