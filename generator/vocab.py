"""The model's vocabulary: MidiTok's TSD event tokens followed by our conditioning tokens.

A sequence is `BOS Style_<s> Inst_<a> Inst_<b> ... Tempo_<t> Key_<k> SEP` and then TSD tokens (`TimeShift`,
`Program`, `Pitch`, `Duration`), ending with `EOS`. The MidiTok part is fixed by `tokenizer_config()`; the
conditioning part depends on the styles a data set holds, so the whole vocabulary is saved next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from config.errors import ConfigError
from generator.instruments import DRUMS, INSTRUMENTS, PROGRAMS

if TYPE_CHECKING:  # MidiTok is imported where it is used: it took a second of every concert's start-up
    from miditok import TSD, TokenizerConfig

FORMAT = 1
TPQ = 96  # ticks per quarter note of the pieces we build; MidiTok resamples to its own resolution
TEMPO_BINS: tuple[int, ...] = (48, 60, 72, 84, 96, 108, 120, 132, 144, 160, 176, 192)
_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEYS: tuple[str, ...] = (*_TONICS, *(f"{t}m" for t in _TONICS))
"""Key names, major then minor (`Dm`): the piece's estimated key, a conditioning token since vocab v2."""

# Token kinds, as small ints so the grammar can work on numpy arrays.
KIND_OTHER, KIND_TIMESHIFT, KIND_PROGRAM, KIND_PITCH, KIND_DURATION, KIND_EOS = range(6)


def tokenizer_config() -> TokenizerConfig:
    """The one MidiTok configuration every model of ours uses."""
    from miditok import TokenizerConfig

    return TokenizerConfig(
        pitch_range=(21, 109),
        beat_res={(0, 4): 8, (4, 12): 4},
        use_velocities=False,  # the score corpus has none worth learning; dynamics are set at render
        use_programs=True,
        one_token_stream_for_programs=True,
        programs=list(PROGRAMS),
        use_tempos=False,  # tempo is a conditioning token, applied at playback
        use_time_signatures=False,
        use_pitchdrum_tokens=False,
        remove_duplicated_notes=True,
        special_tokens=["PAD", "BOS", "EOS"],
    )


def nearest_tempo_bin(bpm: float) -> int:
    return min(TEMPO_BINS, key=lambda b: abs(b - bpm))


def key_name(tonic: int, minor: bool) -> str:
    return KEYS[tonic % 12 + 12 * minor]


def find_key(name: str) -> str:
    """The key a person meant (`d`, `D minor`, `f#m`, `Bbm`), or ValueError saying how to write one."""
    text = name.strip().lower().replace(" ", "")
    minor = False
    for suffix, is_minor in (("minor", True), ("min", True), ("major", False), ("maj", False), ("m", True)):
        if text.endswith(suffix) and len(text) > len(suffix):
            text, minor = text[: -len(suffix)], is_minor
            break
    spelled = {t.lower(): i for i, t in enumerate(_TONICS)}
    spelled |= {"db": 1, "d#": 3, "gb": 6, "g#": 8, "a#": 10, "cb": 11, "e#": 5, "fb": 4, "b#": 0}
    if text not in spelled:
        raise ValueError(f"unknown key {name!r}; name a tonic, optionally minor: D, F#m, Bb minor")
    return key_name(spelled[text], minor)


def key_of(name: str) -> tuple[int, bool]:
    """(tonic pitch class, minor) of a key name in KEYS: `F#m` is (6, True); the inverse of `key_name`."""
    index = KEYS.index(name)
    return index % 12, index >= 12


def transpose_key(name: str, semitones: int) -> str:
    tonic, minor = key_of(name)
    return key_name(tonic + semitones, minor)


class SavedTokenizer:
    """A model's saved MidiTok tokenizer: its token names at once (from vocab.json), MidiTok only when used.

    Sampling and playing need only the names; decoding to a score or saving again loads `tokenizer.json`
    through MidiTok, and checks then that it makes the same tokens as vocab.json says.
    """

    def __init__(self, path: Path, tokens: Sequence[str]) -> None:
        self.path = path
        self.vocab = {token: i for i, token in enumerate(tokens)}
        self._loaded: TSD | None = None

    def load(self) -> TSD:
        """MidiTok's tokenizer from the file; `ConfigError` if its vocabulary is not vocab.json's."""
        if self._loaded is None:
            from miditok import TSD

            loaded = TSD(params=self.path)
            if loaded.vocab != self.vocab:
                raise ConfigError(f"{str(self.path)!r} does not match the vocab.json saved beside it")
            self._loaded = loaded
        return self._loaded

    def decode(self, ids: Sequence[int]) -> Any:
        return self.load().decode(list(ids))

    def save(self, directory: Path, filename: str) -> None:
        self.load().save(directory, filename=filename)


@dataclass
class Vocab:
    tokenizer: TSD | SavedTokenizer
    styles: list[str]
    keyed: bool = True  # has Key_* tokens; models trained before keys were added have none
    tokens: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        base = sorted(self.tokenizer.vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in base] != list(range(len(base))):
            raise ConfigError("MidiTok vocabulary is not contiguous")
        extra = ["SEP_None"]
        extra += [f"Style_{s}" for s in self.styles]
        extra += [f"Inst_{i.name}" for i in INSTRUMENTS]
        extra += [f"Tempo_{b}" for b in TEMPO_BINS]
        extra += [f"Key_{k}" for k in KEYS] if self.keyed else []
        self.tokens = [t for t, _ in base] + extra
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.kind = np.array([_kind(t) for t in self.tokens], dtype=np.int8)
        # Value of each token for its kind: beats*8 for TimeShift/Duration, MIDI pitch, GM program.
        self.value = np.array([_value(t) for t in self.tokens], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad(self) -> int:
        return self.index["PAD_None"]

    @property
    def bos(self) -> int:
        return self.index["BOS_None"]

    @property
    def eos(self) -> int:
        return self.index["EOS_None"]

    @property
    def sep(self) -> int:
        return self.index["SEP_None"]

    def program_token(self, program: int) -> int:
        return self.index[f"Program_{program}"]

    def prefix(self, style: str, instruments: list[str], tempo: float, key: str | None = None) -> list[int]:
        """The conditioning prefix; instruments are deduplicated and put in a canonical order.

        `key` (a name in KEYS) is required by a keyed vocabulary and ignored by one without keys.
        """
        if style not in self.styles:
            raise ConfigError(f"style {style!r} is not in this model's vocabulary {self.styles}")
        names = [i.name for i in INSTRUMENTS if i.name in set(instruments)]
        ids = [self.bos, self.index[f"Style_{style}"]]
        ids += [self.index[f"Inst_{n}"] for n in names]
        ids += [self.index[f"Tempo_{nearest_tempo_bin(tempo)}"]]
        if self.keyed:
            if key not in KEYS:
                raise ConfigError(f"this model needs a key for its prefix, one of {list(KEYS)}; got {key!r}")
            ids.append(self.index[f"Key_{key}"])
        return [*ids, self.sep]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(directory, filename="tokenizer.json")
        meta = {"format": FORMAT, "styles": self.styles, "keys": self.keyed, "tokens": self.tokens}
        (directory / "vocab.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> Vocab:
        meta_path = directory / "vocab.json"
        if not meta_path.is_file():
            raise ConfigError(f"{str(directory)!r} holds no vocab.json; is it a concertbot model or data set?")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{str(meta_path)!r} has format {meta.get('format')!r}, expected {FORMAT}")
        tokens = list(meta.get("tokens", []))
        if "SEP_None" not in tokens:
            raise ConfigError(f"{str(meta_path)!r} lists no SEP_None token: it is not a concertbot vocabulary")
        # MidiTok's tokens come first, then ours from SEP_None on (see __post_init__).
        saved = SavedTokenizer(directory / "tokenizer.json", tokens[: tokens.index("SEP_None")])
        vocab = cls(saved, list(meta["styles"]), bool(meta.get("keys")))
        if vocab.tokens != tokens:
            raise ConfigError(f"{str(meta_path)!r} does not match the tokens this version of concertbot makes")
        return vocab

    @classmethod
    def build(cls, styles: list[str]) -> Vocab:
        from miditok import TSD

        return cls(TSD(tokenizer_config()), sorted(styles))


def _kind(token: str) -> int:
    head = token.split("_", 1)[0]
    return {
        "TimeShift": KIND_TIMESHIFT,
        "Program": KIND_PROGRAM,
        "Pitch": KIND_PITCH,
        "Duration": KIND_DURATION,
        "EOS": KIND_EOS,
    }.get(head, KIND_OTHER)


def _value(token: str) -> int:
    head, _, rest = token.partition("_")
    if head in ("TimeShift", "Duration"):
        beats, frac, res = (int(x) for x in rest.split("."))
        return beats * 8 + frac * 8 // res  # in 1/8 beats; MidiTok's grid here divides 8
    if head in ("Pitch", "Program"):
        return int(rest)
    return 0


__all__ = ["DRUMS", "KEYS", "TEMPO_BINS", "TPQ", "Vocab", "nearest_tempo_bin", "tokenizer_config"]
