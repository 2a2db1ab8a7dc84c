"""One exception root; each error carries a message fit to show a user as is."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConcertbotError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(ConcertbotError):
    """The operator's settings are wrong; the message quotes the bad value."""


MAX_LISTED = 100  # characters of names an UnknownNameError lists at most: chat replies stay under 200


class UnknownNameError(ConcertbotError):
    """A style or instrument name nobody knows; carries the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str], owner: str | None = None) -> None:
        """`owner` ("this model") names what the known names belong to; with it, they are listed when short."""
        known = list(known)
        self.kind = kind
        self.name = name
        self.suggestions = closest(name, known)
        hint = f" Did you mean {', '.join(self.suggestions)}?" if self.suggestions else ""
        listed = ", ".join(sorted(known))
        # A model of a few styles names them all: the user learns what there is, not only what is near.
        head = f": {owner} has {listed}." if owner and known and len(listed) <= MAX_LISTED else "."
        super().__init__(f"unknown {kind} {name!r}{head}{hint}")


def closest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names nearest to `name`, best first (prefix matches count as near)."""
    known = list(known)
    lowered = name.lower()
    prefixed = [k for k in known if k.startswith(lowered[:3])] if len(lowered) >= 3 else []
    fuzzy = difflib.get_close_matches(lowered, known, n=n, cutoff=0.5)
    out: list[str] = []
    for k in fuzzy + prefixed:
        if k not in out:
            out.append(k)
    return out[:n]
