"""Chat votes on steering the piece that plays: one window per steer, passed by a share of the recent chatters.

The first `!faster` opens a window (15 s by default); it passes the moment enough viewers have voted for it
(the share of recent chatters `!voteskip` uses, at least a minimum), and runs out otherwise. A moderator's or
the broadcaster's steer passes at once. After a steer passes, chat waits a cooldown before opening another
window, so the music is not pulled back and forth bar by bar. Pure: the clock is an argument, as in the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class VoteStatus(Enum):
    PASSED = "passed"
    COUNTED = "counted"
    ALREADY = "already"  # this viewer already voted for this steer
    COOLING = "cooling"  # a steer passed moments ago; `seconds` says how long until another vote opens


@dataclass(frozen=True)
class VoteResult:
    status: VoteStatus
    votes: int = 0
    needed: int = 0
    seconds: float = 0.0  # left in the window, or in the cooldown


@dataclass(frozen=True)
class OpenVote:
    """A window still open, for chat and the overlay's countdown."""

    kind: str
    arg: str
    votes: int
    needed: int
    closes_at: float  # on the votes' clock

    def said(self) -> str:
        return f"!{self.kind} {self.arg}".strip()


@dataclass
class _Window:
    opened_at: float
    needed: int  # as of the latest vote: the chat may have grown since the window opened
    voters: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class SteerRules:
    window_seconds: float = 15.0
    share: float = 0.25  # of the viewers who chatted recently
    minimum: int = 2
    cooldown_seconds: float = 10.0


class SteerVotes:
    """The open steering votes of the piece that plays."""

    def __init__(self, rules: SteerRules) -> None:
        self.rules = rules
        self.piece: int | None = None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._passed_at: float | None = None

    def needed(self, active_chatters: int) -> int:
        return max(self.rules.minimum, math.ceil(self.rules.share * active_chatters))

    def vote(
        self,
        piece: int,
        user_id: str,
        kind: str,
        arg: str,
        active_chatters: int,
        now: float,
        privileged: bool = False,
    ) -> VoteResult:
        """Count `user_id`'s vote for the steer (`kind`, `arg`) of `piece`; a new piece starts afresh."""
        self._for(piece)
        self.expire(now)
        needed = self.needed(active_chatters)
        if privileged:
            self._windows.pop((kind, arg), None)
            self._passed_at = now
            return VoteResult(VoteStatus.PASSED, 1, 1)
        window = self._windows.get((kind, arg))
        if window is None:
            wait = self._cooldown_left(now)
            if wait > 0:
                return VoteResult(VoteStatus.COOLING, 0, needed, wait)
            window = self._windows[(kind, arg)] = _Window(now, needed)
        window.needed = needed
        left = window.opened_at + self.rules.window_seconds - now
        if user_id in window.voters:
            return VoteResult(VoteStatus.ALREADY, len(window.voters), needed, left)
        window.voters.add(user_id)
        if len(window.voters) >= needed:
            del self._windows[(kind, arg)]
            self._passed_at = now
            return VoteResult(VoteStatus.PASSED, len(window.voters), needed)
        return VoteResult(VoteStatus.COUNTED, len(window.voters), needed, left)

    def expire(self, now: float) -> list[OpenVote]:
        """Close the windows that ran out unmet; returns them (votes against what they needed)."""
        gone = []
        for (kind, arg), window in list(self._windows.items()):
            closes = window.opened_at + self.rules.window_seconds
            if now >= closes:
                del self._windows[(kind, arg)]
                gone.append(OpenVote(kind, arg, len(window.voters), window.needed, closes))
        return gone

    def open(self, now: float) -> list[OpenVote]:
        """The windows open at `now`, the one closing first first."""
        window = self.rules.window_seconds
        out = [
            OpenVote(kind, arg, len(w.voters), w.needed, w.opened_at + window)
            for (kind, arg), w in self._windows.items()
            if now < w.opened_at + window
        ]
        return sorted(out, key=lambda v: v.closes_at)

    def drop(self, kind: str, arg: str = "") -> None:
        """Forget a window (its steer can no longer be followed)."""
        self._windows.pop((kind, arg), None)

    def reset(self) -> None:
        """The piece ended: its votes close with it."""
        self.piece, self._windows, self._passed_at = None, {}, None

    def _for(self, piece: int) -> None:
        if piece != self.piece:
            self.piece, self._windows, self._passed_at = piece, {}, None

    def _cooldown_left(self, now: float) -> float:
        if self._passed_at is None:
            return 0.0
        return max(0.0, self._passed_at + self.rules.cooldown_seconds - now)


__all__ = ["OpenVote", "SteerRules", "SteerVotes", "VoteResult", "VoteStatus"]
