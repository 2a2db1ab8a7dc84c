"""The instruments a viewer can name: General MIDI programs, playable ranges, and name lookup.

Every General MIDI program is folded onto one of these canonical instruments when data is built, so the
model's Program tokens and the prefix's instrument tokens name the same small set.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import UnknownNameError

DRUMS = -1  # MidiTok's program number for the percussion channel


@dataclass(frozen=True)
class Instrument:
    name: str
    program: int  # General MIDI program 0-127, or DRUMS
    low: int  # lowest MIDI pitch it plays well
    high: int  # highest
    aliases: tuple[str, ...] = ()


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("piano", 0, 21, 108, ("keys", "keyboard")),
    Instrument("harpsichord", 6, 29, 89, ("cembalo",)),
    Instrument("organ", 19, 36, 96, ("churchorgan",)),
    Instrument("guitar", 24, 40, 88, ("nylon",)),
    Instrument("violin", 40, 55, 100, ("fiddle",)),
    Instrument("viola", 41, 48, 88),
    Instrument("cello", 42, 36, 76, ("violoncello",)),
    Instrument("contrabass", 43, 28, 67, ("bass", "doublebass")),
    Instrument("harp", 46, 24, 103),
    Instrument("strings", 48, 28, 103, ("string", "ensemble")),
    Instrument("choir", 52, 36, 84, ("voice", "voices", "chorus", "vocals")),
    Instrument("trumpet", 56, 54, 86),
    Instrument("trombone", 57, 40, 72),
    Instrument("tuba", 58, 28, 58),
    Instrument("horn", 60, 41, 77, ("frenchhorn",)),
    Instrument("oboe", 68, 58, 91),
    Instrument("bassoon", 70, 34, 75),
    Instrument("clarinet", 71, 50, 94),
    Instrument("flute", 73, 60, 96),
    Instrument("recorder", 74, 60, 96),
    Instrument("drums", DRUMS, 35, 81, ("drum", "percussion", "kit")),
)

BY_NAME = {i.name: i for i in INSTRUMENTS}
BY_PROGRAM = {i.program: i for i in INSTRUMENTS}
_ALIASES = {alias: i for i in INSTRUMENTS for alias in (i.name, *i.aliases)}
PROGRAMS: tuple[int, ...] = tuple(i.program for i in INSTRUMENTS)

# General MIDI families (program // 8) folded onto the nearest canonical instrument.
_FAMILY = {
    0: 0,  # pianos
    1: 6,  # chromatic percussion -> harpsichord-like plucked attack
    2: 19,  # organs
    3: 24,  # guitars
    4: 43,  # basses
    5: 48,  # orchestral strings (refined below)
    6: 48,  # ensembles
    7: 56,  # brass (refined below)
    8: 71,  # reeds
    9: 73,  # pipes
    10: 48,  # synth lead
    11: 48,  # synth pad
    12: 48,  # synth effects
    13: 24,  # ethnic plucked
    14: 0,  # percussive
    15: 0,  # sound effects
}
_EXACT = {
    40: 40,
    41: 41,
    42: 42,
    43: 43,
    44: 48,
    45: 48,
    46: 46,
    47: 48,
    52: 52,
    53: 52,
    54: 52,
    56: 56,
    57: 57,
    58: 58,
    59: 56,
    60: 60,
    61: 60,
    68: 68,
    69: 68,
    70: 70,
    71: 71,
    74: 74,
    75: 74,
    6: 6,
    7: 6,
}


# Instruments for a part whose own is taken, in the order tried: sustained single lines first (a piano, a
# string section or a choir would not read as one more voice).
SPARE_VOICES = (
    "clarinet",
    "oboe",
    "flute",
    "horn",
    "bassoon",
    "trombone",
    "recorder",
    "viola",
    "cello",
    "contrabass",
    "trumpet",
    "tuba",
    "organ",
    "violin",
)


def stand_in(low: int, high: int, taken: set[int]) -> int | None:
    """The program for one more part between `low` and `high` when `taken` programs are in use: the first free
    one of SPARE_VOICES whose range holds it, else the free one nearest to it; None when none is free.

    A part's Program token is its identity to the model, so a second violin needs a program of its own; the
    data set and a request that doubles an instrument pick it the same way.
    """
    free = [BY_NAME[name] for name in SPARE_VOICES if BY_NAME[name].program not in taken]
    if not free:
        return None
    return max(free, key=lambda inst: min(low - inst.low, inst.high - high, 0)).program


def canonical_program(program: int, is_drum: bool = False) -> int:
    """Fold any General MIDI program onto the program of one of INSTRUMENTS."""
    if is_drum or program == DRUMS:
        return DRUMS
    if program in BY_PROGRAM:
        return program
    return _EXACT.get(program, _FAMILY[max(0, min(127, program)) // 8])


def find_instrument(name: str) -> Instrument:
    """The instrument a viewer meant by `name`, or UnknownNameError with the closest names."""
    key = name.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    if key in _ALIASES:
        return _ALIASES[key]
    if key.endswith("s") and key[:-1] in _ALIASES:
        return _ALIASES[key[:-1]]
    raise UnknownNameError("instrument", name, BY_NAME)
