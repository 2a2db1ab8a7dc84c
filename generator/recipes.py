"""From what a person typed (style, instrument names, tempo) to a complete PieceRequest."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

from pydantic import ValidationError

from config.errors import ConcertbotError
from config.settings import Sampling
from generator.instruments import BY_PROGRAM, find_instrument
from generator.model import LoadedModel
from generator.sampling import PieceRequest
from generator.styles import CORPUS_BY_NAME, resolve_style
from generator.vocab import find_key

MAX_INSTRUMENTS = 6
MIN_TEMPO, MAX_TEMPO = 30, 240


class RequestError(ConcertbotError):
    """A request that cannot be played as asked; the message says why in a few words."""


def style_defaults(loaded: LoadedModel, style: str) -> tuple[tuple[str, ...], float]:
    """The instruments and tempo a style sounds like when nobody says otherwise."""
    saved = loaded.card.get("style_defaults", {}).get(style)
    if saved:
        return tuple(saved["instruments"]), float(saved["tempo"])
    if style in CORPUS_BY_NAME:
        corpus = CORPUS_BY_NAME[style]
        return tuple(dict.fromkeys(corpus.ensemble)), float(corpus.tempo)
    return ("piano",), 120.0


def make_request(
    loaded: LoadedModel,
    style: str,
    instruments: list[str] | None = None,
    tempo: float | None = None,
    seconds: float = 60.0,
    seed: int | None = None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    key: str | None = None,
    critic: int = 1,
) -> PieceRequest:
    """Resolve names (UnknownNameError lists the closest ones) and fill in the style's defaults."""
    style = resolve_style(style, loaded.vocab.styles)
    default_instruments, default_tempo = style_defaults(loaded, style)
    names = (
        tuple(dict.fromkeys(find_instrument(n).name for n in instruments))
        if instruments
        else default_instruments
    )
    if len(names) > MAX_INSTRUMENTS:
        raise RequestError(f"at most {MAX_INSTRUMENTS} instruments at once, not {len(names)}")
    bpm = default_tempo if tempo is None else tempo
    if not MIN_TEMPO <= bpm <= MAX_TEMPO:
        raise RequestError(f"tempo {bpm:g} is out of range; use {MIN_TEMPO}-{MAX_TEMPO} BPM")
    if not 0 < seconds <= 3600:
        raise RequestError(f"length {seconds:g} s is out of range; use up to 3600 s")
    check_sampling(temperature, top_p)
    if seed is None:
        seed = new_seed()
    if not 0 <= seed < 2**63:
        raise RequestError(f"seed {seed} is out of range; seeds are 0 to 2^63-1")
    if key is not None:
        try:
            key = find_key(key)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if not loaded.vocab.keyed:
            raise RequestError(f"model {loaded.version} was trained without keys; leave the key out")
    return PieceRequest(
        style,
        names,
        float(bpm),
        float(seconds),
        int(seed),
        float(temperature),
        float(top_p),
        key=key,
        critic=int(critic),
    )


def check_sampling(temperature: float, top_p: float) -> None:
    """The settings' own bounds (`config.settings.Sampling`), for values that come from a command line."""
    try:
        Sampling(temperature=temperature, top_p=top_p)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).replace("_", "-")
        raise RequestError(f"{name} {error['input']:g} is out of range: {error['msg'].lower()}") from None


def new_seed() -> int:
    """A fresh seed short enough for a viewer to type back: 9 decimal digits at most."""
    return secrets.randbelow(10**9)


def summarize_styles(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per style, the median tempo, the most common instrument set and the share of each key of its pieces."""
    out: dict[str, dict[str, Any]] = {}
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        tempos = sorted(r["tempo"] for r in mine)
        sets = Counter(tuple(sorted(int(p) for p in r["ranges"])) for r in mine)
        # A default must be playable: a cantata's chorale doubles its four voices on instruments, and every
        # one of those parts has its own program, more than a request may ask for.
        playable = Counter({k: n for k, n in sets.items() if len(k) <= MAX_INSTRUMENTS}) or sets
        programs = playable.most_common(1)[0][0][:MAX_INSTRUMENTS]
        names = [BY_PROGRAM[p].name for p in programs if p in BY_PROGRAM]
        keys = Counter(r["key"] for r in mine if r.get("key"))
        out[style] = {
            "tempo": round(tempos[len(tempos) // 2]),
            "instruments": names or ["piano"],
            "keys": {k: round(n / sum(keys.values()), 4) for k, n in sorted(keys.items())},
        }
    return out
