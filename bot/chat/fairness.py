"""Cooldowns and the count of recent chatters: small pure state, the clock passed in."""

from __future__ import annotations

from collections import OrderedDict


class Cooldowns:
    """Per-viewer and global waits between requests, and at most one error reply per viewer per window."""

    def __init__(self, viewer_seconds: float, global_seconds: float, error_seconds: float) -> None:
        self.viewer_seconds = viewer_seconds
        self.global_seconds = global_seconds
        self.error_seconds = error_seconds
        self._last_request: dict[str, float] = {}
        self._last_any = float("-inf")
        self._last_error: dict[str, float] = {}

    def request_wait(self, user_id: str, now: float, exempt: bool = False) -> float:
        """Seconds the viewer must still wait before another request; 0 when they may ask now."""
        if exempt:
            return 0.0
        mine = self._last_request.get(user_id, float("-inf")) + self.viewer_seconds - now
        everyone = self._last_any + self.global_seconds - now
        return max(0.0, mine, everyone)

    def requested(self, user_id: str, now: float, exempt: bool = False) -> None:
        self._last_request[user_id] = now
        if not exempt:  # a moderator's or a redemption's request does not hold up the viewers
            self._last_any = now
        self._forget(now)

    def may_reply_error(self, user_id: str, now: float) -> bool:
        """Whether a viewer's mistake gets an answer now; a spammer gets one reply per window, not one each."""
        if now - self._last_error.get(user_id, float("-inf")) < self.error_seconds:
            return False
        self._last_error[user_id] = now
        return True

    def _forget(self, now: float) -> None:
        # Memory stays bounded over a 48-hour stream: drop viewers whose cooldown is long over.
        if len(self._last_request) > 10_000:
            horizon = max(self.viewer_seconds, self.error_seconds)
            self._last_request = {u: t for u, t in self._last_request.items() if now - t < horizon}
            self._last_error = {u: t for u, t in self._last_error.items() if now - t < horizon}


class RecentChatters:
    """Who chatted in the last `window` seconds: the electorate for !voteskip."""

    def __init__(self, window: float) -> None:
        self.window = window
        # Oldest message first, so forgetting stops at the first viewer still inside the window: constant work
        # per message however many chat (rebuilding a dict of 10,000 raiders at every line took 7 ms a line).
        self._seen: OrderedDict[str, float] = OrderedDict()

    def saw(self, user_id: str, now: float) -> None:
        self._seen[user_id] = now
        self._seen.move_to_end(user_id)
        self._forget(now)

    def count(self, now: float) -> int:
        self._forget(now)
        return len(self._seen)

    def _forget(self, now: float) -> None:
        while self._seen:
            user_id, at = next(iter(self._seen.items()))
            if now - at < self.window:
                return
            del self._seen[user_id]
