"""The table of chat commands: parse, permissions, `!help` and the README come from it; arguments are checked
before a cooldown is spent; a fault of ours is logged with its traceback and still answered.

The table's rules on literals; the dispatcher on a running concert (real Redis, real model and conductor) with
its own clock, so that "0.5 s after another viewer's request" is exact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from chat_rig import HAS_REDIS, playing, running_concert

from bot.chat.commands import (
    COMMANDS,
    COMMANDS_TABLE,
    MAX_LINE,
    Command,
    CommandError,
    Cooldown,
    Who,
    help_text,
    parse,
    readme_table,
)
from bot.chat.handlers import HANDLERS, ChatCommands, Reply, went_wrong
from bot.chat.message import ChatMessage
from config.errors import ConcertbotError

README = Path(__file__).resolve().parents[1] / "README.md"


# The table


def test_every_name_alias_and_kind_parses_to_its_command() -> None:
    for spec in COMMANDS_TABLE:
        if spec.kinds:
            for kind in spec.kinds:
                assert parse(f"!{kind.upper()} x") == Command(spec.name, (kind, "x"))
            assert parse(f"!{spec.name}") is None  # `!steer` is not typed; `!faster` is
        for word in (spec.name, *spec.aliases) if not spec.kinds else ():
            assert parse(f"!{word} a b") == Command(spec.name, ("a", "b"))
    assert parse("!commands") == Command("help", ())


def test_every_command_has_one_handler_and_requests_spend_the_request_cooldown() -> None:
    assert HANDLERS.keys() == COMMANDS.keys()
    words = [w for s in COMMANDS_TABLE for w in (*s.kinds, s.name, *s.aliases)]
    assert len(words) == len(set(words))  # no word names two commands
    assert {s.name for s in COMMANDS_TABLE if s.cooldown is Cooldown.REQUEST} == {"compose", "replay"}


def test_who_may_use_a_command() -> None:
    viewer = ChatMessage("1", "ann", "ann", "!x")
    mod = ChatMessage("2", "mo", "mo", "!x", is_moderator=True)
    owner = ChatMessage("3", "bo", "bo", "!x", is_broadcaster=True)
    assert [Who.EVERYONE.allows(m) for m in (viewer, mod, owner)] == [True, True, True]
    assert [Who.MODERATOR.allows(m) for m in (viewer, mod, owner)] == [False, True, True]
    assert parse("!skip") is not None and parse("!skip").for_moderators  # type: ignore[union-attr]


def test_help_names_what_everyone_may_type_and_nothing_else() -> None:
    text = help_text()
    assert len(text) < MAX_LINE
    for spec in COMMANDS_TABLE:
        named = [spec.name] if not spec.kinds else [k for k in spec.kinds if k != "drop"]
        for word in named:
            shown = f"!{word}" in text
            assert shown == (spec.who is Who.EVERYONE and spec.name != "help"), word


def test_the_readme_table_is_the_command_table() -> None:
    # Regenerate with: python -c "from bot.chat.commands import readme_table; print(readme_table())"
    assert readme_table() in README.read_text(encoding="utf-8")


def test_command_errors_share_the_project_root() -> None:
    assert issubclass(CommandError, ConcertbotError)


# The dispatcher on a running concert

pytestmark_redis = pytest.mark.skipif(not HAS_REDIS, reason="needs the Redis server on 127.0.0.1:6379")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def line(login: str, text: str) -> ChatMessage:
    return ChatMessage(f"local:{login}", login, login, text, message_id=f"m-{login}-{text}")


def texts(replies: list[Reply]) -> list[str]:
    return [r.text for r in replies]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytestmark_redis
@pytest.mark.anyio
async def test_a_typo_right_after_another_request_is_told_what_is_wrong_not_to_wait(tmp_path: Path) -> None:
    async with running_concert(tmp_path, global_cooldown_seconds=2.0) as concert:
        await playing(concert)  # one long piece plays throughout: the requests below stay queued
        clock = Clock(1000.0)
        commands = ChatCommands(concert.settings, concert.conductor, concert.store, clock=clock)
        assert "#1 in the queue" in texts(await commands.handle(line("ann", "!compose bach violin")))[0]
        clock.now += 0.5
        (typo,) = texts(await commands.handle(line("bob", "!compose bahc")))
        assert "Did you mean bach" in typo and "try again" not in typo
        (tempo,) = texts(await commands.handle(line("cy", "!replay ²")))
        assert tempo == "'²' is not a seed; seeds are numbers like 123456789"
        # A good request at the same moment waits for the global gap: the cooldown is still there ...
        (wait,) = texts(await commands.handle(line("dee", "!compose irish")))
        assert wait == "one request at a time: try again in 2 s"
        # ... and the typo spent none of bob's: once the gap is over, his corrected request is queued.
        clock.now += 2.0
        (queued,) = texts(await commands.handle(line("bob", "!compose bach")))
        assert "#2 in the queue" in queued
        assert [e.request.login for e in await concert.store.queue()] == ["ann", "bob"]


@pytestmark_redis
@pytest.mark.anyio
async def test_a_fault_of_ours_is_logged_once_and_the_viewer_still_gets_a_short_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: ChatCommands, msg: ChatMessage, args: tuple[str, ...], now: float) -> list[Reply]:
        raise KeyError("a bug in !np")

    async with running_concert(tmp_path) as concert:
        await playing(concert)
        clock = Clock(1000.0)
        commands = ChatCommands(concert.settings, concert.conductor, concert.store, clock=clock)
        monkeypatch.setitem(HANDLERS, "np", broken)
        caplog.set_level(logging.ERROR, logger="bot.chat.handlers")
        (reply,) = await commands.handle(line("ann", "!np"))
        assert reply.text == went_wrong("np") == "something went wrong with !np; the concert goes on"
        assert reply.mention == "ann"
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(failures) == 1 and failures[0].exc_info is not None
        assert failures[0].exc_info[0] is KeyError
        # Rate-limited like any error reply: ann asking again at once is logged, not answered again.
        clock.now += 1.0
        assert await commands.handle(line("ann", "!nowplaying")) == []
        assert len([r for r in caplog.records if r.exc_info]) == 2
        # The other commands, and the concert, go on.
        assert "in the queue" in texts(await commands.handle(line("ann", "!queue")))[0]
        assert concert.conductor.current is not None
