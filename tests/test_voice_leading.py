"""Each style's leaps are learnt from its real voices, and sampling gives every voice only those leaps."""

from __future__ import annotations

import numpy as np
import torch

from generator import metrics
from generator.data import read_index
from generator.decode import Note, decode, notes_array
from generator.instruments import DRUMS
from generator.model import load_model
from generator.sampling import Composer, PieceRequest
from generator.voice_leading import MAX_LEAP, VoiceLeading, learn_leaps

PITCHES = torch.tensor([-1, *range(128)])  # token 0 is not a pitch; token p + 1 is pitch p


def test_learnt_leaps_are_those_of_the_real_voices(dataset, tiny_model):
    vocab = load_model(tiny_model / "best").vocab
    leaps = learn_leaps(dataset, vocab)
    tokens = np.load(dataset / "tokens.npy")
    rows = [r for r in read_index(dataset) if r["split"] == "train"]
    assert set(leaps) == {r["style"] for r in rows if r["length"] > 0}
    for style, taken in leaps.items():
        counts = np.zeros(2 * MAX_LEAP + 1)
        for r in (r for r in rows if r["style"] == style):
            counts += metrics.interval_counts(
                notes_array(decode(vocab, tokens[r["offset"] : r["offset"] + r["length"]].tolist())), MAX_LEAP
            )
        # Every leap kept occurs in the style's real voices, and the common ones are all kept.
        assert all(counts[d + MAX_LEAP] > 0 for d in taken)
        common = [d - MAX_LEAP for d in np.flatnonzero(counts / counts.sum() >= 0.01)]
        assert set(common) <= set(taken) and taken == sorted(taken)


def test_a_voice_is_offered_only_the_styles_leaps():
    rule = VoiceLeading([-2, -1, 0, 1, 2, 7], PITCHES)
    assert rule.allowed(40, 0) is None  # nothing to lead from yet
    rule.on_note(Note(0, 60, 8, 40))
    allowed = rule.allowed(40, 8)
    assert allowed is not None and bool(allowed[0])  # non-pitch tokens stay untouched
    assert [p for p in range(128) if allowed[p + 1]] == [58, 59, 60, 61, 62, 67]
    # A second note at the same onset: below the melody note it is harmony, above it the new melody note.
    rule.on_note(Note(8, 62, 8, 40))
    same_onset = rule.allowed(40, 8)
    assert same_onset is not None
    assert all(same_onset[p + 1] for p in range(0, 63)) and [
        p for p in range(63, 128) if same_onset[p + 1]
    ] == [67]
    # Other voices and drums follow their own lines, and a style without leaps has no rule.
    assert rule.allowed(41, 8) is None and rule.allowed(DRUMS, 8) is None
    assert VoiceLeading(None, PITCHES).allowed(40, 8) is None


def test_sampled_voices_take_only_their_styles_leaps(tiny_model):
    loaded = load_model(tiny_model / "best")
    steps = [-2, -1, 0, 1, 2]
    loaded.card["style_defaults"]["bach"]["leaps"] = steps
    composer = Composer(loaded)

    def leaps(voice_leading: bool) -> set[int]:
        found: set[int] = set()
        for seed in range(3):
            request = PieceRequest("bach", ("violin", "cello"), 100.0, 6.0, seed, voice_leading=voice_leading)
            counts = metrics.interval_counts(notes_array(composer.compose(request).notes), MAX_LEAP)
            found |= {int(d) - MAX_LEAP for d in np.flatnonzero(counts)}
        return found

    assert leaps(True) <= set(steps)
    assert not leaps(False) <= set(steps)  # the untrained-ish model leaps freely without the rule
