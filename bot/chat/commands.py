"""Chat text -> a command, purely: what a viewer typed, split and checked, before anything is looked up.

`COMMANDS` is the one table of what there is to type: each command's name, aliases, who may use it, which
cooldown it spends and its help. `parse`, the dispatcher in `bot.chat.handlers`, `!help` and the README's table
of chat commands (`readme_table`) all read it. Lines that are not our commands (plain chat, other bots'
`!uptime`) give None and are ignored silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from bot.chat.message import ChatMessage
from config.errors import ConcertbotError

PREFIX = "!"
MAX_LINE = 500  # Twitch's own limit on a chat message
MAX_SEED_DIGITS = 19  # seeds are below 2^63
MAX_TITLE = 100  # characters of a title looked up; a piece's title has 2-6 words


class Who(Enum):
    """Who may use a command."""

    EVERYONE = "everyone"
    MODERATOR = "moderators"  # and the broadcaster

    def allows(self, msg: ChatMessage) -> bool:
        return self is Who.EVERYONE or msg.is_privileged


class Cooldown(Enum):
    """What a command spends of the viewer's time between actions."""

    NONE = "none"
    # A new piece in the queue: the viewer's and the global wait, spent only once the request is valid and
    # queued (a moderator's or a redemption's request is exempt).
    REQUEST = "request"


@dataclass(frozen=True)
class CommandSpec:
    """One chat command, as the table declares it."""

    name: str  # canonical name, e.g. "compose" for !request
    usage: str  # as `!help` shows it: "!top [week|all]"
    help: str  # one line, for the README's table
    who: Who = Who.EVERYONE
    cooldown: Cooldown = Cooldown.NONE
    aliases: tuple[str, ...] = ()
    # Words that each name a kind of this command and come as its first argument: `!faster` is
    # Command("steer", ("faster",)). A command with kinds is typed only by them, never by its name.
    kinds: tuple[str, ...] = ()


# In the order `!help` names them.
COMMANDS_TABLE: tuple[CommandSpec, ...] = (
    CommandSpec(
        "compose",
        "!compose <style> [instruments] [tempo] [in <key>]",
        "queue a new piece (`!compose irish violin harp 120 in D`); the reply gives your place and the wait",
        cooldown=Cooldown.REQUEST,
        aliases=("request", "sr"),
    ),
    CommandSpec("queue", "!queue", "queue length and your place in it"),
    CommandSpec("np", "!np", "what plays, with its seed and votes", aliases=("nowplaying", "song")),
    CommandSpec("vote", "!vote", "one vote per viewer per piece (while it plays and 30 s after)"),
    CommandSpec("voteskip", "!voteskip", "skip when half of the recent chatters agree"),
    CommandSpec("top", "!top [week|all]", "the leaderboard of this stream, the week or all time"),
    CommandSpec(
        "replay",
        "!replay <seed or title>",
        "play a piece again, note for note (`!replay the lark on the hill`: any case)",
        cooldown=Cooldown.REQUEST,
        aliases=("encore",),
    ),
    CommandSpec("cancel", "!cancel", "withdraw your latest request"),
    CommandSpec("styles", "!styles", "the styles the model knows"),
    CommandSpec("instruments", "!instruments", "the instruments there are"),
    CommandSpec(
        "steer",
        "while it plays: !faster !slower !louder !softer !major !minor !add/!drop <instrument> !calmer !wilder "
        "!again",
        "steer the piece that plays: a 15 s vote that passes with a quarter of the recent chatters (at least"
        " 2); it lands at the next bar line (see [Steering](#steering-by-vote-issue-16))",
        kinds=(
            "faster",
            "slower",
            "louder",
            "softer",
            "major",
            "minor",
            "add",
            "drop",
            "calmer",
            "wilder",
            "again",
        ),
    ),
    CommandSpec("help", "!help", "these commands in one line", aliases=("commands",)),
    CommandSpec("skip", "!skip", "skip the piece that plays", who=Who.MODERATOR),
    CommandSpec("pause", "!pause", "pause the concert", who=Who.MODERATOR),
    CommandSpec("resume", "!resume", "go on after !pause", who=Who.MODERATOR),
    CommandSpec("clear", "!clear", "empty the queue", who=Who.MODERATOR),
    CommandSpec("remove", "!remove <user>", "drop a viewer's requests", who=Who.MODERATOR),
    CommandSpec(
        "block", "!block <user>", "ignore a viewer from now on and drop their requests", who=Who.MODERATOR
    ),
    CommandSpec("unblock", "!unblock <user>", "let a blocked viewer request again", who=Who.MODERATOR),
    CommandSpec(
        "autoplay",
        "!autoplay on|off",
        "whether the bot composes on its own when the queue is empty",
        who=Who.MODERATOR,
    ),
)
COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in COMMANDS_TABLE}
# What each word typed after "!" names: a command by its name or an alias, or a kind of one.
_WORDS: dict[str, CommandSpec] = {
    word: spec for spec in COMMANDS_TABLE for word in (spec.kinds or (spec.name, *spec.aliases))
}

# Derived views of the table, for tests and tools that want plain sets.
EVERYONE = frozenset(s.name for s in COMMANDS_TABLE if s.who is Who.EVERYONE and not s.kinds)
MODERATORS = frozenset(s.name for s in COMMANDS_TABLE if s.who is not Who.EVERYONE)
STEERS = frozenset(COMMANDS["steer"].kinds)
ALIASES = {alias: s.name for s in COMMANDS_TABLE for alias in s.aliases}
PERIODS = ("stream", "week", "all")
_TEMPO = re.compile(r"^(\d{1,3}(?:\.\d+)?)(?:bpm)?$", re.IGNORECASE)
_MODES = ("major", "minor", "maj", "min")
_LOGIN = re.compile(r"^@?([A-Za-z0-9_]{1,25})$")


class CommandError(ConcertbotError):
    """A command we know, typed wrongly: the message is the short reply the viewer gets."""


@dataclass(frozen=True)
class Command:
    name: str  # canonical name, e.g. "compose" for !request
    args: tuple[str, ...]

    @property
    def spec(self) -> CommandSpec:
        return COMMANDS[self.name]

    @property
    def for_moderators(self) -> bool:
        return self.spec.who is not Who.EVERYONE


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
    word = words[0].lower()
    spec = _WORDS.get(word)
    if spec is None:
        return None
    if spec.kinds:
        return Command(spec.name, (word, *words[1:]))
    return Command(spec.name, tuple(words[1:]))


def help_text() -> str:
    """The one line `!help` answers: what everyone may type."""
    return " · ".join(s.usage for s in COMMANDS_TABLE if s.who is Who.EVERYONE and s.name != "help")


def readme_table() -> str:
    """The README's table of chat commands, in Markdown."""
    rows = ["| command | who | what it does |", "|---|---|---|"]
    for spec in COMMANDS_TABLE:
        also = f" (also {', '.join(f'`!{a}`' for a in spec.aliases)})" if spec.aliases else ""
        # "while it plays: !faster ...": the README's column says when by itself.
        usage = spec.usage.split(": ", 1)[-1].replace("|", "\\|")
        waits = "; spends the request cooldown" if spec.cooldown is Cooldown.REQUEST else ""
        rows.append(f"| `{usage}`{also} | {spec.who.value} | {spec.help}{waits} |")
    return "\n".join(rows) + "\n"


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
