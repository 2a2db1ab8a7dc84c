"""Key conditioning: names a person types, the prefix token, training windows, and the key a seed picks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from config.errors import ConfigError
from generator.augment import Variant
from generator.data import read_index
from generator.model import load_model
from generator.recipes import RequestError, make_request, summarize_styles
from generator.sampling import Composer, PieceRequest, style_key
from generator.vocab import KEYS, Vocab, find_key, transpose_key
from generator.windows import Windows


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("d", "D"),
        ("D minor", "Dm"),
        ("f#m", "F#m"),
        ("Bbm", "Bbm"),
        ("a#", "Bb"),
        ("Am", "Am"),
        ("eb major", "Eb"),
    ],
)
def test_key_names_as_people_write_them(typed, key):
    assert find_key(typed) == key


def test_an_unknown_key_says_how_to_write_one():
    with pytest.raises(ValueError, match="F#m"):
        find_key("h")


def test_transposing_a_key_wraps_round_the_octave():
    assert transpose_key("Bm", 3) == "Dm"
    assert transpose_key("C", -1) == "B"
    assert transpose_key("G", 0) == "G"


def test_prefix_carries_the_key_and_old_vocabularies_have_none(tmp_path):
    vocab = Vocab.build(["bach"])
    prefix = vocab.prefix("bach", ["violin"], 100, "Em")
    assert vocab.tokens[prefix[-2]] == "Key_Em"
    with pytest.raises(ConfigError, match="needs a key"):
        vocab.prefix("bach", ["violin"], 100)
    vocab.save(tmp_path)
    assert Vocab.load(tmp_path).keyed
    old = Vocab(vocab.tokenizer, ["bach"], keyed=False)
    assert not any(t.startswith("Key_") for t in old.tokens)
    assert old.prefix("bach", ["violin"], 100, "Em") == [*prefix[:-2], prefix[-1]]


def test_training_windows_move_the_key_with_the_transposition(dataset):
    vocab = Vocab.load(dataset)
    windows = Windows(dataset, "train", vocab, 64, augment=True)
    row = next(r for r in windows.rows if r["style"] == "bach")
    programs = {int(p): int(p) for p in row["ranges"]}
    plain, _ = windows.example(row, 0, None)
    moved, _ = windows.example(row, 0, Variant(programs, 2, row["tempo"]))
    keys = [vocab.tokens[int(i)] for i in (plain, moved) for i in i if vocab.tokens[int(i)].startswith("Key_")]
    assert keys == [f"Key_{row['key']}", f"Key_{transpose_key(row['key'], 2)}"]


def test_the_card_keeps_each_styles_key_shares(dataset):
    shares = summarize_styles(read_index(dataset))
    for style in shares.values():
        assert set(style["keys"]) <= set(KEYS)
        assert sum(style["keys"].values()) == pytest.approx(1.0, abs=1e-3)


def test_the_seed_picks_keys_as_often_as_the_style_uses_them():
    card = {"style_defaults": {"irish": {"keys": {"D": 0.75, "G": 0.25}}}}
    picks = [style_key(card, "irish", seed) for seed in range(2000)]
    assert picks == [style_key(card, "irish", seed) for seed in range(2000)]
    assert 0.7 < Counter(picks)["D"] / len(picks) < 0.8
    assert style_key({}, "irish", 5) == "C"  # a card without keys still gives a playable prefix


def test_a_requested_key_reaches_the_prefix_and_none_follows_the_seed(tiny_model):
    loaded = load_model(tiny_model / "best")
    composer = Composer(loaded)
    asked = make_request(loaded, "bach", ["violin"], 100, 4, seed=9, key="f# minor")
    assert asked.key == "F#m"
    assert loaded.vocab.tokens[composer.prefix(asked)[-2]] == "Key_F#m"
    free = PieceRequest("bach", ("violin",), 100.0, 4.0, seed=9)
    chosen = style_key(loaded.card, "bach", 9)
    assert loaded.vocab.tokens[composer.prefix(free)[-2]] == f"Key_{chosen}"
    piece = composer.compose(free)
    again = composer.compose(PieceRequest("bach", ("violin",), 100.0, 4.0, seed=9, key=chosen))
    assert piece.tokens == again.tokens
    with pytest.raises(RequestError, match="unknown key"):
        make_request(loaded, "bach", ["violin"], 100, 4, seed=9, key="H")


def test_key_profile_data_is_consistent():
    assert len(KEYS) == 24 and len(set(KEYS)) == 24
    assert np.all([transpose_key(k, 12) == k for k in KEYS])
