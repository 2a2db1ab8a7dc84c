"""A fake Twitch on 127.0.0.1 that speaks Twitch's real protocols, so tests run the real, unmodified twitchio.

It serves the OAuth endpoints (`/oauth2/token`, `/oauth2/validate`, and `/oauth2/device` for the device code
flow, whose codes a test approves, denies or lets expire), the Helix endpoints a chat bot uses
(`/helix/users`, `/helix/eventsub/subscriptions`, `/helix/chat/messages`, `/helix/moderation/channels`) and
the EventSub WebSocket (`/ws`):
welcome, keepalives, notifications with every field twitchio reads, `session_reconnect`, and abrupt drops.
It checks what Twitch checks where a bot can get it wrong: tokens and their scopes, the 409 on a duplicate
subscription, subscriptions of a dead session turning `websocket_disconnected`, 500-character lines, and
the chat rate limit (20 lines per 30 s, 100 for a moderator or the broadcaster; more are dropped) and a
non-moderator's line identical to one it sent within the window (dropped as a duplicate).

It serves several channels at once (`channels=`), as Twitch does for a bot in many chats: each channel has
its own broadcaster, moderators and chat; a subscription hears only its `broadcaster_user_id`'s channel, a
line goes only to the chat its `broadcaster_id` names, and a reply's parent must be a message of that chat.
Twitch's documented limits for one account apply across channels: one WebSocket session carries at most 300
enabled subscriptions and a user at most 3 sessions with enabled ones (429 beyond); the account's lines in
the window are counted over every channel, each new line checked against the limit of the channel it goes
to (20, or 100 where the sender moderates), and the duplicate rule is per channel.

    async with FakeTwitch() as fake:
        async with TwitchChat(fake.settings(), on_message) as chat:
            await fake.say("ada", "!compose bach violin")
            reply = await fake.wait_for_sent(lambda m: m.text.startswith("@ada"))

Test helpers wait only for events, never for fixed times: `say` and `redeem` wait until someone is subscribed
(so a test can speak right after a drop and the bot's resubscription), `send_reconnect` until the move is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import WSMsgType, web

from config.twitch import TwitchSettings

CHAT = "channel.chat.message"
REDEMPTION = "channel.channel_points_custom_reward_redemption.add"
BOT_SCOPES = ("user:read:chat", "user:write:chat", "user:bot", "channel:read:redemptions")
JSON = dict[str, Any]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SESSION_SUBSCRIPTIONS = 300  # enabled subscriptions one EventSub WebSocket session may carry
USER_SESSIONS = 3  # WebSocket sessions with enabled subscriptions one user (per client id) may have


@dataclass(frozen=True)
class User:
    """An account known to the fake."""

    id: str
    login: str
    display_name: str


@dataclass(frozen=True)
class SentChat:
    """A line the bot posted to `/helix/chat/messages`, as the fake received it."""

    message_id: str
    text: str
    sender_id: str
    broadcaster_id: str
    reply_to: str | None
    at: float  # time.monotonic() on arrival
    is_sent: bool  # False when the fake dropped it, e.g. for the rate limit
    drop_code: str | None = None
    app_token: bool = True  # sent with the app token (as opposed to the bot's user token)


@dataclass
class _Token:
    value: str
    user_id: str | None  # None for an app token
    scopes: tuple[str, ...]
    expires_in: int
    refresh: str | None = None


@dataclass
class DeviceCode:
    """A code handed out by `/oauth2/device`, waiting for the streamer at twitch.tv/activate."""

    device_code: str
    user_code: str
    scopes: tuple[str, ...]
    state: str = "pending"  # then "approved", "denied", "expired" or "used"; "slow_down" for one poll
    user_id: str | None = None  # who approved it
    polls: int = 0  # token requests made with it


@dataclass
class _Session:
    id: str
    ws: web.WebSocketResponse
    request: web.Request
    connected_at: str
    keepalive_timeout: int
    open: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FakeTwitch:
    """A fake Twitch server for one channel or several; use as `async with FakeTwitch(...) as fake`.

    Args:
        channel: the broadcaster's login (the first channel, `broadcaster`).
        channels: more broadcasters' logins, each a chat of its own beside `channel`'s.
        bot: the bot account's login; the same as `channel` for a bot running on the broadcaster's account.
        bot_is_moderator: whether the bot account moderates every channel (higher rate limit, mod badge);
            `moderate(login, channel)` makes someone a moderator of one channel.
        bot_scopes: the scopes of the bot's user token.
        keepalive: seconds between `session_keepalive` frames.
        rate_window: the seconds over which chat lines are counted (Twitch: 30); shrink it with the bot's queue.
        public_client: the app is registered as a public client: it has no secret, so no app token, and
            refreshes with its client id alone (a confidential client must send its secret to refresh).
        device_interval: the seconds between polls that `/oauth2/device` asks for (Twitch: 5).
    """

    def __init__(
        self,
        *,
        channel: str = "composer",
        channels: tuple[str, ...] = (),
        bot: str = "concertbot",
        bot_is_moderator: bool = False,
        bot_scopes: tuple[str, ...] = BOT_SCOPES,
        keepalive: float = 2.0,
        rate_window: float = 30.0,
        public_client: bool = False,
        device_interval: float = 0.05,
    ) -> None:
        self.client_id = "fake" + secrets.token_hex(8)
        self.client_secret = "secret" + secrets.token_hex(12)
        self.keepalive = keepalive
        self.rate_window = rate_window
        self.public_client = public_client
        self.device_interval = device_interval
        self.device_codes: list[DeviceCode] = []
        self._ids = itertools.count(1001)
        self._users: dict[str, User] = {}
        self.broadcaster = self.user(channel)
        self.channels = [self.broadcaster] + [
            self.user(c) for c in channels if c.lower() != self.broadcaster.login
        ]
        self.bot = self.user(bot)
        # Each channel's moderators by broadcaster id; `moderators` is the first channel's set.
        self._moderators: dict[str, set[str]] = {
            b.id: ({self.bot.id} if bot_is_moderator else set()) for b in self.channels
        }
        self.moderators = self._moderators[self.broadcaster.id]
        self._tokens: dict[str, _Token] = {}  # the valid ones
        self._issued: list[_Token] = []  # every one ever, for secrets()
        self.bot_token = self._issue(self.bot.id, bot_scopes, refresh=True)
        self.sent: list[SentChat] = []
        self.subscription_posts = 0  # POSTs to /helix/eventsub/subscriptions, accepted or not
        self._subs: dict[str, JSON] = {}
        self._sub_users: dict[str, str] = {}  # subscription id -> the user whose token made it
        self._sessions: dict[str, _Session] = {}
        self._messages: dict[str, tuple[User, str, str]] = {}  # message id -> author, text, broadcaster id
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._oauth_token)
        app.router.add_post("/oauth2/device", self._oauth_device)
        app.router.add_get("/oauth2/validate", self._oauth_validate)
        app.router.add_get("/helix/users", self._helix_users)
        app.router.add_post("/helix/eventsub/subscriptions", self._subscribe)
        app.router.add_get("/helix/eventsub/subscriptions", self._list_subscriptions)
        app.router.add_delete("/helix/eventsub/subscriptions", self._unsubscribe)
        app.router.add_post("/helix/chat/messages", self._chat_message)
        app.router.add_get("/helix/moderation/channels", self._moderated_channels)
        app.router.add_get("/ws", self._websocket)
        # No access log: request lines carry the client secret in their query, as they do at Twitch.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for session in list(self._sessions.values()):
            if session.open:
                await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, **overrides: Any) -> TwitchSettings:
        """Settings that point the bot at this fake, as its bot account; `overrides` replace fields."""
        values: JSON = {
            "client_id": self.client_id,
            "client_secret": "" if self.public_client else self.client_secret,
            "bot_id": self.bot.id,
            "channel": self.broadcaster.login,
            "bot_token": self.bot_token.value,
            "bot_refresh_token": self.bot_token.refresh or "",
            "helix_url": f"{self.url}/helix/",
            "id_url": f"{self.url}/",
            "eventsub_url": f"ws://127.0.0.1:{self.port}/ws",
        }
        return TwitchSettings(**(values | overrides))

    def secrets(self) -> list[str]:
        """Every secret the fake knows of: client secret, and all tokens and refresh tokens it issued."""
        found = [self.client_secret]
        for token in self._issued:
            found += [token.value] + ([token.refresh] if token.refresh else [])
        return found

    # --- test-facing actions ---------------------------------------------------------------------------------

    def user(self, login: str) -> User:
        """The account named `login`, made up on first use."""
        login = login.lower()
        if login not in self._users:
            self._users[login] = User(str(next(self._ids)), login, login.capitalize())
        return self._users[login]

    def moderate(self, login: str, channel: str | None = None) -> None:
        """`channel`'s broadcaster (default: the first channel's) makes `login` a moderator (`/mod login`)."""
        self._moderators[self._channel(channel).id].add(self.user(login).id)

    def _channel(self, login: str | None) -> User:
        if login is None:
            return self.broadcaster
        room = next((b for b in self.channels if b.login == login.lower()), None)
        if room is None:
            raise ValueError(f"{login} is not one of this fake's channels")
        return room

    def user_token(self, login: str, scopes: tuple[str, ...] = BOT_SCOPES, expires_in: int = 14400) -> str:
        """A valid user access token for `login`, e.g. to log the bot in as someone else."""
        return self._issue(self.user(login).id, scopes, refresh=True, expires_in=expires_in).value

    async def say(
        self,
        login: str,
        text: str,
        *,
        moderator: bool = False,
        broadcaster: bool | None = None,
        reply_to: str | None = None,
        reward_id: str | None = None,
        channel: str | None = None,
        shared_with: tuple[str, ...] = (),
        timeout: float = 5.0,
    ) -> str:
        """`login` writes `text` in chat; returns the message id once every chat subscriber has been sent it.

        `channel` is the chat's broadcaster login (default: the first channel). `broadcaster` defaults to
        whether `login` is that channel; True for anyone else is an error. `reply_to` makes the line a reply
        to that message id; `reward_id` marks it as the text of a channel-point redemption, as Twitch does.
        Waits up to `timeout` for a live `channel.chat.message` subscription to that channel and raises
        TimeoutError without one. `shared_with`: the channels in a shared chat session with it; as on Twitch,
        each of their subscribers also gets the line, under a message id of its own and with the
        `source_broadcaster_*` and `source_message_id` fields naming where it was typed.
        """
        room = self._channel(channel)
        user = self.user(login)
        is_broadcaster = user == room
        if broadcaster and not is_broadcaster:
            raise ValueError(f"only {room.login} can speak as the broadcaster")
        badges = []
        if is_broadcaster:
            badges.append({"set_id": "broadcaster", "id": "1", "info": ""})
        if moderator or user.id in self._moderators[room.id]:
            badges.append({"set_id": "moderator", "id": "1", "info": ""})
        others = [self._channel(c) for c in shared_with]
        await self._wait_for_listener(CHAT, [room, *others], timeout)
        message_id = str(uuid.uuid4())
        await self._notify(CHAT, self._chat_event(room, user, text, message_id, badges, reply_to, reward_id))
        for other in others:
            event = self._chat_event(other, user, text, str(uuid.uuid4()), [], None, reward_id)
            source = {"user_id": room.id, "user_login": room.login, "user_name": room.display_name}
            event |= {f"source_broadcaster_{k}": v for k, v in source.items()}
            event |= {"source_message_id": message_id, "source_badges": badges, "is_source_only": False}
            await self._notify(CHAT, event)
        return message_id

    async def redeem(
        self,
        login: str,
        user_input: str,
        *,
        reward_id: str = "reward-compose",
        title: str = "Compose a piece",
        channel: str | None = None,
        timeout: float = 5.0,
    ) -> str:
        """`login` redeems a channel-point reward with `user_input`; returns the redemption id.

        As on Twitch, the redemption goes to `...redemption.add` subscribers and, when the reward takes text,
        the text also appears in chat as a line carrying the reward's id. `channel` as for `say`.
        """
        b = self._channel(channel)
        user = self.user(login)
        redemption_id = str(uuid.uuid4())
        event = {
            "id": redemption_id,
            "broadcaster_user_id": b.id,
            "broadcaster_user_login": b.login,
            "broadcaster_user_name": b.display_name,
            "user_id": user.id,
            "user_login": user.login,
            "user_name": user.display_name,
            "user_input": user_input,
            "status": "unfulfilled",
            "reward": {"id": reward_id, "title": title, "cost": 100, "prompt": "Style and instrument"},
            "redeemed_at": _now(),
        }
        await self._wait_for_listener(CHAT if user_input else REDEMPTION, [b], timeout)
        await self._notify(REDEMPTION, event)
        if user_input:
            await self.say(login, user_input, reward_id=reward_id, channel=b.login)
        return redemption_id

    async def drop_socket(self, code: int | None = None) -> list[str]:
        """Cut every EventSub connection (TCP reset, or close frame with `code`); returns their session ids."""
        dropped = []
        for session in list(self._sessions.values()):
            if not session.open:
                continue
            await self._session_closed(session)
            if code is None:
                transport = session.request.transport
                if transport is not None:
                    transport.abort()
            else:
                await session.ws.close(code=code)
            dropped.append(session.id)
        return dropped

    async def send_reconnect(self, timeout: float = 5.0) -> str:
        """Ask the bot to move to a new connection, as Twitch does before maintenance; returns the new session.

        Returns once the bot has connected to the `reconnect_url`, the subscriptions have moved to the new
        session, and the old connection is closed.
        """
        old = self._live_session()
        if old is None:
            raise RuntimeError("no EventSub connection to move")
        frame = _frame("session_reconnect")
        frame["payload"] = {
            "session": {
                "id": old.id,
                "status": "reconnecting",
                "keepalive_timeout_seconds": None,
                "reconnect_url": f"ws://127.0.0.1:{self.port}/ws?reconnect={old.id}",
                "connected_at": old.connected_at,
                "recovery_url": None,
            }
        }
        await old.ws.send_json(frame)

        def moved() -> bool:
            new = self._live_session()
            return not old.open and new is not None and new.id != old.id

        await self._wait(moved, timeout)
        new = self._live_session()
        assert new is not None
        return new.id

    async def wait_for_sent(self, predicate: Callable[[SentChat], bool], timeout: float = 5.0) -> SentChat:
        """The first line the bot posted (already or within `timeout`) that satisfies `predicate`."""
        await self._wait(lambda: any(predicate(m) for m in self.sent), timeout)
        return next(m for m in self.sent if predicate(m))

    def subscriptions(self) -> list[JSON]:
        """Every EventSub subscription as Helix would list it (copies)."""
        return [json.loads(json.dumps(sub)) for sub in self._subs.values()]

    def sessions(self) -> list[str]:
        """Ids of the EventSub sessions whose connection is open."""
        return [s.id for s in self._sessions.values() if s.open]

    async def wait_for_device_code(self, timeout: float = 5.0) -> DeviceCode:
        """The first device code still pending (handed out already or within `timeout`)."""
        await self._wait(lambda: any(c.state == "pending" for c in self.device_codes), timeout)
        return next(c for c in self.device_codes if c.state == "pending")

    def approve_device(self, user_code: str, login: str = "concertbot") -> None:
        """`login` types `user_code` at twitch.tv/activate and authorises the scopes asked for."""
        code = self._device(user_code)
        code.state, code.user_id = "approved", self.user(login).id

    def deny_device(self, user_code: str) -> None:
        """The streamer types `user_code` and then declines."""
        self._device(user_code).state = "denied"

    def slow_down_device(self, user_code: str) -> None:
        """The next poll with `user_code`'s device code is told to slow down (RFC 8628: poll 5 s less often)."""
        self._device(user_code).state = "slow_down"

    def expire_device(self, user_code: str) -> None:
        """Nobody typed `user_code` in time (Twitch: 30 minutes)."""
        self._device(user_code).state = "expired"

    def expire_token(self, value: str) -> None:
        """The access token `value` runs out: it no longer validates, but its refresh token still works."""
        token = self._tokens.pop(value)
        self._tokens["expired-" + value] = token  # kept only so that its refresh token is found

    def revoke(self, value: str) -> None:
        """The user disconnects the app: the access token `value` and its refresh token stop working."""
        self._tokens.pop(value, None)

    def token_named(self, value: str) -> tuple[str | None, tuple[str, ...]] | None:
        """The user id and scopes of a valid access token, or None."""
        token = self._tokens.get(value)
        return None if token is None else (token.user_id, token.scopes)

    def _device(self, user_code: str) -> DeviceCode:
        return next(c for c in self.device_codes if c.user_code == user_code)

    # --- OAuth -----------------------------------------------------------------------------------------------

    def _issue(
        self, user_id: str | None, scopes: tuple[str, ...], *, refresh: bool, expires_in: int = 14400
    ) -> _Token:
        token = _Token(
            secrets.token_hex(15), user_id, scopes, expires_in, secrets.token_hex(25) if refresh else None
        )
        self._tokens[token.value] = token
        self._issued.append(token)
        return token

    async def _oauth_token(self, request: web.Request) -> web.Response:
        # twitchio sends the fields in the query string; other clients send a form body.
        fields = dict(request.query) | dict(await request.post())
        if fields.get("client_id") != self.client_id:
            return _error(400, "invalid client")
        grant = fields.get("grant_type")
        if grant == DEVICE_GRANT:
            # The device code grant needs no secret, whatever the client's type.
            return self._device_grant(fields.get("device_code", ""))
        if self.public_client:
            if "client_secret" in fields:
                return _error(400, "a public client has no client secret")
            if grant == "client_credentials":
                return _error(400, "a public client cannot get an app access token")
        elif fields.get("client_secret") != self.client_secret:
            return _error(403, "invalid client secret")
        if grant == "client_credentials":
            app = self._issue(None, (), refresh=False, expires_in=5_000_000)
            return web.json_response(
                {"access_token": app.value, "expires_in": app.expires_in, "token_type": "bearer"}
            )
        if grant == "refresh_token":
            key = next(
                (k for k, t in self._tokens.items() if t.refresh and t.refresh == fields.get("refresh_token")),
                None,
            )
            if key is None:
                return _error(400, "Invalid refresh token")
            old = self._tokens.pop(key)  # a refresh token works once; the old access token stops too
            return _grant_json(self._issue(old.user_id, old.scopes, refresh=True))
        return _error(400, "unsupported grant type")

    async def _oauth_device(self, request: web.Request) -> web.Response:
        fields = dict(request.query) | dict(await request.post())
        if fields.get("client_id") != self.client_id:
            return _error(400, "invalid client")
        scopes = tuple(str(fields.get("scopes", "")).split())
        if not scopes:
            return _error(400, "missing scopes")
        user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(8))
        code = DeviceCode(secrets.token_hex(20), user_code, scopes)
        self.device_codes.append(code)
        self._issued.append(_Token(code.device_code, None, (), 0))  # a secret too, for secrets()
        await self._notify_changed()
        return web.json_response(
            {
                "device_code": code.device_code,
                "expires_in": 1800,
                "interval": self.device_interval,
                "user_code": user_code,
                "verification_uri": f"https://www.twitch.tv/activate?public=true&device-code={user_code}",
            }
        )

    def _device_grant(self, device_code: str) -> web.Response:
        code = next((c for c in self.device_codes if c.device_code == device_code), None)
        if code is not None:
            code.polls += 1
        # Twitch answers 400 with its reason as the message; for a declined request RFC 8628's name is used
        # (Twitch documents no text of its own for it).
        if code is None or code.state in ("expired", "used"):
            return _error(400, "invalid device code")
        if code.state == "pending":
            return _error(400, "authorization_pending")
        if code.state == "slow_down":
            code.state = "pending"
            return _error(400, "slow_down")
        if code.state == "denied":
            return _error(400, "access_denied")
        code.state = "used"
        assert code.user_id is not None
        return _grant_json(self._issue(code.user_id, code.scopes, refresh=True))

    async def _oauth_validate(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = self._tokens.get(header.removeprefix("OAuth ").removeprefix("Bearer "))
        if token is None:
            return _error(401, "invalid access token")
        body: JSON = {"client_id": self.client_id, "scopes": list(token.scopes), "expires_in": token.expires_in}
        if token.user_id is not None:
            body |= {"login": self._by_id(token.user_id).login, "user_id": token.user_id}
        return web.json_response(body)

    def _bearer(self, request: web.Request) -> _Token | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or request.headers.get("Client-Id") != self.client_id:
            return None
        return self._tokens.get(header.removeprefix("Bearer "))

    # --- Helix -----------------------------------------------------------------------------------------------

    async def _helix_users(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _error(401, "Invalid OAuth token")
        ids, logins = request.query.getall("id", []), request.query.getall("login", [])
        if not ids and not logins and token.user_id:
            ids = [token.user_id]
        found = [u for u in self._users.values() if u.id in ids or u.login in logins]
        return web.json_response({"data": [_user_json(u) for u in found]})

    async def _moderated_channels(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _error(401, "Invalid OAuth token")
        if token.user_id is None or token.user_id != request.query.get("user_id"):
            return _error(400, "user_id must be the user of the token")
        if "user:read:moderated_channels" not in token.scopes:
            return _error(401, "Missing scope: user:read:moderated_channels")
        channels = [b for b in self.channels if token.user_id in self._moderators[b.id]]
        data = [
            {"broadcaster_id": u.id, "broadcaster_login": u.login, "broadcaster_name": u.display_name}
            for u in channels
        ]
        return web.json_response({"data": data, "pagination": {}})

    async def _subscribe(self, request: web.Request) -> web.Response:
        self.subscription_posts += 1
        token = self._bearer(request)
        if token is None:
            return _error(401, "Invalid OAuth token")
        body = await request.json()
        kind, condition, transport = body.get("type"), body.get("condition", {}), body.get("transport", {})
        if kind not in (CHAT, REDEMPTION) or body.get("version") != "1":
            return _error(400, "unsupported subscription type and version")
        if transport.get("method") != "websocket" or token.user_id is None:
            return _error(400, "websocket transports require a user access token")
        session = self._sessions.get(transport.get("session_id", ""))
        if session is None or not session.open:
            return _error(400, "websocket transport session does not exist or has already disconnected")
        if kind == CHAT and (condition.get("user_id") != token.user_id or "user:read:chat" not in token.scopes):
            return _error(403, "subscription missing proper authorization")
        may_redeem = {"channel:read:redemptions", "channel:manage:redemptions"} & set(token.scopes)
        if kind == REDEMPTION and (condition.get("broadcaster_user_id") != token.user_id or not may_redeem):
            return _error(403, "subscription missing proper authorization")
        for sub in self._subs.values():
            if sub["status"] == "enabled" and (sub["type"], sub["condition"]) == (kind, condition):
                return _error(409, "subscription already exists")
        enabled = [s for s in self._subs.values() if s["status"] == "enabled"]
        if sum(s["transport"]["session_id"] == session.id for s in enabled) >= SESSION_SUBSCRIPTIONS:
            return _error(429, "websocket transport session subscriptions limit exceeded")
        theirs = {
            s["transport"]["session_id"] for s in enabled if self._sub_users.get(s["id"]) == token.user_id
        }
        if session.id not in theirs and len(theirs) >= USER_SESSIONS:
            return _error(429, "websocket transports limit exceeded")
        sub = {
            "id": str(uuid.uuid4()),
            "status": "enabled",
            "type": kind,
            "version": "1",
            "condition": condition,
            "created_at": _now(),
            "transport": {
                "method": "websocket",
                "session_id": session.id,
                "connected_at": session.connected_at,
            },
            "cost": 0,
        }
        self._subs[sub["id"]] = sub
        self._sub_users[sub["id"]] = token.user_id
        await self._notify_changed()
        return web.json_response(
            {"data": [sub], "total": len(self._subs), "total_cost": 0, "max_total_cost": 10}, status=202
        )

    async def _list_subscriptions(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return _error(401, "Invalid OAuth token")
        status, kind = request.query.get("status"), request.query.get("type")
        subs = [s for s in self.subscriptions() if status in (None, s["status"]) and kind in (None, s["type"])]
        body = {"data": subs, "total": len(subs), "total_cost": 0, "max_total_cost": 10, "pagination": {}}
        return web.json_response(body)

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return _error(401, "Invalid OAuth token")
        if self._subs.pop(request.query.get("id", ""), None) is None:
            return _error(404, "subscription not found")
        await self._notify_changed()
        return web.Response(status=204)

    async def _chat_message(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _error(401, "Invalid OAuth token")
        body = await request.json()
        sender_id, text = str(body.get("sender_id", "")), str(body.get("message", ""))
        broadcaster_id, reply_to = str(body.get("broadcaster_id", "")), body.get("reply_parent_message_id")
        sender = next((u for u in self._users.values() if u.id == sender_id), None)
        room = next((b for b in self.channels if b.id == broadcaster_id), None)
        if sender is None or room is None:
            return _error(400, "unknown sender or broadcaster")
        if not self._may_send(token, sender_id):
            return _error(403, "the sender has not authorised this app to chat")
        if not text.strip() or len(text) > 500:
            return _error(400, "message must be 1 to 500 characters")
        if reply_to and self._messages.get(reply_to, (None, None, broadcaster_id))[2] != broadcaster_id:
            return _error(400, "the reply's parent message is not in this chat")
        now = time.monotonic()
        # The account's lines in the window over every channel, checked against this channel's limit.
        recent = [
            m for m in self.sent if m.is_sent and m.sender_id == sender_id and m.at > now - self.rate_window
        ]
        mods = self._moderators[room.id]
        privileged = sender_id in mods or sender == room
        drop = "msg_rate_limit" if len(recent) >= (100 if privileged else 20) else None
        here = [m for m in recent if m.broadcaster_id == broadcaster_id]
        if drop is None and not privileged and any(m.text == text for m in here):
            drop = "msg_duplicate"  # Twitch drops a non-moderator's line identical to one in the window
        message_id = str(uuid.uuid4())
        self.sent.append(
            SentChat(
                message_id,
                text,
                sender_id,
                broadcaster_id,
                reply_to,
                now,
                drop is None,
                drop,
                token.user_id is None,
            )
        )
        await self._notify_changed()
        if drop is None:
            # Twitch echoes the bot's own lines to every chat subscriber, often before this response arrives.
            badges = [{"set_id": "moderator", "id": "1", "info": ""}] if sender_id in mods else []
            if sender == room:
                badges = [{"set_id": "broadcaster", "id": "1", "info": ""}]
            event = self._chat_event(room, sender, text.strip(), message_id, badges, reply_to, None)
            await self._notify(CHAT, event)
        reason = None if drop is None else {"code": drop, "message": f"Your message was not sent: {drop}."}
        return web.json_response(
            {"data": [{"message_id": message_id, "is_sent": drop is None, "drop_reason": reason}]}
        )

    def _may_send(self, token: _Token, sender_id: str) -> bool:
        if token.user_id is not None:
            return token.user_id == sender_id and "user:write:chat" in token.scopes
        # With the app token the sender must have granted user:bot to this app.
        return any(t.user_id == sender_id and "user:bot" in t.scopes for t in self._tokens.values())

    # --- EventSub WebSocket ----------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        keepalive = int(request.query.get("keepalive_timeout_seconds", "10"))
        session = _Session(str(uuid.uuid4()), ws, request, _now(), keepalive)
        moving_from = request.query.get("reconnect")
        self._sessions[session.id] = session
        welcome = _frame("session_welcome")
        welcome["payload"] = {
            "session": {
                "id": session.id,
                "status": "connected",
                "connected_at": session.connected_at,
                "keepalive_timeout_seconds": keepalive,
                "reconnect_url": None,
                "recovery_url": None,
            }
        }
        await ws.send_json(welcome)
        if moving_from:
            # Twitch carries the old session's subscriptions over to the new one.
            for sub in self._subs.values():
                if sub["transport"]["session_id"] == moving_from and sub["status"] == "enabled":
                    sub["transport"] |= {"session_id": session.id, "connected_at": session.connected_at}
        await self._notify_changed()
        session.tasks.append(asyncio.create_task(self._keepalives(session)))
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    # Twitch allows no client traffic besides pongs.
                    await ws.close(code=4001, message=b"client sent inbound traffic")
        finally:
            for task in session.tasks:
                task.cancel()
            await self._session_closed(session)
        return ws

    async def _keepalives(self, session: _Session) -> None:
        while session.open:
            await asyncio.sleep(self.keepalive)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.ws.send_json(_frame("session_keepalive") | {"payload": {}})

    async def _session_closed(self, session: _Session) -> None:
        if not session.open:
            return
        session.open = False
        for sub in self._subs.values():
            if sub["transport"]["session_id"] == session.id and sub["status"] == "enabled":
                sub["status"] = "websocket_disconnected"
                sub["transport"]["disconnected_at"] = _now()
        await self._notify_changed()

    def _live_session(self) -> _Session | None:
        return next((s for s in reversed(self._sessions.values()) if s.open), None)

    async def _notify(self, kind: str, event: JSON) -> int:
        """Notify every enabled subscription of `kind` to the event's channel; returns how many were sent."""
        sent = 0
        for sub in list(self._subs.values()):
            if sub["type"] != kind or sub["status"] != "enabled":
                continue
            if sub["condition"].get("broadcaster_user_id") != event["broadcaster_user_id"]:
                continue
            session = self._sessions.get(sub["transport"]["session_id"])
            if session is None or not session.open:
                continue
            frame = _frame("notification")
            frame["metadata"] |= {"subscription_type": kind, "subscription_version": "1"}
            frame["payload"] = {"subscription": sub, "event": event}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.ws.send_json(frame)
                sent += 1
        return sent

    def _has_listener(self, kind: str, rooms: list[User]) -> bool:
        for sub in self._subs.values():
            if sub["type"] != kind or sub["status"] != "enabled":
                continue
            if sub["condition"].get("broadcaster_user_id") not in {room.id for room in rooms}:
                continue
            session = self._sessions.get(sub["transport"]["session_id"])
            if session is not None and session.open:
                return True
        return False

    async def _wait_for_listener(self, kind: str, rooms: list[User], timeout: float) -> None:
        try:
            await self._wait(lambda: self._has_listener(kind, rooms), timeout)
        except TimeoutError:
            chats = ", ".join(f"#{room.login}" for room in rooms)
            raise TimeoutError(f"nobody subscribed to {kind} of {chats} within {timeout} s") from None

    def _chat_event(
        self,
        b: User,
        user: User,
        text: str,
        message_id: str,
        badges: list[JSON],
        reply_to: str | None,
        reward_id: str | None,
    ) -> JSON:
        reply = None
        if reply_to is not None and reply_to in self._messages:
            parent, body, _ = self._messages[reply_to]
            reply = {
                "parent_message_id": reply_to,
                "parent_message_body": body,
                "parent_user_id": parent.id,
                "parent_user_login": parent.login,
                "parent_user_name": parent.display_name,
                "thread_message_id": reply_to,
                "thread_user_id": parent.id,
                "thread_user_login": parent.login,
                "thread_user_name": parent.display_name,
            }
        self._messages[message_id] = (user, text, b.id)
        fragment = {"type": "text", "text": text, "cheermote": None, "emote": None, "mention": None}
        return {
            "broadcaster_user_id": b.id,
            "broadcaster_user_login": b.login,
            "broadcaster_user_name": b.display_name,
            "source_broadcaster_user_id": None,
            "source_broadcaster_user_login": None,
            "source_broadcaster_user_name": None,
            "chatter_user_id": user.id,
            "chatter_user_login": user.login,
            "chatter_user_name": user.display_name,
            "message_id": message_id,
            "source_message_id": None,
            "is_source_only": None,
            "message": {"text": text, "fragments": [fragment]},
            "color": "#1E90FF",
            "badges": badges,
            "source_badges": None,
            "message_type": "text",
            "cheer": None,
            "reply": reply,
            "channel_points_custom_reward_id": reward_id,
            "channel_points_animation_id": None,
        }

    # --- bookkeeping -----------------------------------------------------------------------------------------

    def _by_id(self, user_id: str) -> User:
        return next(u for u in self._users.values() if u.id == user_id)

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _frame(message_type: str) -> JSON:
    return {
        "metadata": {"message_id": str(uuid.uuid4()), "message_type": message_type, "message_timestamp": _now()}
    }


def _grant_json(token: _Token) -> web.Response:
    """oauth2/token's answer for a user token pair, as a refresh and a device grant give it."""
    return web.json_response(
        {
            "access_token": token.value,
            "refresh_token": token.refresh,
            "expires_in": token.expires_in,
            "scope": list(token.scopes),
            "token_type": "bearer",
        }
    )


def _error(status: int, message: str) -> web.Response:
    reasons = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        429: "Too Many Requests",
    }
    return web.json_response({"error": reasons[status], "status": status, "message": message}, status=status)


def _user_json(user: User) -> JSON:
    return {
        "id": user.id,
        "login": user.login,
        "display_name": user.display_name,
        "type": "",
        "broadcaster_type": "",
        "description": "",
        "profile_image_url": "",
        "offline_image_url": "",
        "view_count": 0,
        "created_at": "2020-01-01T00:00:00Z",
    }
