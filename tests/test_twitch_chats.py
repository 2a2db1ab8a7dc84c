"""The operator's side of several Twitch channels: `concertbot twitch status` names each `[[channels]]` chat
(the real CLI against the fake Twitch over real HTTP), and TWITCH_CHANNEL is needed only without them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_twitch import FakeTwitch
from typer.testing import CliRunner, Result

from bot.chat.twitch_auth import config_chats, run_settings
from bot.cli import app
from config.errors import ConfigError
from config.settings import load_settings
from config.twitch import LOGIN_SCOPES

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
runner = CliRunner()

CHANNELS = """
[[channels]]
name = "north"
twitch_channel = "#North"

[[channels]]
name = "south"
twitch_channel = "south"

[[channels]]
name = "local"
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch(channel="north", channels=("south",)) as server:
        yield server


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder of its own, and an environment holding no Twitch setting but what a test sets."""
    for name in [n for n in os.environ if n.startswith(("TWITCH_", "CONCERTBOT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONCERTBOT_PATHS__DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def with_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = CHANNELS) -> None:
    config = tmp_path / "channels.toml"
    config.write_text(text)
    monkeypatch.setenv("CONCERTBOT_CONFIG", str(config))
    monkeypatch.setenv("CONCERTBOT_HTTP_PORT", "0")


def credentials(fake: FakeTwitch, monkeypatch: pytest.MonkeyPatch, token: str | None = None) -> None:
    """The bot's credentials and the fake's addresses in TWITCH_* variables; no TWITCH_CHANNEL."""
    s = fake.settings()
    env = {
        "TWITCH_CLIENT_ID": s.client_id,
        "TWITCH_CLIENT_SECRET": s.client_secret.get_secret_value(),
        "TWITCH_BOT_ID": s.bot_id,
        "TWITCH_BOT_TOKEN": token or s.bot_token.get_secret_value(),
        "TWITCH_HELIX_URL": s.helix_url,
        "TWITCH_ID_URL": s.id_url,
        "TWITCH_EVENTSUB_URL": s.eventsub_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


async def cli(*args: str) -> Result:
    """Run `concertbot <args>` in a thread, so that the fake keeps answering on this loop meanwhile."""
    return await asyncio.to_thread(lambda: runner.invoke(app, list(args)))


async def test_status_says_for_each_channels_chat_whether_it_exists_and_the_bot_moderates_it(
    fake: FakeTwitch, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.moderate(fake.bot.login, "north")
    with_channels(tmp_path, monkeypatch)
    credentials(fake, monkeypatch, fake.user_token("concertbot", scopes=LOGIN_SCOPES))
    result = await cli("twitch", "status")

    assert result.exit_code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "moderator in #north: yes (channels 'north': twitch_channel)" in lines
    assert "moderator in #south: no (channels 'south': twitch_channel)" in lines
    assert "  (/mod concertbot in #south's chat allows 100 lines per 30 s)" in lines
    assert not [line for line in lines if "local" in line]  # a channel without twitch_channel joins no chat


async def test_status_names_a_mistyped_channel_in_one_line_and_exits_1(
    fake: FakeTwitch, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_channels(
        tmp_path, monkeypatch, CHANNELS.replace('twitch_channel = "south"', 'twitch_channel = "sotuh"')
    )
    credentials(fake, monkeypatch, fake.user_token("concertbot", scopes=LOGIN_SCOPES))
    result = await cli("twitch", "status")

    assert result.exit_code == 1
    assert "moderator in #north: no (channels 'north': twitch_channel)" in result.stdout
    assert "#sotuh (channels 'south': twitch_channel): not a Twitch account" in result.stdout
    error = result.stderr.strip()
    assert error == (
        "error: not a Twitch account: channels 'south': twitch_channel = 'sotuh'; correct the login "
        "(twitch.tv/<login>)"
    )
    assert "Traceback" not in result.stdout + result.stderr


async def test_with_channels_twitch_channel_is_not_needed_and_without_them_it_is_named(
    fake: FakeTwitch, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_channels(tmp_path, monkeypatch)
    chats = [login for _, login in config_chats(load_settings()) or []]
    assert chats == ["north", "south"]
    assert run_settings(data_dir, chats) is None  # no credential set: local chat, not a missing TWITCH_CHANNEL
    credentials(fake, monkeypatch)
    found = run_settings(data_dir, chats)
    assert found is not None and found.bot_id == fake.bot.id
    with pytest.raises(ConfigError, match="TWITCH_CHANNEL must be set too"):
        run_settings(data_dir)  # one channel: the chat it reads is TWITCH_CHANNEL's
