"""Twitch credentials and addresses, read from `TWITCH_*` environment variables and validated once.

Unset credentials mean "no Twitch": the bot then reads chat from the local terminal. Secrets are `SecretStr`
so that they print as `**********` in reprs, logs and errors. `concertbot twitch login` stores a token in a
private file instead; `fallback` carries its values for whatever the environment leaves unset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError

# Without these the bot cannot log in or find its channel; the rest have defaults. No client secret: an app
# registered as a public client (the device code flow's kind) has none, and then the bot's user token does all.
REQUIRED = ("client_id", "bot_id", "channel", "bot_token")
SECRETS = ("client_secret", "bot_token", "bot_refresh_token")

# What the bot's user token must allow: read chat, write chat, and appear as a chat bot.
CHAT_SCOPES = ("user:read:chat", "user:write:chat", "user:bot")
# Asked for at login too: channel-point redemptions when the bot runs on the broadcaster's own account, and
# the list of channels the bot moderates (for `concertbot twitch status`). Neither is needed to chat.
EXTRA_SCOPES = ("channel:read:redemptions", "user:read:moderated_channels")
LOGIN_SCOPES = CHAT_SCOPES + EXTRA_SCOPES


class TwitchAddresses(BaseSettings):
    """Where Twitch answers, from `TWITCH_HELIX_URL`, `TWITCH_ID_URL` and `TWITCH_EVENTSUB_URL`.

    Change them only to point the bot at a stand-in; commands that need no credentials (login) read only these.
    """

    model_config = SettingsConfigDict(env_prefix="TWITCH_", env_ignore_empty=True, extra="ignore")

    helix_url: str = "https://api.twitch.tv/helix/"
    id_url: str = "https://id.twitch.tv/"
    eventsub_url: str = "wss://eventsub.wss.twitch.tv/ws"

    @field_validator("helix_url", "id_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local stand-in)")
        # twitchio appends paths to these bases directly.
        return value if value.endswith("/") else value + "/"

    @field_validator("eventsub_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("wss://", "ws://")):
            raise ValueError("must start with wss:// (or ws:// for a local stand-in)")
        return value


class TwitchSettings(TwitchAddresses):
    """What the bot needs to chat on Twitch, from `TWITCH_<FIELD>` environment variables.

    Attributes:
        client_id: the application's client id (dev.twitch.tv console).
        client_secret: the application's secret, if it has one (a confidential client): it mints the app token
            that sends chat with the chat-bot badge. Empty (a public client): the bot's user token sends.
        bot_id: the numeric user id of the bot's account.
        channel: the login of the broadcaster whose chat the bot joins (a leading `#` and capitals are allowed).
        bot_token: a user access token of the bot's account with the scopes `user:read:chat`, `user:write:chat`
            and `user:bot`; add `channel:read:redemptions` when the bot runs on the broadcaster's account.
        bot_refresh_token: the refresh token that goes with `bot_token`; empty: the token cannot be renewed.
        token_file: the private file the bot token came from (`concertbot twitch login`), where a renewed token
            is written back; None when the token came from the environment.
        helix_url, id_url, eventsub_url: Twitch's addresses; change them only to point the bot at a stand-in.
    """

    model_config = SettingsConfigDict(env_prefix="TWITCH_", env_ignore_empty=True)

    client_id: str
    client_secret: SecretStr = SecretStr("")
    bot_id: str
    channel: str
    bot_token: SecretStr
    bot_refresh_token: SecretStr = SecretStr("")
    token_file: Path | None = None

    @field_validator("bot_id")
    @classmethod
    def _numeric_id(cls, value: str) -> str:
        if not value.strip().isdigit():
            raise ValueError("must be the bot account's numeric user id, not its name")
        return value.strip()

    @field_validator("channel")
    @classmethod
    def _login(cls, value: str) -> str:
        login = value.strip().removeprefix("#").lower()
        if not re.fullmatch(r"[a-z0-9_]{1,25}", login):
            raise ValueError("must be the broadcaster's login name")
        return login


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return "TWITCH_" + field.upper()


def twitch_addresses() -> TwitchAddresses:
    """Twitch's addresses from the environment (defaults: Twitch's own); ConfigError quoting a bad one."""
    try:
        return TwitchAddresses()
    except ValidationError as exc:
        raise ConfigError("bad Twitch settings: " + "; ".join(_problems(exc.errors()))) from None


def twitch_settings(fallback: Mapping[str, Any] | None = None) -> TwitchSettings | None:
    """The Twitch settings from the environment; None when no credential is set (local chat instead).

    Args:
        fallback: values for fields that the environment leaves unset or empty (a stored login's token, user
            id and client id); the environment always wins.

    Raises ConfigError naming every missing or bad variable when the credentials are set only in part. The
    message quotes bad values of plain settings but never the value of a secret.
    """
    given = {k: v for k, v in (fallback or {}).items() if not os.environ.get(env_name(k))}
    try:
        return TwitchSettings(**given)
    except ValidationError as exc:
        errors = exc.errors()
    missing = sorted(str(e["loc"][0]) for e in errors if e["type"] == "missing")
    # A fallback alone (the channel that [[channels]] names) is no credential: local chat, as with none.
    credential_set = any(os.environ.get(env_name(f)) for f in (*REQUIRED, *SECRETS))
    if len(errors) == len(missing) and not credential_set:
        return None
    problems = []
    if missing:
        names = ", ".join(env_name(m) for m in sorted(missing, key=REQUIRED.index))
        problems.append(f"{names} must be set too (or unset every TWITCH_ credential to use local chat)")
        if "bot_token" in missing:
            problems.append(
                "`concertbot twitch login` stores a bot token so that TWITCH_BOT_TOKEN can stay unset"
            )
    problems += _problems([e for e in errors if e["type"] != "missing"])
    raise ConfigError("bad Twitch settings: " + "; ".join(problems)) from None


def _problems(errors: list[Any]) -> list[str]:
    """One phrase per bad value, quoting it unless it is a secret."""
    out = []
    for err in errors:
        field = str(err["loc"][0])
        shown = "" if field in SECRETS else f" = {err.get('input')!r}"
        out.append(f"{env_name(field)}{shown}: {err['msg'].removeprefix('Value error, ')}")
    return out
