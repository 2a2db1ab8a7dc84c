"""The bot's Twitch login: the OAuth device code flow, the private file its token lives in, and token checks.

The device code flow (RFC 8628, as Twitch runs it) needs no web server and no client secret: `oauth2/device`
hands out a code, the streamer types it at twitch.tv/activate while logged in as the bot's account, and
`oauth2/token` is polled until Twitch gives the token or says why not. The token and its refresh token go into
`<data>/twitch-token.json`, readable by its owner only; `concertbot run` reads it when the environment holds
no TWITCH_BOT_TOKEN, and `bot.chat.twitch` writes a renewed pair back to it.

No token is ever printed, logged or put in an error message: the dataclasses keep them out of their reprs,
and Twitch's errors are reduced to its short reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from config.errors import ConcertbotError, ConfigError
from config.twitch import CHAT_SCOPES, TwitchSettings, twitch_settings

if TYPE_CHECKING:
    from config.settings import Settings

TOKEN_FILE = "twitch-token.json"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOGIN_AGAIN = "run `concertbot twitch login`"
# RFC 8628: without an interval the client waits 5 s, and each slow_down adds 5 s.
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
LOGIN = re.compile(r"[a-z0-9_]{1,25}")  # what Twitch accepts as a login; it answers 400 to anything else


class TwitchLoginError(ConcertbotError):
    """Twitch would not log the bot in or accept its token; the message says why and what to do."""


@dataclass(frozen=True)
class StoredToken:
    """The bot account's user token as `concertbot twitch login` stores it.

    Attributes:
        client_id: the application the token was issued to; only it can use and renew the token.
        user_id, login: the account the token belongs to (from `oauth2/validate`).
        scopes: what the token allows.
        expires_at: when the access token runs out, as Unix time.
        access_token, refresh_token: the secrets themselves; left out of the repr.
    """

    client_id: str
    user_id: str
    login: str
    scopes: tuple[str, ...]
    expires_at: float
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)


@dataclass(frozen=True)
class DeviceCode:
    """What `oauth2/device` answers: the code the streamer types, where, and how often to ask for the token."""

    user_code: str
    verification_uri: str
    interval: float
    expires_in: float
    device_code: str = field(repr=False)


@dataclass(frozen=True)
class Grant:
    """A fresh token pair from `oauth2/token`."""

    expires_in: float
    scopes: tuple[str, ...]
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)


@dataclass(frozen=True)
class Validation:
    """What `oauth2/validate` says of a token."""

    client_id: str
    login: str
    user_id: str
    scopes: tuple[str, ...]
    expires_in: float


# --- the token file ------------------------------------------------------------------------------------------


def token_path(data_dir: Path) -> Path:
    """Where the bot's token is stored under the data folder."""
    return data_dir / TOKEN_FILE


def save_token(path: Path, token: StoredToken) -> None:
    """Write `token` to `path`, readable and writable by its owner only (0600), replacing it atomically.

    A reader sees the old file or the new one, never half of one; a crash leaves at most a stray temp file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    # Created 0600 from the start (O_EXCL: never through a file someone else made), so the secret is never
    # readable by others, not even between creation and a chmod.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # the umask may have taken bits away, never added: make it exact
            json.dump(asdict(token) | {"scopes": list(token.scopes)}, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def load_token(path: Path) -> StoredToken | None:
    """The token stored at `path`, or None when there is no such file.

    Raises:
        ConfigError: the file exists but cannot be read or is not a token file (it names the file and the fix).
    """
    try:
        raw = json.loads(path.read_text())
        return StoredToken(
            client_id=str(raw["client_id"]),
            user_id=str(raw["user_id"]),
            login=str(raw["login"]),
            scopes=tuple(str(s) for s in raw["scopes"]),
            expires_at=float(raw["expires_at"]),
            access_token=str(raw["access_token"]),
            refresh_token=str(raw["refresh_token"]),
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the Twitch token file {path} ({exc.strerror}); {LOGIN_AGAIN}") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a Twitch token file; delete it and {LOGIN_AGAIN}") from None


def stored_for_run(data_dir: Path) -> StoredToken | None:
    """The stored token that `concertbot run` would use: None when TWITCH_BOT_TOKEN is set or none is stored."""
    if os.environ.get("TWITCH_BOT_TOKEN"):
        return None
    return load_token(token_path(data_dir))


def run_settings(data_dir: Path, chats: Sequence[str] = ()) -> TwitchSettings | None:
    """The Twitch settings for `concertbot run`: the environment's, completed by the stored login if any.

    The stored token is used only when the environment gives no TWITCH_BOT_TOKEN; it then also supplies the
    bot's user id, the client id and, unless TWITCH_CHANNEL is set, the channel (the bot account's own: the
    streamer logged in as themselves). None means local chat.

    `chats` are the logins the `[[channels]]` tables name (`config_chats`): each such channel reads its own
    chat, so TWITCH_CHANNEL is then not needed, and the first of them stands in for it.
    """
    stored = stored_for_run(data_dir)
    if stored is None:
        return twitch_settings({"channel": chats[0]} if chats else None)
    client_id = os.environ.get("TWITCH_CLIENT_ID")
    if client_id and client_id != stored.client_id:
        raise ConfigError(
            f"the stored Twitch token belongs to client id {stored.client_id}, "
            f"not TWITCH_CLIENT_ID={client_id}; {LOGIN_AGAIN} with this client id"
        )
    return twitch_settings(
        {
            "client_id": stored.client_id,
            "bot_id": stored.user_id,
            "channel": chats[0] if chats else stored.login,
            "bot_token": stored.access_token,
            "bot_refresh_token": stored.refresh_token,
            "token_file": token_path(data_dir),
        }
    )


def renewed(
    path: Path,
    user_id: str,
    access_token: str,
    refresh_token: str,
    expires_in: float,
    scopes: Any,
    wall: Callable[[], float] = time.time,
) -> None:
    """Write a pair that twitchio renewed back to the token file at `path`, if it is that file's account's.

    `wall` is unix time now: the pair runs out `expires_in` seconds after it.
    """
    stored = load_token(path)
    if stored is None or stored.user_id != user_id:
        return
    new = replace(
        stored,
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=wall() + expires_in,
        scopes=tuple(scopes) or stored.scopes,
    )
    save_token(path, new)


# --- talking to Twitch's ID service --------------------------------------------------------------------------


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turns a network failure on the way to `url` into one line."""
    try:
        yield
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TwitchLoginError(f"could not reach {url} ({type(exc).__name__}); check the network") from None


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one request (an empty body when Twitch sent no JSON)."""
    with reaching(url):
        async with session.request(method, url, **kwargs) as response:
            try:
                body = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                body = None
            return response.status, body if isinstance(body, dict) else {}


def twitch_says(body: Mapping[str, Any]) -> str:
    """Twitch's short reason in an error body: `message` in Twitch's own shape, `error` in RFC 6749's."""
    return str(body.get("message") or body.get("error_description") or body.get("error") or "no reason given")


async def request_device_code(
    session: aiohttp.ClientSession, id_url: str, client_id: str, scopes: tuple[str, ...]
) -> DeviceCode:
    """Ask Twitch for a device code for `scopes` (step 1 of the flow)."""
    status, body = await _call(
        session, "POST", id_url + "oauth2/device", data={"client_id": client_id, "scopes": " ".join(scopes)}
    )
    if status != 200:
        raise TwitchLoginError(
            f"Twitch refused to start the login (HTTP {status}: {twitch_says(body)}); check TWITCH_CLIENT_ID "
            "and that the application is registered at dev.twitch.tv"
        )
    try:
        return DeviceCode(
            user_code=str(body["user_code"]),
            verification_uri=str(body["verification_uri"]),
            interval=float(body.get("interval") or DEFAULT_INTERVAL),
            expires_in=float(body["expires_in"]),
            device_code=str(body["device_code"]),
        )
    except (KeyError, TypeError, ValueError):
        raise TwitchLoginError("Twitch's answer to the login request lacked the device code") from None


def read_token_answer(status: int, body: Mapping[str, Any], interval: float) -> Grant | float:
    """One poll's answer: the token, or how long to wait before asking again.

    Raises TwitchLoginError when Twitch says the streamer declined, the code expired, or anything else final.
    """
    if status == 200:
        return _grant(body)
    reason = twitch_says(body)
    said = reason.lower()
    if said == "authorization_pending":
        return interval
    if said == "slow_down":
        return interval + SLOW_DOWN_STEP
    if "denied" in said or "declined" in said:
        raise TwitchLoginError(f"you declined the login at Twitch; {LOGIN_AGAIN} again to allow it")
    if said in ("expired_token", "invalid device code"):
        raise TwitchLoginError(f"the code expired before it was entered; {LOGIN_AGAIN} again for a new one")
    raise TwitchLoginError(f"Twitch refused the login (HTTP {status}: {reason})")


def _grant(body: Mapping[str, Any]) -> Grant:
    try:
        return Grant(
            expires_in=float(body["expires_in"]),
            scopes=tuple(str(s) for s in body.get("scope") or ()),
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
        )
    except (KeyError, TypeError, ValueError):
        raise TwitchLoginError("Twitch's token answer lacked the token or its refresh token") from None


async def wait_for_grant(
    session: aiohttp.ClientSession,
    id_url: str,
    client_id: str,
    code: DeviceCode,
    scopes: tuple[str, ...],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Grant:
    """Poll `oauth2/token` at the interval Twitch asks for until the streamer answers (step 2)."""
    deadline = clock() + code.expires_in
    interval = code.interval
    fields = {"client_id": client_id, "scopes": " ".join(scopes), "device_code": code.device_code}
    while True:
        await sleep(interval)
        if clock() > deadline:
            raise TwitchLoginError(f"the code expired before it was entered; {LOGIN_AGAIN} again for a new one")
        status, body = await _call(
            session, "POST", id_url + "oauth2/token", data=fields | {"grant_type": DEVICE_GRANT}
        )
        answer = read_token_answer(status, body, interval)
        if isinstance(answer, Grant):
            return answer
        interval = answer


async def validate(session: aiohttp.ClientSession, id_url: str, access_token: str) -> Validation | None:
    """What Twitch says of `access_token`; None when it is no longer valid (expired or revoked)."""
    status, body = await _call(
        session, "GET", id_url + "oauth2/validate", headers={"Authorization": f"OAuth {access_token}"}
    )
    if status == 401:
        return None
    if status != 200:
        raise TwitchLoginError(f"Twitch could not check the token (HTTP {status}: {twitch_says(body)})")
    return Validation(
        client_id=str(body.get("client_id", "")),
        login=str(body.get("login") or ""),
        user_id=str(body.get("user_id") or ""),
        scopes=tuple(str(s) for s in body.get("scopes") or ()),
        expires_in=float(body.get("expires_in") or 0),
    )


async def device_login(
    session: aiohttp.ClientSession,
    id_url: str,
    client_id: str,
    scopes: tuple[str, ...],
    show: Callable[[DeviceCode], None],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> StoredToken:
    """The whole device code flow: ask for a code, `show` it to the streamer, wait, and name the account.

    Args:
        session: the HTTP session to use.
        id_url: Twitch's ID service, ending in `/` (`TwitchAddresses.id_url`).
        client_id: the application's client id.
        scopes: the scopes to ask for.
        show: called once with the code and where to type it.
        sleep, clock, wall: injected for tests; `wall` stamps the token's expiry.

    Raises:
        TwitchLoginError: the streamer declined, the code expired, or Twitch refused or was unreachable.
    """
    code = await request_device_code(session, id_url, client_id, scopes)
    show(code)
    grant = await wait_for_grant(session, id_url, client_id, code, scopes, sleep=sleep, clock=clock)
    who = await validate(session, id_url, grant.access_token)
    if who is None or not who.user_id:
        raise TwitchLoginError(f"Twitch gave a token it does not itself accept; {LOGIN_AGAIN} again")
    return StoredToken(
        client_id=client_id,
        user_id=who.user_id,
        login=who.login,
        scopes=who.scopes or grant.scopes,
        expires_at=wall() + grant.expires_in,
        access_token=grant.access_token,
        refresh_token=grant.refresh_token,
    )


async def refresh(
    session: aiohttp.ClientSession,
    id_url: str,
    token: StoredToken,
    client_secret: str = "",
    wall: Callable[[], float] = time.time,
) -> StoredToken:
    """A renewed copy of `token` (grant_type=refresh_token); a confidential client also sends its secret.

    Raises TwitchLoginError when Twitch will not renew it (revoked, or its refresh token already used).
    """
    fields = {"client_id": token.client_id, "grant_type": "refresh_token", "refresh_token": token.refresh_token}
    if client_secret:
        fields["client_secret"] = client_secret
    status, body = await _call(session, "POST", id_url + "oauth2/token", data=fields)
    if status != 200:
        raise TwitchLoginError(
            f"the stored Twitch token has run out and Twitch would not renew it ({twitch_says(body)}: "
            f"revoked, or not used for 30 days); {LOGIN_AGAIN}"
        )
    grant = _grant(body)
    return replace(
        token,
        access_token=grant.access_token,
        refresh_token=grant.refresh_token,
        expires_at=wall() + grant.expires_in,
        scopes=grant.scopes or token.scopes,
    )


async def moderated_channels(
    session: aiohttp.ClientSession, helix_url: str, client_id: str, access_token: str, user_id: str
) -> set[str]:
    """The logins of the channels `user_id` moderates (Helix `moderation/channels`, every page)."""
    url = helix_url + "moderation/channels"
    headers = {"Authorization": f"Bearer {access_token}", "Client-Id": client_id}
    params = {"user_id": user_id, "first": "100"}
    found: set[str] = set()
    while True:
        status, body = await _call(session, "GET", url, headers=headers, params=params)
        if status != 200:
            raise TwitchLoginError(
                f"Twitch would not list the bot's channels (HTTP {status}: {twitch_says(body)})"
            )
        found |= {str(c.get("broadcaster_login", "")).lower() for c in body.get("data") or ()}
        cursor = (body.get("pagination") or {}).get("cursor")
        if not cursor:
            return found
        params["after"] = str(cursor)


async def existing_accounts(
    session: aiohttp.ClientSession, helix_url: str, client_id: str, access_token: str, logins: Sequence[str]
) -> set[str]:
    """Which of `logins` are Twitch accounts (Helix `users`, 100 logins a request); malformed ones are not."""
    wellformed = sorted({login for login in logins if LOGIN.fullmatch(login)})
    headers = {"Authorization": f"Bearer {access_token}", "Client-Id": client_id}
    found: set[str] = set()
    for start in range(0, len(wellformed), 100):
        query = [("login", login) for login in wellformed[start : start + 100]]
        status, body = await _call(session, "GET", helix_url + "users", headers=headers, params=query)
        if status != 200:
            raise TwitchLoginError(
                f"Twitch would not look the channels up (HTTP {status}: {twitch_says(body)})"
            )
        found |= {str(u.get("login", "")).lower() for u in body.get("data") or ()}
    return found


# --- the chats the bot would join ----------------------------------------------------------------------------


def chat_setting(channel: str | None) -> str:
    """What names a channel's chat in the settings, quoted in messages about it (as `bot.app` quotes it)."""
    return "TWITCH_CHANNEL" if channel is None else f"channels {channel!r}: twitch_channel"


def chat_login(channel: str) -> str:
    """A configured channel as Twitch names its chat: the login, without `#` or capitals."""
    return channel.strip().removeprefix("#").lower()


def config_chats(settings: Settings) -> list[tuple[str, str]] | None:
    """The chats the `[[channels]]` tables name, as (setting, login); None without tables (TWITCH_CHANNEL's)."""
    if not settings.channels:
        return None
    return [
        (chat_setting(ch.name), chat_login(ch.twitch_channel)) for ch in settings.channels if ch.twitch_channel
    ]


@dataclass(frozen=True)
class ChatReport:
    """What `concertbot twitch status` and `concertbot doctor` find of one chat the bot would join.

    Attributes:
        setting: what names the chat ("TWITCH_CHANNEL", "channels 'north': twitch_channel").
        login: the broadcaster's login as configured (lower case, no `#`).
        exists: whether Twitch knows an account of that login; the bot cannot join a chat without one.
        moderator: "broadcaster", "yes", "no", or why it is unknown; "" when the channel does not exist.
    """

    setting: str
    login: str
    exists: bool
    moderator: str

    def line(self) -> str:
        """The chat in one line for the operator."""
        if not self.exists:
            return f"#{self.login} ({self.setting}): not a Twitch account; the bot cannot join its chat"
        return f"moderator in #{self.login}: {self.moderator}" + (
            "" if self.setting == "TWITCH_CHANNEL" else f" ({self.setting})"
        )


async def inspect_chats(
    session: aiohttp.ClientSession,
    helix_url: str,
    client_id: str,
    access_token: str,
    who: Validation,
    chats: Sequence[tuple[str, str]],
) -> list[ChatReport]:
    """For each (setting, login) in `chats`: whether the channel exists and whether the bot moderates it."""
    logins = [login for _, login in chats]
    existing = await existing_accounts(session, helix_url, client_id, access_token, logins)
    moderated: set[str] | None = None
    if "user:read:moderated_channels" in who.scopes and any(
        login in existing and login != who.login for login in logins
    ):
        moderated = await moderated_channels(session, helix_url, client_id, access_token, who.user_id)
    reports = []
    for setting, login in chats:
        if login not in existing:
            moderator = ""
        elif login == who.login:
            moderator = "broadcaster"
        elif moderated is None:
            moderator = "unknown (the token lacks user:read:moderated_channels)"
        else:
            moderator = "yes" if login in moderated else "no"
        reports.append(ChatReport(setting, login, login in existing, moderator))
    return reports


def missing_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The chat scopes a token lacks."""
    return tuple(s for s in CHAT_SCOPES if s not in scopes)


@dataclass(frozen=True)
class TokenReport:
    """What `concertbot twitch status` says of the bot's token.

    Attributes:
        source: where the token came from: "TWITCH_BOT_TOKEN" or the token file's path.
        login, user_id, scopes: the account and what it allows, as Twitch validates them now.
        expires_in: seconds until the access token runs out.
        missing: the chat scopes it lacks (the bot cannot chat without them).
        chats: each chat the bot would join: TWITCH_CHANNEL's (the account's own when unset), or those the
            `[[channels]]` tables name.
        renewed: the stored token had run out and was renewed (and written back) to check it.
    """

    source: str
    login: str
    user_id: str
    scopes: tuple[str, ...]
    expires_in: float
    missing: tuple[str, ...]
    chats: tuple[ChatReport, ...]
    renewed: bool = False


async def inspect_token(
    session: aiohttp.ClientSession,
    helix_url: str,
    id_url: str,
    data_dir: Path,
    chats: Sequence[tuple[str, str]] | None = None,
    wall: Callable[[], float] = time.time,
) -> TokenReport:
    """Check the token `concertbot run` would use, renewing a stored one that has run out, and its chats.

    `chats` are (setting, login) pairs (`config_chats`); None: the one TWITCH_CHANNEL names, else the
    account's own.

    Raises:
        TwitchLoginError: there is no token, or it is invalid and cannot be renewed (the message says the fix).
    """
    path = token_path(data_dir)
    env_token = os.environ.get("TWITCH_BOT_TOKEN", "")
    stored = None if env_token else load_token(path)
    if not env_token and stored is None:
        raise TwitchLoginError(f"no Twitch token: {LOGIN_AGAIN} (or set TWITCH_BOT_TOKEN)")
    access = env_token or (stored.access_token if stored else "")
    source = "TWITCH_BOT_TOKEN" if env_token else str(path)
    who = await validate(session, id_url, access)
    renewed_now = False
    if who is None and stored is not None:
        stored = await refresh(session, id_url, stored, os.environ.get("TWITCH_CLIENT_SECRET", ""), wall)
        save_token(path, stored)
        access, renewed_now = stored.access_token, True
        who = await validate(session, id_url, access)
    if who is None:
        fix = "make a new one" if env_token else LOGIN_AGAIN
        raise TwitchLoginError(f"the Twitch token in {source} is not valid (expired or revoked); {fix}")
    if not who.user_id:
        raise TwitchLoginError(f"the token in {source} is an app token, not the bot account's; {LOGIN_AGAIN}")
    if chats is None:
        chats = [(chat_setting(None), chat_login(os.environ.get("TWITCH_CHANNEL") or who.login))]
    client_id = who.client_id or (stored.client_id if stored else "")
    found = await inspect_chats(session, helix_url, client_id, access, who, chats)
    return TokenReport(
        source=source,
        login=who.login,
        user_id=who.user_id,
        scopes=who.scopes,
        expires_in=who.expires_in,
        missing=missing_scopes(who.scopes),
        chats=tuple(found),
        renewed=renewed_now,
    )
