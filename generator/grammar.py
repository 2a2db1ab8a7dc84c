"""Which token may come next: the TSD grammar as boolean masks, so sampling never makes a broken piece.

A note is `Program Pitch Duration`; `TimeShift` moves time forward between notes; `EOS` ends the piece after
a complete note. Program tokens are limited to the instruments asked for and pitches to each instrument's
range, which is what makes instrument requests binding rather than suggestions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from generator.instruments import BY_PROGRAM
from generator.vocab import KIND_DURATION, KIND_EOS, KIND_PITCH, KIND_PROGRAM, KIND_TIMESHIFT, Vocab

# Grammar states: what the last music token was.
AT_BOUNDARY, AFTER_PROGRAM, AFTER_PITCH = 0, 1, 2


@dataclass
class GrammarState:
    phase: int = AT_BOUNDARY
    program: int | None = None
    notes: int = 0


class Grammar:
    def __init__(self, vocab: Vocab, programs: Iterable[int]) -> None:
        self.vocab = vocab
        self.programs = sorted(set(programs))
        kind, value = vocab.kind, vocab.value
        program_ok = (kind == KIND_PROGRAM) & np.isin(value, self.programs)
        self.boundary = program_ok | (kind == KIND_TIMESHIFT)
        self.boundary_or_end: np.ndarray = self.boundary | (kind == KIND_EOS)
        self.after_pitch: np.ndarray = kind == KIND_DURATION
        self.pitches: dict[int, np.ndarray] = {}
        for program in self.programs:
            inst = BY_PROGRAM[program]
            self.pitches[program] = (kind == KIND_PITCH) & (value >= inst.low) & (value <= inst.high)

    def allowed(self, state: GrammarState, may_end: bool = True) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens that may follow."""
        if state.phase == AFTER_PROGRAM:
            assert state.program is not None
            return self.pitches[state.program]
        if state.phase == AFTER_PITCH:
            return self.after_pitch
        return self.boundary_or_end if may_end and state.notes > 0 else self.boundary

    def advance(self, state: GrammarState, token: int) -> GrammarState:
        """The state after `token`; a token the grammar forbids raises ValueError."""
        kind = int(self.vocab.kind[token])
        if not self.allowed(state)[token]:
            raise ValueError(f"token {self.vocab.tokens[token]} is not allowed here")
        if kind == KIND_PROGRAM:
            return GrammarState(AFTER_PROGRAM, int(self.vocab.value[token]), state.notes)
        if kind == KIND_PITCH:
            return GrammarState(AFTER_PITCH, state.program, state.notes)
        if kind == KIND_DURATION:
            return GrammarState(AT_BOUNDARY, None, state.notes + 1)
        return GrammarState(AT_BOUNDARY, None, state.notes)


def is_well_formed(vocab: Vocab, music: Iterable[int], programs: Iterable[int]) -> bool:
    """True when a sequence of music tokens (no prefix) follows the grammar and ends on a note boundary."""
    grammar = Grammar(vocab, programs)
    state = GrammarState()
    for token in music:
        if int(vocab.kind[token]) == KIND_EOS:
            return state.phase == AT_BOUNDARY and state.notes > 0
        try:
            state = grammar.advance(state, int(token))
        except ValueError:
            return False
    return state.phase == AT_BOUNDARY
