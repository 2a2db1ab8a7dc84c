"""Twitch credentials and addresses, read from `TWITCH_*` environment variables and validated once.

Unset credentials mean "no Twitch": the bot then reads chat from the local terminal. Secrets are `SecretStr`
so that they print as `**********` in reprs, logs and errors.
"""

from __future__ import annotations

import re

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError

# Without these the bot cannot log in or find its channel; the rest have defaults.
REQUIRED = ("client_id", "client_secret", "bot_id", "channel", "bot_token")
SECRETS = ("client_secret", "bot_token", "bot_refresh_token")


class TwitchSettings(BaseSettings):
    """What the bot needs to chat on Twitch, from `TWITCH_<FIELD>` environment variables.

    Attributes:
        client_id: the application's client id (dev.twitch.tv console).
        client_secret: the application's secret; used to mint the app token that sends chat.
        bot_id: the numeric user id of the bot's account.
        channel: the login of the broadcaster whose chat the bot joins (a leading `#` and capitals are allowed).
        bot_token: a user access token of the bot's account with the scopes `user:read:chat`, `user:write:chat`
            and `user:bot`; add `channel:read:redemptions` when the bot runs on the broadcaster's account.
        bot_refresh_token: the refresh token that goes with `bot_token`; empty: the token cannot be renewed.
        helix_url, id_url, eventsub_url: Twitch's addresses; change them only to point the bot at a stand-in.
    """

    model_config = SettingsConfigDict(env_prefix="TWITCH_", env_ignore_empty=True)

    client_id: str
    client_secret: SecretStr
    bot_id: str
    channel: str
    bot_token: SecretStr
    bot_refresh_token: SecretStr = SecretStr("")
    helix_url: str = "https://api.twitch.tv/helix/"
    id_url: str = "https://id.twitch.tv/"
    eventsub_url: str = "wss://eventsub.wss.twitch.tv/ws"

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


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return "TWITCH_" + field.upper()


def twitch_settings() -> TwitchSettings | None:
    """The Twitch settings from the environment; None when no credential is set (local chat instead).

    Raises ConfigError naming every missing or bad variable when the credentials are set only in part. The
    message quotes bad values of plain settings but never the value of a secret.
    """
    try:
        return TwitchSettings()
    except ValidationError as exc:
        errors = exc.errors()
    missing = sorted(str(e["loc"][0]) for e in errors if e["type"] == "missing")
    if set(missing) == set(REQUIRED) and len(errors) == len(missing):
        return None
    problems = []
    if missing:
        names = ", ".join(env_name(m) for m in sorted(missing, key=REQUIRED.index))
        problems.append(f"{names} must be set too (or unset every TWITCH_ credential to use local chat)")
    for err in errors:
        if err["type"] == "missing":
            continue
        field = str(err["loc"][0])
        shown = "" if field in SECRETS else f" = {err.get('input')!r}"
        problems.append(f"{env_name(field)}{shown}: {err['msg'].removeprefix('Value error, ')}")
    raise ConfigError("bad Twitch settings: " + "; ".join(problems)) from None
