"""Chat text -> a command, purely: what a viewer typed, split and checked, before anything is looked up.

Lines that are not our commands (plain chat, other bots' `!uptime`) give None and are ignored silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "!"
MAX_LINE = 500  # Twitch's own limit on a chat message
MAX_SEED_DIGITS = 19  # seeds are below 2^63
MAX_TITLE = 100  # characters of a title looked up; a piece's title has 2-6 words

EVERYONE = frozenset(
    {"compose", "queue", "np", "cancel", "vote", "voteskip", "top", "replay", "styles", "instruments", "help"}
)
MODERATORS = frozenset({"skip", "pause", "resume", "clear", "remove", "block", "unblock", "autoplay"})
# Steers of the piece that plays (generator.steer): each comes as Command("steer", (kind, *args)).
STEERS = frozenset(
    {"faster", "slower", "louder", "softer", "major", "minor", "add", "drop", "calmer", "wilder", "again"}
)
ALIASES = {"request": "compose", "sr": "compose", "encore": "replay", "nowplaying": "np", "song": "np"}
PERIODS = ("stream", "week", "all")
_TEMPO = re.compile(r"^(\d{1,3}(?:\.\d+)?)(?:bpm)?$", re.IGNORECASE)
_MODES = ("major", "minor", "maj", "min")
_LOGIN = re.compile(r"^@?([A-Za-z0-9_]{1,25})$")


class CommandError(Exception):
    """A command we know, typed wrongly: the message is the short reply the viewer gets."""


@dataclass(frozen=True)
class Command:
    name: str  # canonical name, e.g. "compose" for !request
    args: tuple[str, ...]

    @property
    def for_moderators(self) -> bool:
        return self.name in MODERATORS


@dataclass(frozen=True)
class ComposeArgs:
    """`!compose <style> [instrument ...] [tempo] [in <key>]`, names not yet resolved."""

    style: str
    instruments: tuple[str, ...]
    tempo: float | None
    key: str | None = None  # as typed after "in": "D", "f#m", "Bb minor"


def parse(text: str) -> Command | None:
    """The command in a chat line, or None when the line is not one of ours."""
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > MAX_LINE:
        return None
    words = text[len(PREFIX) :].split()
    if not words:
        return None
    name = words[0].lower()
    name = ALIASES.get(name, name)
    if name in STEERS:
        return Command("steer", (name, *words[1:]))
    if name not in EVERYONE and name not in MODERATORS:
        return None
    return Command(name, tuple(words[1:]))


def compose_args(args: tuple[str, ...]) -> ComposeArgs:
    """Style first, then instruments; a number (optionally with "bpm") anywhere after the style is the tempo,
    and "in" names the key: `!compose irish violin harp 120 in D`, `!compose bach in f# minor`."""
    if not args:
        raise CommandError("say which style, e.g. !compose bach violin cello (see !styles)")
    tempo: float | None = None
    key: str | None = None
    instruments = []
    words = list(args[1:])
    while words:
        word = words.pop(0)
        if word.lower() == "in":
            if key is not None or not words:
                raise CommandError("name one key after 'in', e.g. !compose irish violin in D")
            key = words.pop(0)[:12]
            if words and words[0].lower() in _MODES:
                key += " " + words.pop(0).lower()
        elif match := _TEMPO.match(word):
            if tempo is not None:
                raise CommandError("give one tempo at most, e.g. 90")
            tempo = float(match.group(1))
        elif word.lstrip("-").replace(".", "", 1).isdigit():
            raise CommandError(f"tempo {word[:12]} is not a tempo; use a number of beats per minute, e.g. 90")
        else:
            instruments.append(word.lower()[:40])
    return ComposeArgs(args[0].lower()[:40], tuple(instruments), tempo, key)


def seed_arg(args: tuple[str, ...]) -> int:
    """The seed of `!replay <seed>`: digits only, as the bot printed it."""
    if not args:
        raise CommandError("say which piece, e.g. !replay 123456789 (seeds are in !top and !np)")
    text = args[0].lstrip("#")
    # isascii: isdigit alone also takes "²" and "⒐", which int() then refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_SEED_DIGITS or int(text) >= 2**63:
        raise CommandError(f"'{args[0][:20]}' is not a seed; seeds are numbers like 123456789")
    return int(text)


def replay_arg(args: tuple[str, ...]) -> int | str:
    """What `!replay` names: a seed (digits, as the bot printed it) or a piece's title, as typed."""
    if not args:
        raise CommandError("say which piece, e.g. !replay 123456789 or !replay The Lark on the Hill")
    if args[0].lstrip("#").isdigit():  # any script's digits: meant as a seed, so told what a seed looks like
        return seed_arg(args)
    return " ".join(args)[:MAX_TITLE]


def steer_arg(args: tuple[str, ...]) -> tuple[str, str]:
    """(kind, instrument) of a steer: `!add harp` is ("add", "harp"); the others take no argument."""
    kind = args[0]
    if kind in ("add", "drop"):
        if len(args) < 2:
            raise CommandError(f"say which instrument, e.g. !{kind} harp (see !instruments)")
        return kind, args[1].lower()[:40]
    return kind, ""


def period_arg(args: tuple[str, ...]) -> str:
    if not args:
        return "stream"
    period = args[0].lower()
    if period not in PERIODS:
        raise CommandError("use !top, !top week or !top all")
    return period


def login_arg(args: tuple[str, ...]) -> str:
    """A viewer named by a moderator (`!remove @someone`), as a lower-case login."""
    if not args or not (match := _LOGIN.match(args[0])):
        raise CommandError("name a viewer, e.g. !remove @someone")
    return match.group(1).lower()


def on_off_arg(args: tuple[str, ...]) -> bool:
    if not args or args[0].lower() not in ("on", "off"):
        raise CommandError("use !autoplay on or !autoplay off")
    return args[0].lower() == "on"
