"""`concertbot twitch login` / `twitch status` and the stored token: the real CLI against the fake Twitch over
real HTTP, and the run path through the real twitchio client (bot.chat.twitch) with the stored token."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import Result
from fake_twitch import FakeTwitch
from typer.testing import CliRunner

from bot.chat.message import ChatMessage
from bot.chat.twitch import TwitchChat
from bot.chat.twitch_auth import (
    SLOW_DOWN_STEP,
    DeviceCode,
    Grant,
    StoredToken,
    TwitchLoginError,
    device_login,
    load_token,
    read_token_answer,
    renewed,
    run_settings,
    save_token,
    token_path,
)
from bot.cli import app
from config.errors import ConfigError
from config.twitch import LOGIN_SCOPES

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
runner = CliRunner()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    # Registered as a public client, as the device code flow wants it: no secret, no app token.
    async with FakeTwitch(public_client=True) as server:
        yield server


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder of its own, and an environment holding no Twitch setting but what a test sets."""
    import os

    for name in [n for n in os.environ if n.startswith("TWITCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONCERTBOT_PATHS__DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def point_at(fake: FakeTwitch, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("TWITCH_ID_URL", f"{fake.url}/")
    monkeypatch.setenv("TWITCH_HELIX_URL", f"{fake.url}/helix/")
    monkeypatch.setenv("TWITCH_EVENTSUB_URL", f"ws://127.0.0.1:{fake.port}/ws")
    monkeypatch.setenv("TWITCH_CLIENT_ID", fake.client_id)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


async def cli(*args: str) -> Result:
    """Run `concertbot <args>` in a thread, so that the fake keeps answering on this loop meanwhile."""
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def login(fake: FakeTwitch, answer: str, login_as: str = "concertbot") -> Result:
    """`concertbot twitch login`, while the streamer gives `answer` at twitch.tv/activate."""
    running = asyncio.create_task(cli("twitch", "login"))
    code = await fake.wait_for_device_code()
    assert code.scopes == LOGIN_SCOPES
    {
        "approve": lambda c: fake.approve_device(c, login_as),
        "deny": fake.deny_device,
        "expire": fake.expire_device,
    }[answer](code.user_code)
    return await running


def shown(result: Result) -> str:
    return result.stdout + result.stderr


def assert_no_secret(fake: FakeTwitch, text: str) -> None:
    for secret in fake.secrets():
        assert secret not in text


# --- login ----------------------------------------------------------------------------------------------------


async def test_approved_login_writes_a_private_token_file_and_prints_no_token(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(fake, monkeypatch)
    result = await login(fake, "approve")

    assert result.exit_code == 0, shown(result)
    code = fake.device_codes[0]
    assert code.user_code in result.stdout and "twitch.tv/activate" in result.stdout
    assert "logged in as concertbot" in result.stdout
    path = token_path(data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = load_token(path)
    assert stored is not None
    assert (stored.login, stored.user_id, stored.client_id) == ("concertbot", fake.bot.id, fake.client_id)
    assert fake.token_named(stored.access_token) == (fake.bot.id, LOGIN_SCOPES)
    assert code.polls >= 1  # it asked for the token, and was told to wait, at least once
    assert_no_secret(fake, shown(result) + repr(stored))
    assert not [p for p in data_dir.iterdir() if p.name != path.name]  # no temp file left behind


@pytest.mark.parametrize(
    ("answer", "says"),
    [("deny", "you declined the login"), ("expire", "the code expired")],
)
async def test_a_declined_or_expired_code_is_one_line_and_exit_1(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch, answer: str, says: str
) -> None:
    point_at(fake, monkeypatch)
    result = await login(fake, answer)

    assert result.exit_code == 1
    error = result.stderr.strip()
    assert says in error and "concertbot twitch login" in error and "\n" not in error
    assert "Traceback" not in shown(result)
    assert not token_path(data_dir).exists()


async def test_login_without_a_client_id_says_where_to_get_one(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(fake, monkeypatch)
    monkeypatch.delenv("TWITCH_CLIENT_ID")
    result = await cli("twitch", "login")
    assert result.exit_code == 2
    assert "dev.twitch.tv" in result.stderr and "TWITCH_CLIENT_ID" in result.stderr
    assert not fake.device_codes


async def test_an_unknown_client_id_and_an_unreachable_twitch_are_one_line(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(fake, monkeypatch, TWITCH_CLIENT_ID="nobody")
    refused = await cli("twitch", "login")
    point_at(fake, monkeypatch, TWITCH_ID_URL="http://127.0.0.1:9/")
    unreachable = await cli("twitch", "login")
    assert (refused.exit_code, unreachable.exit_code) == (1, 1)
    assert "invalid client" in refused.stderr and "could not reach http://127.0.0.1:9/" in unreachable.stderr
    assert "Traceback" not in shown(refused) + shown(unreachable)


def test_each_answer_to_a_poll_means_what_rfc_8628_and_twitch_say() -> None:
    pending = {"status": 400, "message": "authorization_pending"}
    assert read_token_answer(400, pending, 5.0) == 5.0
    assert read_token_answer(400, {"error": "slow_down"}, 5.0) == 5.0 + SLOW_DOWN_STEP
    granted = read_token_answer(
        200, {"access_token": "a", "refresh_token": "r", "expires_in": 60, "scope": []}, 5
    )
    assert isinstance(granted, Grant) and granted.expires_in == 60
    for body, says in [
        ({"message": "access_denied"}, "declined"),
        ({"error": "access_denied"}, "declined"),
        ({"message": "invalid device code"}, "expired"),
        ({"error": "expired_token"}, "expired"),
        ({"message": "invalid client"}, "invalid client"),
    ]:
        with pytest.raises(TwitchLoginError, match=says):
            read_token_answer(400, body, 5.0)


async def test_polling_waits_the_interval_twitch_asks_for_and_longer_after_slow_down(fake: FakeTwitch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the streamer acts while the client waits
        waits.append(seconds)
        code = fake.device_codes[-1]
        if len(waits) == 1:
            fake.slow_down_device(code.user_code)
        elif len(waits) == 3:
            fake.approve_device(code.user_code)

    shown: list[DeviceCode] = []
    async with aiohttp.ClientSession() as session:
        token = await device_login(
            session, f"{fake.url}/", fake.client_id, LOGIN_SCOPES, shown.append, sleep=sleep
        )
    interval = fake.device_interval
    assert waits == [interval, interval + SLOW_DOWN_STEP, interval + SLOW_DOWN_STEP]
    assert fake.device_codes[-1].polls == 3 and [c.user_code for c in shown] == [
        fake.device_codes[-1].user_code
    ]
    assert token.login == "concertbot"


async def test_the_code_runs_out_on_our_clock_too(fake: FakeTwitch) -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += 1000.0  # Twitch's codes last 1800 s

    async with aiohttp.ClientSession() as session:
        with pytest.raises(TwitchLoginError, match="the code expired"):
            await device_login(
                session,
                f"{fake.url}/",
                fake.client_id,
                LOGIN_SCOPES,
                lambda c: None,
                sleep=sleep,
                clock=lambda: now[0],
            )
    assert fake.device_codes[-1].polls == 1  # asked once at 1000 s, not again after 1800 s


def test_saving_replaces_the_file_atomically_at_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "twitch-token.json"
    path.write_text("an older, world-readable file")
    path.chmod(0o644)
    token = StoredToken("cid", "1001", "concertbot", ("user:bot",), 1e9, "access-secret", "refresh-secret")
    save_token(path, token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token(path) == token
    assert "secret" not in repr(token)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a Twitch token file"):
        load_token(path)
    assert load_token(tmp_path / "none.json") is None


def test_a_renewed_pair_is_written_back_with_its_expiry_only_for_the_files_account(tmp_path: Path) -> None:
    path = tmp_path / "twitch-token.json"
    save_token(path, StoredToken("cid", "1001", "concertbot", ("user:bot",), 1e9, "old-access", "old-refresh"))
    renewed(path, "2002", "other-access", "other-refresh", 3600, ["user:bot"], wall=lambda: 2e9)
    assert load_token(path) == StoredToken(  # another account's pair: the file stays as it was
        "cid", "1001", "concertbot", ("user:bot",), 1e9, "old-access", "old-refresh"
    )
    renewed(path, "1001", "new-access", "new-refresh", 3600, [], wall=lambda: 2e9)
    assert load_token(path) == StoredToken(
        "cid", "1001", "concertbot", ("user:bot",), 2e9 + 3600, "new-access", "new-refresh"
    )


# --- status ---------------------------------------------------------------------------------------------------


async def logged_in(
    fake: FakeTwitch, monkeypatch: pytest.MonkeyPatch, data_dir: Path, login_as: str = "concertbot"
) -> StoredToken:
    point_at(fake, monkeypatch)
    result = await login(fake, "approve", login_as)
    assert result.exit_code == 0, shown(result)
    stored = load_token(token_path(data_dir))
    assert stored is not None
    return stored


@pytest.mark.parametrize("moderator", [True, False])
async def test_status_names_the_account_scopes_expiry_and_moderation(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch, moderator: bool
) -> None:
    await logged_in(fake, monkeypatch, data_dir)
    if moderator:
        fake.moderators.add(fake.bot.id)
    monkeypatch.setenv("TWITCH_CHANNEL", "#Composer")
    result = await cli("twitch", "status")

    assert result.exit_code == 0, shown(result)
    out = result.stdout
    assert f"account: concertbot (user id {fake.bot.id})" in out
    assert "user:read:chat, user:write:chat, user:bot" in out and "expires in: 14400 s" in out
    assert f"moderator in #composer: {'yes' if moderator else 'no'}" in out
    assert_no_secret(fake, shown(result))


async def test_status_of_the_broadcasters_own_token_needs_no_moderation(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await logged_in(fake, monkeypatch, data_dir, login_as="composer")
    result = await cli("twitch", "status")
    assert result.exit_code == 0, shown(result)
    assert "moderator in #composer: broadcaster" in result.stdout


async def test_status_of_a_revoked_or_missing_token_exits_1_with_the_fix(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_at(fake, monkeypatch)
    missing = await cli("twitch", "status")
    stored = await logged_in(fake, monkeypatch, data_dir)
    fake.revoke(stored.access_token)
    revoked = await cli("twitch", "status")

    for result in (missing, revoked):
        assert result.exit_code == 1
        error = result.stderr.strip()
        assert "run `concertbot twitch login`" in error and "\n" not in error
        assert "Traceback" not in shown(result)
    assert "no Twitch token" in missing.stderr and "would not renew it" in revoked.stderr


async def test_status_renews_a_stored_token_that_ran_out_and_writes_it_back(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await logged_in(fake, monkeypatch, data_dir)
    fake.expire_token(old.access_token)
    result = await cli("twitch", "status")

    assert result.exit_code == 0, shown(result)
    assert "was renewed" in result.stdout
    new = load_token(token_path(data_dir))
    assert new is not None and new.access_token != old.access_token and new.refresh_token != old.refresh_token
    assert fake.token_named(new.access_token) == (fake.bot.id, LOGIN_SCOPES)
    assert stat.S_IMODE(token_path(data_dir).stat().st_mode) == 0o600


# --- run with the stored token --------------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChatMessage] = asyncio.Queue()

    async def __call__(self, message: ChatMessage) -> None:
        await self.queue.put(message)

    async def next(self) -> ChatMessage:
        return await asyncio.wait_for(self.queue.get(), 5.0)


async def test_run_takes_the_stored_token_when_the_environment_has_none(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await logged_in(fake, monkeypatch, data_dir)
    monkeypatch.delenv("TWITCH_CLIENT_ID")  # the stored login names its client id too
    monkeypatch.setenv("TWITCH_CHANNEL", "composer")
    settings = run_settings(data_dir)

    assert settings is not None
    assert settings.bot_token.get_secret_value() == stored.access_token
    assert (settings.bot_id, settings.client_id, settings.channel) == (fake.bot.id, fake.client_id, "composer")
    assert settings.client_secret.get_secret_value() == ""
    inbox = Inbox()
    async with TwitchChat(settings, inbox) as chat:
        said = await fake.say("ada", "!np")
        assert (await inbox.next()).text == "!np"
        await chat.send("nothing yet", reply_to=said)
    sent = await fake.wait_for_sent(lambda m: m.text == "nothing yet")
    # A public client has no app token: the bot's own token sent the line.
    assert sent.is_sent and not sent.app_token and sent.sender_id == fake.bot.id

    monkeypatch.delenv("TWITCH_CHANNEL")
    assert (s := run_settings(data_dir)) is not None and s.channel == "concertbot"  # the bot's own channel
    other = fake.user_token("other")
    point_at(fake, monkeypatch, TWITCH_BOT_TOKEN=other, TWITCH_BOT_ID=fake.user("other").id, TWITCH_CHANNEL="x")
    s = run_settings(data_dir)  # the environment's token wins, and nothing of the stored login is taken
    assert s is not None and s.token_file is None and s.bot_token.get_secret_value() == other
    assert s.bot_refresh_token.get_secret_value() == ""
    monkeypatch.setenv("TWITCH_CLIENT_ID", "another-app")
    monkeypatch.delenv("TWITCH_BOT_TOKEN")
    with pytest.raises(ConfigError, match="belongs to client id"):
        run_settings(data_dir)


async def test_run_renews_a_stored_token_that_ran_out_and_writes_the_pair_back(
    fake: FakeTwitch, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = await logged_in(fake, monkeypatch, data_dir)
    fake.expire_token(old.access_token)
    monkeypatch.setenv("TWITCH_CHANNEL", "composer")
    settings = run_settings(data_dir)
    assert settings is not None

    inbox = Inbox()
    async with TwitchChat(settings, inbox):
        await fake.say("ada", "hi")
        assert (await inbox.next()).text == "hi"
    new = load_token(token_path(data_dir))
    assert new is not None and new.access_token != old.access_token
    assert fake.token_named(new.access_token) == (fake.bot.id, LOGIN_SCOPES)
    assert fake.token_named(old.access_token) is None
    assert stat.S_IMODE(token_path(data_dir).stat().st_mode) == 0o600
    # The next start logs in with the renewed pair, which the old refresh token could no longer give.
    renewed = run_settings(data_dir)
    assert renewed is not None
    async with TwitchChat(renewed, Inbox()):
        pass


async def test_a_confidential_client_still_sends_with_its_app_token_from_a_stored_login(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeTwitch() as fake:
        await logged_in(fake, monkeypatch, data_dir)
        monkeypatch.setenv("TWITCH_CLIENT_SECRET", fake.client_secret)
        monkeypatch.setenv("TWITCH_CHANNEL", "composer")
        settings = run_settings(data_dir)
        assert settings is not None
        async with TwitchChat(settings, Inbox()) as chat:
            await chat.send("hello")
        sent = await fake.wait_for_sent(lambda m: m.text == "hello")
        assert sent.is_sent and sent.app_token


def test_the_token_file_is_json_a_doctor_can_read(tmp_path: Path) -> None:
    token = StoredToken("cid", "1001", "concertbot", ("user:bot",), 1e9, "a", "r")
    save_token(tmp_path / "t.json", token)
    assert json.loads((tmp_path / "t.json").read_text())["login"] == "concertbot"
