"""The web's pure core: view dataclasses to JSON shapes, and the checks on what a browser sends.

Nothing here does I/O; the handlers in `bot.web.server`, `bot.web.overlay` and `bot.web.pages` call these and
turn a `WebInputError` into a 400 (or a 404 for a seed).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from bot.web.view import BoardView, LiveNote, NowView, Period, PieceView, QueueView

PERIODS: tuple[Period, ...] = ("stream", "week", "all")
PANELS = ("now", "queue", "top", "roll")
MAX_SEED = 2**63 - 1  # seeds are stored as signed 64-bit numbers
MAX_BOARD = 100
MAX_CHAT_TEXT = 500  # Twitch's own limit on a chat message
_SEED = re.compile(r"[0-9]{1,19}")  # not \d: that also matches other scripts' digits
_LOGIN = re.compile(r"[A-Za-z0-9_]{1,25}")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = frozenset({"", "0.0.0.0", "::"})  # listening on every address


class WebInputError(ValueError):
    """Something a browser sent that we refuse; the message is the reason it is told."""


def parse_seed(text: str) -> int | None:
    """The seed written as 1-19 ASCII digits, or None for anything else (or a seed no piece can have)."""
    if not _SEED.fullmatch(text):
        return None
    seed = int(text)
    return seed if seed <= MAX_SEED else None


def parse_period(text: str | None, default: Period = "stream") -> Period:
    """A leaderboard period from a query string; `WebInputError` for anything but stream, week or all."""
    if text is None or text == "":
        return default
    if text not in PERIODS:
        raise WebInputError(f"period must be one of {', '.join(PERIODS)}, not {text[:20]!r}")
    return text  # `in PERIODS` narrows it to a Period


def parse_count(text: str | None, default: int = 10) -> int:
    """How many leaderboard rows a query asks for, 1 to `MAX_BOARD`."""
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_BOARD:
        raise WebInputError(f"n must be a whole number from 1 to {MAX_BOARD}")
    return int(text)


def parse_panels(text: str | None) -> tuple[str, ...]:
    """The overlay panels a `?panels=now,queue` query names, in our order; all of them if it names none."""
    wanted = {word.strip().lower() for word in (text or "").split(",")}
    chosen = tuple(panel for panel in PANELS if panel in wanted)
    return chosen or PANELS


def parse_json_body(body: bytes, charset: str | None) -> Any:
    """A request body sent as `application/json` (UTF-8, as RFC 8259 requires), decoded.

    `WebInputError` for another charset, bytes that are not UTF-8, text that is not JSON, or JSON nested
    deeper than Python's decoder goes or holding a number too long to convert.
    """
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise WebInputError(f"send JSON as UTF-8, not charset={charset[:20]!r}")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise WebInputError("the body is not UTF-8 text") from None
    except (ValueError, RecursionError):
        # ValueError beyond JSONDecodeError: a number of more than 4300 digits is refused by int() itself.
        raise WebInputError("the body is not valid JSON") from None


def host_name(host: str) -> str | None:
    """The name a `Host` header gives ("127.0.0.1:8080" -> "127.0.0.1", "[::1]:80" -> "::1"), or None."""
    if any(c in host for c in "@/?#\\"):  # with a user part or a path, it is no name of ours
        return None
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def same_site(host: str, origin: str | None, listening: Collection[str]) -> bool:
    """Whether a request's `Host` (and `Origin`, when sent) name this server.

    `listening` is the configured address besides `LOCAL_HOSTS`. A page that rebinds its own domain name to
    127.0.0.1 still sends that name, so it is refused; an address typed as digits cannot be rebound, so on a
    server listening on every address any IP address passes.
    """
    allowed = LOCAL_HOSTS | {name for h in listening if (name := host_name(h))}
    any_address = any(h in ANY_HOST for h in listening)

    def ours(name: str | None) -> bool:
        if name is None:
            return False
        if name in allowed:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return any_address

    if not ours(host_name(host)):
        return False
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and ours(parts.hostname)
    except ValueError:
        return False


@dataclass(frozen=True)
class ChatLine:
    user: str
    text: str


def parse_chat(body: Any) -> ChatLine:
    """A local chat line from a decoded JSON body: `{"user": login, "text": up to 500 characters}`."""
    if not isinstance(body, dict):
        raise WebInputError('send a JSON object: {"user": "...", "text": "..."}')
    user, text = body.get("user"), body.get("text")
    if not isinstance(user, str) or not _LOGIN.fullmatch(user):
        raise WebInputError("user must be 1-25 letters, digits or underscores")
    if not isinstance(text, str) or not text.strip():
        raise WebInputError("text must be a non-empty string")
    if len(text) > MAX_CHAT_TEXT:
        raise WebInputError(f"text must be at most {MAX_CHAT_TEXT} characters")
    if any("\ud800" <= c <= "\udfff" for c in text):
        # JSON's "\ud800" escape decodes to half a character, which no reply quoting it could be sent as.
        raise WebInputError("text must be Unicode characters (it holds half of a surrogate pair)")
    return ChatLine(user, text)


# JSON shapes. Tuples become lists; seeds stay numbers here (the overlay's messages turn them into text).
# A view's recipe is spread flat among its own fields, as the API has always served it and the overlay reads it.
NOW_RECIPE = ("seed", "style", "instruments", "tempo", "seconds")
PIECE_RECIPE = (*NOW_RECIPE, "temperature", "top_p")


def now_fields(now: NowView) -> dict[str, Any]:
    """What is playing as plain JSON values: the API's `/api/now` and the overlay's "now" event."""
    return _plain(now, NOW_RECIPE)


def now_json(now: NowView | None) -> dict[str, Any] | None:
    """What is playing, with its page's address; None when the concert is silent."""
    if now is None:
        return None
    return {**now_fields(now), "url": f"/p/{now.seed}"}


def queue_json(queue: list[QueueView]) -> list[dict[str, Any]]:
    """The waiting requests, next first."""
    return [_plain(entry) for entry in sorted(queue, key=lambda entry: entry.position)]


BOARD_RECIPE = ("style", "instruments")
GONE = {"style": "?", "instruments": []}  # a voted seed whose piece the store no longer holds


def board_json(board: list[BoardView]) -> list[dict[str, Any]]:
    """Leaderboard rows, best first, each with its piece's address."""
    rows = sorted(board, key=lambda row: row.rank)
    return [
        {**(GONE if row.recipe is None else {}), **_plain(row, BOARD_RECIPE), "url": f"/p/{row.seed}"}
        for row in rows
    ]


def piece_json(piece: PieceView) -> dict[str, Any]:
    """A stored piece's recipe and votes, with its page and download addresses."""
    links = {"url": f"/p/{piece.seed}", "midi_url": f"/p/{piece.seed}.mid", "wav_url": f"/p/{piece.seed}.wav"}
    return {**_plain(piece, PIECE_RECIPE), **(links if piece.complete else {"url": links["url"]})}


def notes_json(data: dict[str, Any]) -> dict[str, Any]:
    """A "notes" event's data for the overlay: `{"seed": text or None, "notes": [note, ...]}`.

    Accepts `notes` as `LiveNote`s or as dicts with the same fields, and drops anything else, so a
    conductor's mistake shows as a quiet roll rather than a broken overlay.
    """
    notes = []
    for note in data.get("notes", ()):
        fields = asdict(note) if isinstance(note, LiveNote) else note
        try:
            notes.append(
                {
                    "pitch": int(fields["pitch"]),
                    "program": int(fields["program"]),
                    "start": round(float(fields["start"]), 4),
                    "duration": round(float(fields["duration"]), 4),
                }
            )
        except (TypeError, KeyError, ValueError):
            continue
    seed = data.get("seed")
    return {"seed": str(seed) if isinstance(seed, int) else None, "notes": notes}


def seeds_as_text(value: Any) -> Any:
    """`value` with every "seed" and "replay_seed" number turned into text.

    JavaScript numbers are exact only up to 2^53 and seeds go up to 2^63, so the overlay gets them as text.
    """
    if isinstance(value, list):
        return [seeds_as_text(item) for item in value]
    if isinstance(value, dict):
        return {
            key: str(item) if key in ("seed", "replay_seed") and isinstance(item, int) else seeds_as_text(item)
            for key, item in value.items()
        }
    return value


def _plain(view: Any, shown: tuple[str, ...] = ()) -> dict[str, Any]:
    """`view`'s fields, its recipe's `shown` fields in place of the recipe, tuples as lists."""
    fields = asdict(view)
    if "recipe" in fields:
        recipe = fields.pop("recipe")
        if recipe is not None:  # as a listener hears them: a quartet's second violin is a violin
            recipe["instruments"] = view.recipe.heard()
        fields = ({name: recipe[name] for name in shown} if recipe is not None else {}) | fields
    return {key: list(item) if isinstance(item, tuple) else item for key, item in fields.items()}
