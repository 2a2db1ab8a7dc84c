"""Styles a viewer can type, and where the music for each comes from in the music21 corpus."""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import UnknownNameError


@dataclass(frozen=True)
class CorpusStyle:
    name: str
    folders: tuple[str, ...]  # top folders of music21's corpus
    ensemble: tuple[str, ...]  # instruments given to its parts, top voice first
    tempo: int  # beats a minute when the score names no tempo; the beat is the metre's (a half note in 4/2)
    description: str
    aliases: tuple[str, ...] = ()
    # Josquin's ABC files write each voice of one piece as its own tune (X: block): merge them into parts.
    tunes_are_voices: bool = False


# Renaissance polyphony: the choir sings the top voice and cornett-and-sackbut-like brass the others, as
# churches of the time often doubled or replaced voices. One program per voice: a choir on every part would
# read to the model as one line leaping between voices.
_VOICES_AND_BRASS = ("choir", "horn", "trombone", "bassoon")

CORPUS_STYLES: tuple[CorpusStyle, ...] = (
    CorpusStyle(
        "bach",
        ("bach",),
        ("violin", "viola", "cello", "contrabass"),
        80,
        "J. S. Bach's four-part chorales",
        ("chorale", "chorales", "js bach"),
    ),
    CorpusStyle("palestrina", ("palestrina",), _VOICES_AND_BRASS, 72, "Palestrina's masses", ("renaissance",)),
    CorpusStyle("monteverdi", ("monteverdi",), _VOICES_AND_BRASS, 84, "Monteverdi's madrigals", ("madrigal",)),
    CorpusStyle(
        "josquin",
        ("josquin",),
        _VOICES_AND_BRASS,
        72,
        "Josquin des Prez's chansons and motets",
        tunes_are_voices=True,
    ),
    CorpusStyle(
        "medieval",
        ("trecento", "ciconia", "luca"),
        ("recorder", "viola", "harp"),
        100,
        "Italian trecento songs",
        ("trecento", "ars nova"),
    ),
    CorpusStyle(
        "classical",
        ("beethoven", "mozart", "haydn"),
        ("violin", "violin", "viola", "cello"),
        112,
        "Beethoven, Mozart and Haydn string quartets",
        ("quartet", "mozart", "beethoven", "haydn"),
    ),
    CorpusStyle(
        "irish",
        ("oneills1850", "ryansMammoth"),
        ("violin",),
        112,
        "O'Neill's and Ryan's Irish dance tunes",
        ("celtic", "jig", "reel"),
    ),
    CorpusStyle("scottish", ("airdsAirs",), ("flute",), 96, "Aird's Scottish airs", ("scots", "airs")),
    CorpusStyle(
        "folk", ("essenFolksong", "miscFolk"), ("flute",), 100, "Essen folk songs", ("essen", "folksong")
    ),
)

CORPUS_BY_NAME = {s.name: s for s in CORPUS_STYLES}


def resolve_style(name: str, known: list[str], aliases: dict[str, str] | None = None) -> str:
    """The style a viewer meant by `name` among `known` ones, or UnknownNameError with close matches."""
    key = name.strip().lower()
    if key in known:
        return key
    table = dict(aliases or {})
    for style in CORPUS_STYLES:
        for alias in style.aliases:
            table.setdefault(alias, style.name)
    if key in table and table[key] in known:
        return table[key]
    raise UnknownNameError("style", name, known, owner="this model")
