"""Each style's leaps and registers are learnt from its real voices, and sampling keeps every voice to them."""

from __future__ import annotations

import numpy as np
import torch

from generator import metrics
from generator.data import read_index
from generator.decode import Note, decode, notes_array
from generator.instruments import DRUMS
from generator.model import load_model
from generator.sampling import Composer, PieceRequest
from generator.voice_leading import MAX_LEAP, MIN_REGISTER_NOTES, VoiceLeading, learn_voices

PITCHES = torch.tensor([-1, *range(128)])  # token 0 is not a pitch; token p + 1 is pitch p


def test_learnt_leaps_and_registers_are_those_of_the_real_voices(dataset, tiny_model):
    vocab = load_model(tiny_model / "best").vocab
    learnt = learn_voices(dataset, vocab)
    tokens = np.load(dataset / "tokens.npy")
    rows = [r for r in read_index(dataset) if r["split"] == "train"]
    assert set(learnt) == {r["style"] for r in rows if r["length"] > 0}
    for style, voices in learnt.items():
        notes = [
            notes_array(decode(vocab, tokens[r["offset"] : r["offset"] + r["length"]].tolist()))
            for r in rows
            if r["style"] == style
        ]
        counts = np.sum([metrics.interval_counts(n, MAX_LEAP) for n in notes], axis=0)
        # Every leap kept occurs in the style's real voices, and the common ones are all kept.
        taken = voices["leaps"]
        assert all(counts[d + MAX_LEAP] > 0 for d in taken)
        common = [d - MAX_LEAP for d in np.flatnonzero(counts / counts.sum() >= 0.01)]
        assert set(common) <= set(taken) and taken == sorted(taken)
        # An instrument with enough notes keeps nearly all of them inside its register.
        every = np.concatenate(notes)
        for program in np.unique(every[:, metrics.PROGRAM]):
            played = every[every[:, metrics.PROGRAM] == program, metrics.PITCH]
            if len(played) < MIN_REGISTER_NOTES:
                assert str(program) not in voices["registers"]
                continue
            low, high = voices["registers"][str(program)]
            assert played.min() <= low <= high <= played.max()
            assert np.mean((played >= low) & (played <= high)) >= 0.98


def test_a_voice_is_offered_only_the_styles_leaps_inside_its_register():
    rule = VoiceLeading([-2, -1, 0, 1, 2, 7], {}, PITCHES)
    assert rule.allowed(40, 0) is None  # nothing to lead from yet
    rule.on_note(Note(0, 60, 8, 40))
    allowed = rule.allowed(40, 8)
    assert allowed is not None and bool(allowed[0])  # non-pitch tokens stay untouched
    assert [p for p in range(128) if allowed[p + 1]] == [58, 59, 60, 61, 62, 67]
    # A second note at the same onset: below the melody note it is harmony, above it the new melody note.
    rule.on_note(Note(8, 62, 8, 40))
    same_onset = rule.allowed(40, 8)
    assert same_onset is not None
    assert all(same_onset[p + 1] for p in range(0, 62)) and [
        p for p in range(62, 128) if same_onset[p + 1]
    ] == [67]  # 62 itself is struck already: one key is not struck twice at once
    # Nor on drums, and nor without a rule on leaps; the next onset may strike it again.
    rule.on_note(Note(16, 38, 4, DRUMS))
    drum = rule.allowed(DRUMS, 16)
    assert drum is not None and not drum[38 + 1] and bool(drum[36 + 1])
    free = VoiceLeading(None, {}, PITCHES)
    free.on_note(Note(0, 60, 8, 40))
    once = free.allowed(40, 0)
    assert once is not None and not once[60 + 1] and bool(once[64 + 1])
    assert free.allowed(40, 8) is None
    # Other voices and drums follow their own lines, and a style without leaps has no rule.
    assert rule.allowed(41, 8) is None and rule.allowed(DRUMS, 8) is None
    assert VoiceLeading(None, {}, PITCHES).allowed(40, 8) is None
    # A register bounds the first note too, and the leaps after it.
    ranged = VoiceLeading([-2, -1, 0, 1, 2, 7], {40: (59, 66)}, PITCHES)
    first = ranged.allowed(40, 0)
    assert first is not None and [p for p in range(128) if first[p + 1]] == list(range(59, 67))
    ranged.on_note(Note(0, 60, 8, 40))
    after = ranged.allowed(40, 8)
    assert after is not None and [p for p in range(128) if after[p + 1]] == [59, 60, 61, 62]


def test_sampled_voices_take_only_their_styles_leaps(tiny_model):
    loaded = load_model(tiny_model / "best")
    steps = [-2, -1, 0, 1, 2]
    loaded.card["style_defaults"]["bach"].update(leaps=steps, registers={"40": [60, 72], "42": [36, 48]})
    composer = Composer(loaded)

    def sampled(voice_leading: bool) -> tuple[set[int], dict[int, set[int]]]:
        found: set[int] = set()
        pitches: dict[int, set[int]] = {40: set(), 42: set()}
        for seed in range(3):
            # Without the plan: its cadences put the bass on the chord's root, and a final root that no allowed
            # step reaches is leapt to, as a chorale's bass leaps to its tonic (tests/test_plan.py has those).
            request = PieceRequest(
                "bach", ("violin", "cello"), 100.0, 6.0, seed, voice_leading=voice_leading, plan=False
            )
            notes = notes_array(composer.compose(request).notes)
            counts = metrics.interval_counts(notes, MAX_LEAP)
            found |= {int(d) - MAX_LEAP for d in np.flatnonzero(counts)}
            for _start, pitch, _duration, program in notes:
                pitches[int(program)].add(int(pitch))
        return found, pitches

    leaps, pitches = sampled(True)
    assert leaps <= set(steps)
    assert pitches[40] <= set(range(60, 73)) and pitches[42] <= set(range(36, 49))
    # The barely trained model leaps freely and roams its instruments' ranges without the rule.
    leaps, pitches = sampled(False)
    assert not leaps <= set(steps)
    assert not (pitches[40] <= set(range(60, 73)) and pitches[42] <= set(range(36, 49)))
