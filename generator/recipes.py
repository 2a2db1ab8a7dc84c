"""From what a person typed (style, instrument names, tempo) to a complete PieceRequest."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from config.errors import ConcertbotError, UnknownNameError
from config.settings import Sampling
from generator.instruments import BY_NAME, BY_PROGRAM, DRUMS, find_instrument, stand_in
from generator.model import LoadedModel
from generator.sampling import PieceRequest
from generator.styles import CORPUS_BY_NAME, resolve_style
from generator.vocab import KEYS, find_key

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


def style_sounds(loaded: LoadedModel, style: str) -> dict[str, str]:
    """{a spare instrument: the one its parts in the style were scored for}, as the data set gave them (a
    classical quartet's clarinet is its second violin); empty for a card that never learnt them."""
    saved = loaded.card.get("style_defaults", {}).get(style) or {}
    return dict(saved.get("sounds", {}))


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
    """Resolve names (UnknownNameError lists the closest ones) and fill in the style's defaults.

    An instrument named twice is two parts: the second plays on a spare program that sounds as the first
    (`PieceRequest.sounds`), the one the style's data set gave such a part where it had one.
    """
    style = resolve_style(style, loaded.vocab.styles)
    default_instruments, default_tempo = style_defaults(loaded, style)
    learnt = style_sounds(loaded, style)
    if instruments:
        typed = [find_instrument(n).name for n in instruments]
        names, sounds = _parts(typed, learnt, _registers(loaded, style))
    else:
        names = default_instruments
        sounds = tuple(sorted((part, heard) for part, heard in learnt.items() if part in names))
    bpm = default_tempo if tempo is None else tempo
    seed = new_seed() if seed is None else seed
    _check_ranges(len(names), bpm, seconds, seed, temperature, top_p)
    if key is not None:
        key = _known_key(key)
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
        sounds=sounds,
    )


def _parts(
    typed: list[str], learnt: dict[str, str], registers: dict[int, tuple[int, int]]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(a part's instrument each, (part, heard as) for the doubled ones) for the names as typed.

    Every instrument named keeps its own program first, so "violin violin clarinet" keeps a real clarinet;
    each repeat then takes the spare the style learnt for it, else the first free one that holds its register.
    Drums are one kit however often they are named.
    """
    names = list(dict.fromkeys(typed))
    taken = {BY_NAME[name].program for name in names}
    counts = Counter(name for name in typed if BY_NAME[name].program != DRUMS)
    repeats = [name for name, n in counts.items() for _ in range(n - 1)]
    if len(names) + len(repeats) > MAX_INSTRUMENTS:
        raise RequestError(f"at most {MAX_INSTRUMENTS} instruments at once, not {len(names) + len(repeats)}")
    sounds = []
    spare_for = {heard: part for part, heard in learnt.items()}
    for name in repeats:
        program = BY_NAME[name].program
        spare = BY_NAME[spare_for[name]].program if name in spare_for else None
        if spare is None or spare in taken:
            low, high = registers.get(program, (BY_NAME[name].low, BY_NAME[name].high))
            spare = stand_in(low, high, taken)
        if spare is None:
            raise RequestError(f"no instrument is left to play one more {name}")
        taken.add(spare)
        names.append(BY_PROGRAM[spare].name)
        sounds.append((BY_PROGRAM[spare].name, name))
    return tuple(names), tuple(sorted(sounds))


def _registers(loaded: LoadedModel, style: str) -> dict[int, tuple[int, int]]:
    saved = (loaded.card.get("style_defaults", {}).get(style) or {}).get("registers", {})
    return {int(p): (int(lo), int(hi)) for p, (lo, hi) in saved.items()}


def recipe_from_dict(fields: Mapping[str, Any]) -> PieceRequest:
    """`PieceRequest.from_dict` for a recipe from outside the process (a worker's job), every field checked as
    `make_request` checks what a viewer typed, so that a bad one is refused here, its field named, and not
    deep in the sampler. The style is left to the model that plays it (its vocabulary says).

    Raises:
        RequestError: a field missing, unknown, of the wrong type or out of range.
    """
    try:
        request = PieceRequest.from_dict(fields)
    except (KeyError, TypeError) as exc:
        raise RequestError(f"not a recipe ({type(exc).__name__}: {exc})") from None
    wrong = [f"{name} {getattr(request, name)!r}" for name in _FIELD_TYPES if _mistyped(request, name)]
    if not all(isinstance(name, str) for name in request.instruments):
        wrong.append(f"instruments {list(request.instruments)!r}")
    if not all(isinstance(part, str) and isinstance(heard, str) for part, heard in request.sounds):
        wrong.append(f"sounds {dict(request.sounds)!r}")
    if wrong:
        raise RequestError(f"a field of the wrong type: {', '.join(wrong)}")
    if not request.instruments:
        raise RequestError("no instruments")
    try:
        programs = request.programs()
        request.sound_programs()
    except UnknownNameError as exc:
        raise RequestError(str(exc)) from None
    strays = [part for part, _ in request.sounds if part not in request.instruments]
    if strays:
        raise RequestError(f"sounds for parts the piece does not have: {', '.join(map(repr, strays))}")
    _check_ranges(
        len(programs), request.tempo, request.seconds, request.seed, request.temperature, request.top_p
    )
    check_sampling(request.temperature, request.top_p, request.critic)
    if request.key is not None and request.key not in KEYS:  # as `to_dict` writes it: a name, spelled so
        raise RequestError(f"key {request.key!r} is not one of {', '.join(KEYS)}")
    return request


# Each field's JSON type (bool apart: it is an int to Python, and no number is a bool).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "style": (str,),
    "tempo": (int, float),
    "seconds": (int, float),
    "seed": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "strict_instruments": (bool,),
    "voice_leading": (bool,),
    "plan": (bool,),
    "critic": (int,),
    "key": (str, type(None)),
}


def _mistyped(request: PieceRequest, name: str) -> bool:
    value, kinds = getattr(request, name), _FIELD_TYPES[name]
    return not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)


def _check_ranges(
    instruments: int, tempo: float, seconds: float, seed: int, temperature: float, top_p: float
) -> None:
    if instruments > MAX_INSTRUMENTS:
        raise RequestError(f"at most {MAX_INSTRUMENTS} instruments at once, not {instruments}")
    if not MIN_TEMPO <= tempo <= MAX_TEMPO:
        raise RequestError(f"tempo {tempo:g} is out of range; use {MIN_TEMPO}-{MAX_TEMPO} BPM")
    if not 0 < seconds <= 3600:
        raise RequestError(f"length {seconds:g} s is out of range; use up to 3600 s")
    check_sampling(temperature, top_p)
    if not 0 <= seed < 2**63:
        raise RequestError(f"seed {seed} is out of range; seeds are 0 to 2^63-1")


def _known_key(key: str) -> str:
    try:
        return find_key(key)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


def check_sampling(temperature: float, top_p: float, critic: int = 1) -> None:
    """The settings' own bounds (`config.settings.Sampling`), for values that come from a command line."""
    try:
        Sampling(temperature=temperature, top_p=top_p, critic=critic)
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
            "sounds": learn_sounds(mine),
        }
    return out


def learn_sounds(rows: list[dict[str, Any]]) -> dict[str, str]:
    """{a spare instrument: the one it stood in for}, where most of a style's parts on that spare were scored
    for another instrument (corpus.part_programs): a classical quartet's "clarinet" is its second violin."""
    played = Counter(int(p) for r in rows for p in r["ranges"])
    stood = Counter((int(spare), int(scored)) for r in rows for spare, scored in r.get("stand_ins", {}).items())
    return {
        BY_PROGRAM[spare].name: BY_PROGRAM[scored].name
        for (spare, scored), n in sorted(stood.items())
        if 2 * n > played[spare] and spare in BY_PROGRAM and scored in BY_PROGRAM
    }
