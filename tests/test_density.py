"""Each instrument strikes no more notes at once and in a bar than the style's real parts do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from generator.decode import Note, notes_array
from generator.density import FALLBACK, DensityLimits, learn_density, spent
from generator.instruments import DRUMS
from generator.model import load_model
from generator.sampling import Composer, Composition, PieceRequest
from generator.voice_leading import VoiceLeading

VIOLIN, PIANO, TRUMPET = 40, 0, 56
PITCHES = torch.tensor([-1, *range(128)])  # token 0 is not a pitch; token p + 1 is pitch p


def _piece(bars: int) -> np.ndarray:
    """A 4/4 violin in eighths, a piano striking three-note chords on the beats, a drum on each beat."""
    violin = [(t, 72, 4, VIOLIN) for t in range(0, bars * 32, 4)]
    piano = [(t, p, 8, PIANO) for t in range(0, bars * 32, 8) for p in (48, 52, 55)]
    drums = [(t, 36, 1, DRUMS) for t in range(0, bars * 32, 8)]
    return np.array(violin + piano + drums, dtype=np.int64)


def test_learnt_limits_are_what_the_real_parts_strike() -> None:
    learnt = learn_density([(_piece(20), 32, 0), (_piece(20), 32, 0)])
    # Eight eighths a bar are two notes a beat; three-note chords on the beats, three a beat.
    assert learnt["programs"][str(VIOLIN)] == {"onset": 1, "beat": 2.0}
    assert learnt["programs"][str(PIANO)] == {"onset": 3, "beat": 3.0}
    assert learnt["roles"]["line"] == {"onset": 1, "beat": 2.0}
    assert learnt["roles"]["drums"] == {"onset": 1, "beat": 1.0}
    # All pitched parts together: the violin and the piano's chord on a beat, five notes a beat.
    assert learnt["texture"] == {"onset": 4, "beat": 5.0}
    # Too few onsets say too little: neither the program nor its role is learnt from them.
    few = learn_density([(_piece(1), 32, 0)])
    assert few["programs"] == {} and few["roles"] == {} and few["texture"] is None


def test_an_instrument_the_style_never_plays_takes_its_roles_figures() -> None:
    learnt = learn_density([(_piece(20), 32, 0), (_piece(20), 32, 0)])
    limits = DensityLimits.of(learnt, 32)
    assert (limits.onset[VIOLIN], limits.per_bar[VIOLIN]) == (1, 8)
    assert (limits.onset[TRUMPET], limits.per_bar[TRUMPET]) == (1, 8)  # a line, as the style's lines
    # A chordal instrument may carry the whole texture, whatever its own part did.
    assert (limits.onset[PIANO], limits.per_bar[PIANO]) == (4, 20)
    harp = 46
    assert (limits.onset[harp], limits.per_bar[harp]) == (4, 20)
    # A card without learnt figures: the fixed ones, in the bars of the piece (3/4 here).
    bare = DensityLimits.of(None, 24)
    assert bare.onset[TRUMPET] == FALLBACK["line"][0] and bare.per_bar[TRUMPET] == 12
    assert bare.onset[PIANO] == FALLBACK["chordal"][0] and bare.per_bar[PIANO] == 24


def test_an_instrument_that_struck_its_share_waits() -> None:
    limits = DensityLimits({VIOLIN: 2, PIANO: 3}, {VIOLIN: 8, PIANO: 24}, 32)
    # Half a bar ahead: by the downbeat half the bar's notes may be struck, all of them by its second half.
    assert [limits.share_by(VIOLIN, t) for t in (0, 8, 15, 16, 31)] == [4, 6, 8, 8, 8]
    assert spent(limits, {VIOLIN: (0, 2)}, {VIOLIN: (0, 2)}, 0) == [VIOLIN]  # two at one onset
    assert spent(limits, {VIOLIN: (0, 2)}, {VIOLIN: (0, 2)}, 4) == []  # the next onset is free
    assert spent(limits, {VIOLIN: (4, 1)}, {VIOLIN: (0, 6)}, 6) == [VIOLIN]  # six before the second beat
    assert spent(limits, {VIOLIN: (4, 1)}, {VIOLIN: (0, 6)}, 10) == []
    assert spent(limits, {VIOLIN: (28, 1)}, {VIOLIN: (0, 8)}, 32) == []  # a new bar
    rule = VoiceLeading(None, {}, PITCHES, limits)
    for pitch in (60, 64, 67):
        rule.on_note(Note(0, pitch, 8, PIANO))
    rule.on_note(Note(0, 72, 8, VIOLIN))
    assert rule.spent(0) == [PIANO] and rule.spent(8) == []
    assert VoiceLeading(None, {}, PITCHES).spent(0) == []  # without limits nothing waits


def _dense(tiny_model: Path, learnt: dict[str, Any]) -> Composer:
    loaded = load_model(tiny_model / "best")
    loaded.card["style_defaults"]["bach"]["form"]["density"] = learnt
    return Composer(loaded)


STRICT: dict[str, Any] = {
    "programs": {},
    "roles": {"line": {"onset": 1, "beat": 0.5}, "chordal": {"onset": 1, "beat": 0.5}},
    "texture": {"onset": 2, "beat": 1.0},
}
LOOSE: dict[str, Any] = {
    "programs": {},
    "roles": {"line": {"onset": 9, "beat": 99.0}},
    "texture": {"onset": 9, "beat": 99.0},
}


@pytest.mark.parametrize("critic", [1, 2])
def test_a_dense_request_stays_under_the_limits_and_every_instrument_plays(
    tiny_model: Path, critic: int
) -> None:
    def sampled(learnt: dict[str, Any], seed: int) -> tuple[Composition, DensityLimits]:
        composer = _dense(tiny_model, learnt)
        request = PieceRequest("bach", ("violin", "piano"), 150.0, 12.0, seed, critic=critic)
        limits = composer.voice_leading(request).density
        assert limits is not None
        return composer.compose(request), limits

    over = 0
    for seed in range(3):
        piece, limits = sampled(STRICT, seed)
        notes = notes_array(piece.notes)
        for program in (VIOLIN, PIANO):
            mine = notes[notes[:, 3] == program]
            assert len(mine) > 0  # every requested instrument still plays
            assert np.unique(mine[:, 0], return_counts=True)[1].max() <= limits.onset[program]
            assert np.bincount(mine[:, 0] // limits.bar).max() <= limits.per_bar[program]
        assert (limits.onset[VIOLIN], limits.onset[PIANO]) == (1, 2)
        again, _ = sampled(STRICT, seed)
        assert again.tokens == piece.tokens  # the same seed, the same piece
        # Without the limits the barely trained model piles notes up past them.
        loose, _ = sampled(LOOSE, seed)
        free = notes_array(loose.notes)
        for program in (VIOLIN, PIANO):
            mine = free[free[:, 3] == program]
            if len(mine):
                most = np.unique(mine[:, 0], return_counts=True)[1].max()
                over += int(
                    most > limits.onset[program]
                    or np.bincount(mine[:, 0] // limits.bar).max() > limits.per_bar[program]
                )
    assert over > 0
