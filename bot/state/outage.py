"""One log line when a retrying loop starts failing and one when it works again, not one per try.

A loop that polls Redis every second would otherwise write a warning (or a traceback) a second for as long as
an outage lasts. `StoreUnavailable` is expected weather and gets a warning without a traceback; anything else is
a bug or a broken part and gets its traceback, once per run of failures of its kind.
"""

from __future__ import annotations

import asyncio
import logging

from bot.state.store import StoreUnavailable


def stop_if_cancelled() -> None:
    """Raise CancelledError if the running task was cancelled and the cancel went missing on the way.

    redis-py wraps its socket writes in asyncio.wait_for, which on Python 3.11 drops a cancel that arrives as
    the write finishes (CPython gh-86296): the call returns normally, the task stays marked as cancelling, and
    a loop that goes round again never stops, so Ctrl-C hangs. A loop that talks to Redis calls this each turn.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class FailureLog:
    """Says "<what> paused: <why>; retrying" once when a loop starts failing, "<what> resumed" once it works."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failing: type[Exception] | None = None  # the kind of failure said last; None while it works

    def failed(self, exc: Exception) -> None:
        """One try failed with `exc`; logged only if the loop was working, or failed in another way."""
        if type(exc) is self.failing:
            return
        if isinstance(exc, StoreUnavailable):
            self.log.warning("%s paused: %s; retrying", self.what, exc)
        else:
            self.log.error("%s failed; retrying", self.what, exc_info=exc)
        self.failing = type(exc)

    def worked(self) -> None:
        """One try worked; logged only if the ones before it failed."""
        if self.failing is not None:
            self.log.info("%s resumed", self.what)
            self.failing = None
