"""The real twitchio client, through bot.chat.twitch, against a fake Twitch that speaks Twitch's protocols."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fake_twitch import REDEMPTION, FakeTwitch

from bot.chat.message import ChatMessage
from bot.chat.sendqueue import Importance, Sender, SendQueue
from bot.chat.twitch import TwitchChat, TwitchError
from config.errors import ConfigError
from config.twitch import TwitchSettings, twitch_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch() as server:
        yield server


class Inbox:
    """Collects what TwitchChat hands to on_message."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.queue: asyncio.Queue[ChatMessage] = asyncio.Queue()
        self.fail_on = fail_on

    async def __call__(self, message: ChatMessage) -> None:
        await self.queue.put(message)
        if message.text == self.fail_on:
            raise RuntimeError("handler broke")

    async def next(self, timeout: float = 5.0) -> ChatMessage:
        return await asyncio.wait_for(self.queue.get(), timeout)


@asynccontextmanager
async def joined(
    fake: FakeTwitch, inbox: Inbox | None = None, /, **overrides: Any
) -> AsyncIterator[TwitchChat]:
    async with TwitchChat(fake.settings(**overrides), inbox or Inbox()) as chat:
        yield chat


async def test_chat_lines_arrive_as_plain_messages_with_their_badges(fake: FakeTwitch) -> None:
    inbox = Inbox()
    async with joined(fake, inbox):
        said = await fake.say("ada", "!compose bach violin")
        await fake.say("mo", "!skip", moderator=True)
        await fake.say("composer", "!stop")

        ada = await inbox.next()
        assert ada == ChatMessage(
            user_id=fake.user("ada").id,
            login="ada",
            display_name="Ada",
            text="!compose bach violin",
            message_id=said,
            is_moderator=False,
            is_broadcaster=False,
            reward_id=None,
        )
        mod, owner = await inbox.next(), await inbox.next()
        assert (mod.login, mod.is_moderator, mod.is_broadcaster) == ("mo", True, False)
        assert (owner.login, owner.is_broadcaster, owner.is_privileged) == ("composer", True, True)


async def test_a_reply_reaches_helix_from_the_bot_and_its_echo_is_not_passed_on(fake: FakeTwitch) -> None:
    inbox = Inbox()
    async with joined(fake, inbox) as chat:
        asked = await fake.say("ada", "!queue")
        assert (await inbox.next()).text == "!queue"

        sent_id = await chat.send("@ada the queue is empty", reply_to=asked)
        posted = await fake.wait_for_sent(lambda m: m.message_id == sent_id)
        assert (posted.text, posted.reply_to, posted.sender_id) == (
            "@ada the queue is empty",
            asked,
            fake.bot.id,
        )
        assert posted.is_sent and posted.app_token

        # The fake echoes the bot's line before this next one, so an echo passed on would come first.
        await fake.say("ada", "thanks")
        assert (await inbox.next()).text == "thanks"
        assert not chat.bot_is_moderator


async def test_the_bot_learns_from_its_echo_that_it_is_a_moderator() -> None:
    inbox = Inbox()
    async with FakeTwitch(bot_is_moderator=True) as fake, joined(fake, inbox) as chat:
        assert not chat.bot_is_moderator
        await chat.send("hello")
        await fake.say("ada", "hi")
        assert (await inbox.next()).text == "hi"  # notifications are read in order: the echo came first
        assert chat.bot_is_moderator


@pytest.mark.parametrize("close_code", [None, 4000], ids=["reset", "close-frame"])
async def test_after_a_dropped_socket_the_bot_resubscribes_and_still_hears_chat(
    fake: FakeTwitch, close_code: int | None
) -> None:
    inbox = Inbox()
    async with joined(fake, inbox):
        (old,) = await fake.drop_socket(close_code)
        await fake.say("ada", "still there?")  # waits for the bot's new subscription
        assert (await inbox.next()).text == "still there?"

        subs = fake.subscriptions()
        assert {s["transport"]["session_id"] for s in subs if s["status"] == "websocket_disconnected"} == {old}
        live = [s for s in subs if s["status"] == "enabled" and s["type"] == "channel.chat.message"]
        (new,) = fake.sessions()
        assert new != old and [s["transport"]["session_id"] for s in live] == [new]


async def test_on_session_reconnect_the_bot_moves_without_resubscribing(fake: FakeTwitch) -> None:
    inbox = Inbox()
    async with joined(fake, inbox):
        (old,) = fake.sessions()
        posts = fake.subscription_posts
        new = await fake.send_reconnect()
        assert fake.sessions() == [new] and new != old

        await fake.say("ada", "moved?")
        assert (await inbox.next()).text == "moved?"
        assert fake.subscription_posts == posts  # Twitch carries subscriptions over; re-posting would 409


async def test_a_redemption_arrives_once_with_its_reward_when_the_bot_is_the_broadcaster() -> None:
    inbox = Inbox()
    async with FakeTwitch(channel="composer", bot="composer") as fake, joined(fake, inbox) as chat:
        assert chat.redemptions
        await fake.redeem("ada", "!compose bach violin", reward_id="r-compose")
        got = await inbox.next()
        assert (got.login, got.text, got.reward_id, got.message_id) == (
            "ada",
            "!compose bach violin",
            "r-compose",
            "",
        )

        # The chat line twin of the redemption is not passed on a second time, nor is the bot's own echo,
        # but the broadcaster typing by hand on the same account is heard.
        await chat.send("@ada your piece is #1")
        await fake.say("composer", "!skip")
        owner = await inbox.next()
        assert (owner.text, owner.is_broadcaster, owner.reward_id) == ("!skip", True, None)


async def test_without_the_broadcasters_token_redemptions_come_through_chat(
    fake: FakeTwitch, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    with caplog.at_level(logging.WARNING, logger="bot.chat.twitch"):
        async with joined(fake, inbox) as chat:
            assert not chat.redemptions
            assert "redemptions arrive only as chat lines" in caplog.text
            assert not [s for s in fake.subscriptions() if s["type"] == REDEMPTION]

            chat_id = await fake.redeem("ada", "!compose jazz piano", reward_id="r-compose")
            got = await inbox.next()
            assert (got.text, got.reward_id) == ("!compose jazz piano", "r-compose")
            assert got.message_id and got.message_id != chat_id  # the chat line's id, which can be replied to


async def test_a_failing_handler_is_logged_with_its_traceback_and_chat_goes_on(
    fake: FakeTwitch, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox(fail_on="boom")
    async with joined(fake, inbox):
        await fake.say("ada", "boom")
        await fake.say("ada", "after")
        assert [(await inbox.next()).text, (await inbox.next()).text] == ["boom", "after"]
    failures = [r for r in caplog.records if r.name == "bot.chat.twitch" and r.exc_info]
    assert len(failures) == 1 and "handler broke" in str(failures[0].exc_info[1])  # type: ignore[index]


async def test_the_sender_paces_a_burst_so_twitch_drops_nothing() -> None:
    window = 0.6
    async with FakeTwitch(rate_window=window) as fake, joined(fake) as chat:
        async with Sender(SendQueue(window=window), chat.send) as sender:
            for i in range(25):
                sender.say(f"line {i}", Importance.INFO)
            await fake.wait_for_sent(lambda m: m.text == "line 24", timeout=5 * window)
        assert [m.text for m in fake.sent] == [f"line {i}" for i in range(25)]
        assert all(m.is_sent for m in fake.sent)
        times = [m.at for m in fake.sent]
        assert max(sum(t <= s < t + window for s in times) for t in times) <= 20


async def test_unpaced_sending_gets_lines_dropped_and_send_says_so() -> None:
    # The control for the test above: the fake does enforce the limit, and send reports the drop.
    async with FakeTwitch(rate_window=60.0) as fake, joined(fake) as chat:
        for i in range(20):
            await chat.send(f"line {i}")
        with pytest.raises(TwitchError, match="msg_rate_limit"):
            await chat.send("one too many")


async def test_no_secret_reaches_logs_errors_or_reprs(
    fake: FakeTwitch, caplog: pytest.LogCaptureFixture
) -> None:
    errors = []
    with caplog.at_level(logging.DEBUG):
        async with joined(fake) as chat:
            said = await fake.say("ada", "hi")
            await chat.send("hello", reply_to=said)
            await fake.drop_socket()
            await fake.say("ada", "again")
        refresh = fake.bot_token.refresh or ""
        bad_token = {"bot_token": "0" + fake.bot_token.value, "bot_refresh_token": "0" + refresh}
        for bad in ({"client_secret": "wrong" + fake.client_secret}, bad_token):
            with pytest.raises(ConfigError) as caught:
                async with joined(fake, **bad):
                    pass
            errors.append(str(caught.value))
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
    shown = caplog.text + "\n".join(errors) + repr(fake.settings()) + str(fake.settings())
    assert "TWITCH_CLIENT_SECRET" in errors[0] and "TWITCH_BOT_TOKEN" in errors[1]
    for secret in fake.secrets():
        assert secret not in shown
    assert 'Received "notification"' in caplog.text  # twitchio's debug logging was really captured


async def test_a_dead_bot_token_is_renewed_with_the_refresh_token(fake: FakeTwitch) -> None:
    inbox = Inbox()
    async with joined(fake, inbox, bot_token="expired" + "0" * 23):
        await fake.say("ada", "hi")
        assert (await inbox.next()).text == "hi"


async def test_wrong_credentials_and_channel_are_clear_config_errors(fake: FakeTwitch) -> None:
    stranger = fake.user_token("stranger")
    cases: list[tuple[dict[str, str], str]] = [
        ({"client_id": "nobody"}, "TWITCH_CLIENT_ID"),
        ({"bot_token": stranger}, "belongs to user stranger"),
        ({"bot_token": fake.user_token("concertbot", scopes=("user:read:chat",))}, "user:write:chat, user:bot"),
        ({"channel": "nosuchchannel"}, "TWITCH_CHANNEL='nosuchchannel'"),
    ]
    for overrides, says in cases:
        with pytest.raises(ConfigError, match=says):
            async with joined(fake, **overrides):
                pass


async def test_an_unreachable_twitch_is_a_twitch_error(fake: FakeTwitch) -> None:
    with pytest.raises(TwitchError, match="unreachable"):
        async with joined(fake, id_url="http://127.0.0.1:9/"):
            pass


# --- settings -----------------------------------------------------------------------------------------------

FULL = {
    "TWITCH_CLIENT_ID": "abc",
    "TWITCH_CLIENT_SECRET": "s3cr3t-client",
    "TWITCH_BOT_ID": "1234",
    "TWITCH_CHANNEL": "#Composer",
    "TWITCH_BOT_TOKEN": "s3cr3t-token",
}


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name in [*FULL, "TWITCH_BOT_REFRESH_TOKEN", "TWITCH_HELIX_URL", "TWITCH_ID_URL", "TWITCH_EVENTSUB_URL"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_no_credentials_means_local_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {"TWITCH_CLIENT_ID": ""})
    assert twitch_settings() is None


def test_full_credentials_are_read_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, FULL)
    settings = twitch_settings()
    assert isinstance(settings, TwitchSettings)
    assert (settings.channel, settings.bot_id, settings.helix_url) == (
        "composer",
        "1234",
        "https://api.twitch.tv/helix/",
    )
    assert settings.client_secret.get_secret_value() == "s3cr3t-client"
    assert "s3cr3t" not in repr(settings) + str(settings)


def test_partial_credentials_name_what_is_missing_without_values(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {k: v for k, v in FULL.items() if k not in ("TWITCH_BOT_ID", "TWITCH_BOT_TOKEN")})
    with pytest.raises(ConfigError) as caught:
        twitch_settings()
    message = str(caught.value)
    assert "TWITCH_BOT_ID, TWITCH_BOT_TOKEN must be set" in message
    assert "TWITCH_CLIENT_ID" not in message and "s3cr3t" not in message


def test_bad_values_are_quoted_but_secrets_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, FULL | {"TWITCH_BOT_ID": "concertbot", "TWITCH_HELIX_URL": "api.twitch.tv"})
    with pytest.raises(ConfigError) as caught:
        twitch_settings()
    message = str(caught.value)
    assert "TWITCH_BOT_ID = 'concertbot'" in message and "TWITCH_HELIX_URL = 'api.twitch.tv'" in message
    assert "s3cr3t" not in message
