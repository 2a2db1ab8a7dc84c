"""Chat parsing, cooldowns and the send budget: pure functions on literals, and garbage that must not raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.chat.commands import (
    Command,
    CommandError,
    compose_args,
    login_arg,
    on_off_arg,
    parse,
    period_arg,
    seed_arg,
)
from bot.chat.fairness import Cooldowns, RecentChatters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!compose bach violin cello", Command("compose", ("bach", "violin", "cello"))),
        ("  !REQUEST Irish  flute ", Command("compose", ("Irish", "flute"))),
        ("!encore 123", Command("replay", ("123",))),
        ("!skip", Command("skip", ())),
        ("hello chat", None),
        ("!uptime", None),  # another bot's command: not ours, no reply
        ("!", None),
        ("!compose " + "x" * 600, None),  # longer than Twitch allows: ignored
    ],
)
def test_parse(text, expected):
    assert parse(text) == expected


def test_only_moderator_commands_are_marked_as_such():
    assert parse("!skip").for_moderators and parse("!block x").for_moderators
    assert not parse("!vote").for_moderators and not parse("!compose bach").for_moderators


def test_compose_args_take_style_instruments_and_tempo_in_any_order():
    args = compose_args(("Bach", "violin", "96bpm", "Cello"))
    assert (args.style, args.instruments, args.tempo) == ("bach", ("violin", "cello"), 96.0)
    assert compose_args(("irish",)).instruments == () and compose_args(("irish",)).tempo is None


def test_compose_args_take_a_key_after_in():
    args = compose_args(("irish", "violin", "in", "D", "120"))
    assert (args.instruments, args.tempo, args.key) == (("violin",), 120.0, "D")
    assert compose_args(("bach", "in", "F#", "Minor", "cello")).key == "F# minor"
    assert compose_args(("bach", "cello", "in", "bbm")).instruments == ("cello",)
    assert compose_args(("bach",)).key is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say which style"),
        (("bach", "90", "100"), "one tempo"),
        (("bach", "-5"), "not a tempo"),
        (("bach", "in"), "name one key"),
        (("bach", "in", "D", "in", "G"), "name one key"),
    ],
)
def test_compose_mistakes_get_a_short_reason(args, message):
    with pytest.raises(CommandError, match=message):
        compose_args(args)


def test_seeds_periods_logins_and_switches():
    assert seed_arg(("123456789",)) == 123456789 and seed_arg(("#42",)) == 42
    for bad in ((), ("abc",), ("1" * 20,), (str(2**63),), ("12e3",)):
        with pytest.raises(CommandError):
            seed_arg(bad)
    # Characters that str.isdigit takes but int() does not, and other scripts' digits: not seeds the bot prints.
    for bad in ("⒐", "²", "1²", "#⑨", "١٢٣", "１２３"):
        with pytest.raises(CommandError, match="is not a seed"):
            seed_arg((bad,))
    assert period_arg(()) == "stream" and period_arg(("WEEK",)) == "week"
    with pytest.raises(CommandError):
        period_arg(("year",))
    assert login_arg(("@SomeOne",)) == "someone"
    with pytest.raises(CommandError):
        login_arg(("no way",))
    with pytest.raises(CommandError):
        login_arg(("a*b",))
    assert on_off_arg(("ON",)) is True and on_off_arg(("off",)) is False


@given(st.text(max_size=700))
def test_nothing_typed_raises_anything_but_a_command_error(text):
    command = parse(text)
    if command is None:
        return
    for check in (compose_args, seed_arg, period_arg, login_arg, on_off_arg):
        try:
            check(command.args)
        except CommandError as exc:
            assert 0 < len(str(exc)) <= 120  # a reply, not an essay


def test_cooldowns_per_viewer_and_global_with_exemptions():
    c = Cooldowns(viewer_seconds=30, global_seconds=2, error_seconds=20)
    assert c.request_wait("a", now=100.0) == 0
    c.requested("a", 100.0)
    assert c.request_wait("a", 110.0) == 20
    assert c.request_wait("b", 101.0) == 1  # the global gap
    assert c.request_wait("b", 102.5) == 0
    assert c.request_wait("a", 110.0, exempt=True) == 0
    c.requested("mod", 200.0, exempt=True)
    assert c.request_wait("b", 200.5) == 0  # a moderator's request does not hold viewers up


def test_one_error_reply_per_viewer_per_window():
    c = Cooldowns(30, 2, error_seconds=20)
    assert c.may_reply_error("a", 0.0)
    assert not c.may_reply_error("a", 10.0)
    assert c.may_reply_error("b", 10.0)
    assert c.may_reply_error("a", 20.0)


def test_recent_chatters_forget_after_the_window():
    r = RecentChatters(window=60)
    r.saw("a", 0.0)
    r.saw("b", 30.0)
    r.saw("a", 50.0)
    assert r.count(55.0) == 2
    assert r.count(95.0) == 1
    assert r.count(200.0) == 0
