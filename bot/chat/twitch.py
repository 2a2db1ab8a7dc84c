"""The Twitch edge: chat in over EventSub, chat out over Helix. The only module that imports twitchio.

An unmodified `twitchio.Client` does the talking; this module points it at the configured addresses, logs
in with the app credentials and the bot's user token, finds each channel, subscribes to its chat (and, when
the token allows, to channel-point redemptions) and turns what arrives into `bot.chat.message.ChatMessage`.
One client and one EventSub WebSocket serve every channel of a deployment (`TwitchConnection.join`);
`TwitchChat` is the one-channel case. twitchio reconnects and resubscribes by itself when the socket drops
or Twitch asks it to move.

Nothing twitchio-shaped leaves this module, and no secret reaches an error message: twitchio's own
exceptions can quote the token URL with the client secret in it, or the bot token itself, so they are
replaced rather than chained.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

import aiohttp

from bot.chat.message import ChatMessage
from bot.chat.twitch_auth import renewed
from config.errors import ConcertbotError, ConfigError
from config.twitch import CHAT_SCOPES, TwitchSettings

# aiohttp 3.14 deprecates subclassing web.Application and setting attributes on it, which twitchio's web
# adapter does at import and in every Client. This bot never runs that adapter, so the warnings are silenced
# here, around those two places only, and runs with warnings as errors need no global filter.
AIOHTTP_DEPRECATIONS = r"(Inheritance class AiohttpAdapter from|Setting custom) web\.Application"

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", AIOHTTP_DEPRECATIONS, DeprecationWarning)
    import twitchio
    from twitchio import eventsub
    from twitchio.eventsub import websockets as eventsub_websockets

logger = logging.getLogger(__name__)

OnMessage = Callable[[ChatMessage], Awaitable[None]]

MODERATOR_BADGES = frozenset({"moderator", "lead_moderator"})


class TwitchError(ConcertbotError):
    """Twitch could not be reached, or refused something for a reason the settings do not explain."""


class _NoStarletteHint(logging.Filter):
    """Drops twitchio's advice to install Starlette, logged at every Client: this bot runs no web adapter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StarletteAdapter" not in record.getMessage()


logging.getLogger("twitchio.client").addFilter(_NoStarletteHint())


def point_twitchio_at(settings: TwitchSettings) -> None:
    """Aim twitchio at the settings' addresses: they are process-wide constants read at each request."""
    twitchio.Route.BASE = settings.helix_url
    twitchio.Route.ID_BASE = settings.id_url
    eventsub_websockets.WSS = settings.eventsub_url


class TwitchConnection:
    """The bot account's one connection to Twitch, shared by every channel it chats in (async context manager).

    One twitchio client logs in once, and every joined channel's chat subscription rides on its one EventSub
    WebSocket: Twitch lets a user open only three sessions with subscriptions, and a session carries up to 300.
    Each `join` adds a `TwitchChannel` with its own inbox, delivery order and chat-out state; a notification
    goes to the channel its broadcaster id names, so a line typed in one chat reaches that channel only.

    Args:
        settings: credentials and addresses (see `config.twitch.TwitchSettings`); `settings.channel` is not
            joined by itself (`TwitchChat` joins it).

    Example:
        async with TwitchConnection(settings) as twitch:
            north = await twitch.join("north_streamer", on_north)
            south = await twitch.join("south_streamer", on_south)
            await north.send("Now playing: a fugue for strings")

    Raises (on entering):
        ConfigError: Twitch refused the credentials, or the token lacks a scope or belongs to another account.
        TwitchError: Twitch could not be reached.
    """

    def __init__(self, settings: TwitchSettings) -> None:
        self.settings = settings
        self._client: twitchio.Client | None = None
        self._channels: dict[str, TwitchChannel] = {}  # by broadcaster id
        self._joining = asyncio.Lock()

    @property
    def channels(self) -> list[TwitchChannel]:
        """The channels joined so far, in the order they were joined."""
        return list(self._channels.values())

    async def __aenter__(self) -> Self:
        point_twitchio_at(self.settings)
        s = self.settings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", AIOHTTP_DEPRECATIONS, DeprecationWarning)
            client = twitchio.Client(
                client_id=s.client_id, client_secret=s.client_secret.get_secret_value() or None, bot_id=s.bot_id
            )
        client.add_listener(self._on_chat, event="event_message")
        if s.token_file is not None:
            client.add_listener(self._on_token_renewed, event="event_token_refreshed")
        client.add_listener(self._on_redemption, event="event_custom_redemption_add")
        self._client = client
        try:
            await self._log_in(client)
        except BaseException:
            await client.close(save_tokens=False)
            self._client = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for channel in self._channels.values():
            await channel.stop()
        self._channels.clear()
        if self._client is not None:
            await self._client.close(save_tokens=False)
            self._client = None

    @property
    def client(self) -> twitchio.Client:
        if self._client is None:
            raise RuntimeError("TwitchConnection used outside `async with`")
        return self._client

    @property
    def as_user(self) -> str | None:
        """Whose user token does what the app token does for a confidential client: None for the app token.

        A public client (no secret, as the device code flow registers it) has no app token, so the bot's user
        token looks users up and sends chat; Twitch then shows no chat-bot badge.
        """
        return None if self.settings.client_secret.get_secret_value() else self.settings.bot_id

    async def _log_in(self, client: twitchio.Client) -> None:
        s = self.settings
        token_name = "the token stored by `concertbot twitch login`" if s.token_file else "TWITCH_BOT_TOKEN"
        renew = (
            "run `concertbot twitch login` again" if s.token_file else "make a new token for the bot account"
        )
        if self.as_user is None:
            # login() is what start(with_adapter=False, load_tokens=False, save_tokens=False) runs before it
            # idles; calling it directly lets its errors surface here. It mints the app token that sends chat.
            with _translated("log in with TWITCH_CLIENT_ID and TWITCH_CLIENT_SECRET", s.id_url):
                await client.login(load_tokens=False, save_tokens=False)
        with _translated(f"check {token_name}", s.id_url, renew):
            token = await client.add_token(
                s.bot_token.get_secret_value(), s.bot_refresh_token.get_secret_value()
            )
        if token.user_id != s.bot_id:
            owner = f"user {token.login} ({token.user_id})" if token.user_id else "the app, not a user"
            raise ConfigError(f"{token_name} belongs to {owner}, not to TWITCH_BOT_ID={s.bot_id}")
        if missing := [scope for scope in CHAT_SCOPES if scope not in token.scopes]:
            raise ConfigError(f"{token_name} lacks the scopes {', '.join(missing)}; {renew}")
        if self.as_user is not None:
            # As twitchio's own device code flow does: the user token (renewed, if it had to be) stands in for
            # the app token, which twitchio's requests otherwise look for even when they name a user's token.
            with _translated(f"check {token_name}", s.id_url, renew):
                await client.login(
                    token=client.tokens[token.user_id]["token"], load_tokens=False, save_tokens=False
                )

    async def join(
        self, login: str, on_message: OnMessage, *, setting: str = "TWITCH_CHANNEL"
    ) -> TwitchChannel:
        """Read and write the chat of `login`'s channel over this connection; returns the joined channel.

        Args:
            login: the broadcaster's login, lower case.
            on_message: awaited with each of the channel's chat lines and channel-point redemptions as a
                `ChatMessage`, one at a time in arrival order (another channel's handler never holds it up); it
                should return quickly. What it raises is logged and the next message still arrives. The bot's
                own lines are not passed on.
            setting: what named the channel, quoted in errors (`channels 'north': twitch_channel`).

        Raises:
            ConfigError: the channel does not exist, or this connection reads it already.
            TwitchError: Twitch could not be reached or would not deliver the channel's chat.
        """
        client, s = self.client, self.settings
        # twitchio opens its one WebSocket at the first subscription: two joins at once could open two.
        async with self._joining:
            with _translated(f"look up {setting}={login!r}", s.helix_url):
                users = await client.fetch_users(logins=[login], token_for=self.as_user)
            if not users:
                raise ConfigError(f"{setting}={login!r} is not a Twitch account")
            broadcaster_id = users[0].id
            if broadcaster_id in self._channels:
                raise ConfigError(f"{setting}={login!r}: another channel of this bot reads #{login} already")
            channel = TwitchChannel(self, login, broadcaster_id, on_message)
            # Known before the subscription exists: Twitch may deliver a line before its answer arrives.
            self._channels[broadcaster_id] = channel
            try:
                await self._subscribe(channel)
            except BaseException:
                del self._channels[broadcaster_id]
                raise
            channel.start()
        logger.info("reading the chat of #%s", login)
        return channel

    async def _subscribe(self, channel: TwitchChannel) -> None:
        client, s, login = self.client, self.settings, channel.login
        chat = eventsub.ChatMessageSubscription(broadcaster_user_id=channel.broadcaster_id, user_id=s.bot_id)
        with _translated(f"subscribe to the chat of #{login}", s.eventsub_url):
            try:
                await client.subscribe_websocket(chat, token_for=s.bot_id)
            except ValueError:
                # twitchio's answer when its WebSocket holds 300 subscriptions, Twitch's most for one session.
                raise TwitchError(
                    f"could not subscribe to the chat of #{login}: one EventSub connection carries at most "
                    f"300 subscriptions ({len(self._channels) - 1} channels joined before it)"
                ) from None

        # Twitch delivers redemptions only on the broadcaster's own token; a separate bot account gets a 403
        # and still sees rewards that take text, as chat lines carrying the reward's id.
        redeem = eventsub.ChannelPointsRedeemAddSubscription(broadcaster_user_id=channel.broadcaster_id)
        try:
            await client.subscribe_websocket(redeem, token_for=s.bot_id)
        except twitchio.HTTPException as exc:
            logger.warning(
                "#%s: channel-point redemptions arrive only as chat lines: Twitch refused the subscription "
                "(HTTP %s: %s); it needs the broadcaster's token with channel:read:redemptions",
                login,
                exc.status,
                _twitch_says(exc),
            )
        else:
            channel.redemptions = True

    async def _on_chat(self, payload: twitchio.ChatMessage) -> None:
        try:
            channel = self._channels.get(payload.broadcaster.id)
            if channel is None:
                return  # a chat this connection does not read (any more)
            source = payload.source_broadcaster
            if source is not None and source.id != channel.broadcaster_id and source.id in self._channels:
                return  # a shared chat's line from another channel of ours: that channel hears it itself
            channel.heard(payload)
        except Exception:
            logger.exception("could not read a chat notification")

    async def _on_redemption(self, payload: twitchio.ChannelPointsRedemptionAdd) -> None:
        try:
            channel = self._channels.get(payload.broadcaster.id)
            if channel is not None:
                channel.redeemed(payload)
        except Exception:
            logger.exception("could not read a redemption notification")

    async def _on_token_renewed(self, payload: twitchio.TokenRefreshedPayload) -> None:
        """twitchio renewed a token: keep the new pair in the token file, or the next start could not log in."""
        path = self.settings.token_file
        if path is None:
            return
        try:
            renewed(
                path,
                payload.user_id,
                payload.token,
                payload.refresh_token,
                payload.expires_in,
                payload.scopes.selected,
            )
        except Exception:
            logger.exception("could not write the renewed Twitch token to %s", path)
        else:
            logger.info("the Twitch token was renewed and saved to %s", path)


class TwitchChannel:
    """One channel's chat over a `TwitchConnection` (made by `TwitchConnection.join`): lines in, lines out."""

    def __init__(
        self, connection: TwitchConnection, login: str, broadcaster_id: str, on_message: OnMessage
    ) -> None:
        self.login = login
        self.broadcaster_id = broadcaster_id  # the channel owner's user id
        # Whether Twitch delivers channel-point redemptions directly (else only rewards that take text).
        self.redemptions = False
        self._connection = connection
        self._bot_id = connection.settings.bot_id
        self._on_message = on_message
        self._inbox: asyncio.Queue[ChatMessage] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._bot_is_moderator = broadcaster_id == self._bot_id
        # Texts recently sent, to recognise their echo when the bot shares the broadcaster's account.
        self._echoes: deque[str] = deque(maxlen=64)

    @property
    def bot_is_moderator(self) -> bool:
        """Whether the bot may send at the moderator's rate here: it is the broadcaster or a mod badge came."""
        return self._bot_is_moderator

    async def send(self, text: str, reply_to: str | None = None) -> str:
        """Post `text` (at most 500 characters) to this channel's chat; returns Twitch's id for the message.

        Args:
            text: the line to post.
            reply_to: the id of the chat message this answers (`ChatMessage.message_id`), or None.

        Raises:
            TwitchError: Twitch refused or dropped the message (rate limit, duplicate, AutoMod, ...).
            ValueError: the text is longer than 500 characters.
        """
        client = self._connection.client
        echo = " ".join(text.split())
        self._echoes.append(echo)
        channel = client.create_partialuser(self.broadcaster_id)
        try:
            # The app token sends when there is one, so Twitch shows the bot with its chat-bot badge.
            sent = await channel.send_message(
                text, self._bot_id, token_for=self._connection.as_user, reply_to_message_id=reply_to or None
            )
        except twitchio.MessageRejectedError as exc:
            self._forget_echo(echo)
            raise TwitchError(f"Twitch dropped the chat line ({exc.code}: {exc.message})") from None
        except twitchio.HTTPException as exc:
            self._forget_echo(echo)
            raise TwitchError(
                f"Twitch refused the chat line (HTTP {exc.status}: {_twitch_says(exc)})"
            ) from None
        return sent.id

    def _forget_echo(self, echo: str) -> None:
        if echo in self._echoes:
            self._echoes.remove(echo)

    def _is_own_echo(self, chatter_id: str, text: str) -> bool:
        if chatter_id != self._bot_id:
            return False
        if self.broadcaster_id != self._bot_id:
            return True
        # The bot runs on the broadcaster's account: only lines it sent itself are echoes.
        echo = " ".join(text.split())
        if echo in self._echoes:
            self._echoes.remove(echo)
            return True
        return False

    def heard(self, payload: twitchio.ChatMessage) -> None:
        """A chat notification of this channel, queued for `on_message` unless it is the bot's own echo."""
        chatter = payload.chatter
        badges = {badge.set_id for badge in payload.badges}
        if self._is_own_echo(chatter.id, payload.text):
            self._bot_is_moderator = bool(badges & (MODERATOR_BADGES | {"broadcaster"}))
            return
        reward = payload.channel_points_id
        if reward and self.redemptions:
            return  # the redemption event brings this one, with the same text
        self._inbox.put_nowait(
            ChatMessage(
                user_id=chatter.id,
                login=chatter.name or "",
                display_name=chatter.display_name or chatter.name or "",
                text=payload.text,
                message_id=payload.id,
                is_moderator=bool(badges & MODERATOR_BADGES),
                is_broadcaster=chatter.id == self.broadcaster_id,
                reward_id=reward or None,
            )
        )

    def redeemed(self, payload: twitchio.ChannelPointsRedemptionAdd) -> None:
        """A channel-point redemption in this channel, queued for `on_message`."""
        user = payload.user
        self._inbox.put_nowait(
            ChatMessage(
                user_id=user.id,
                login=user.name or "",
                display_name=user.display_name or user.name or "",
                text=payload.user_input,
                # A redemption is no chat message, so there is nothing to reply to.
                message_id="",
                is_broadcaster=user.id == self.broadcaster_id,
                reward_id=payload.reward.id,
            )
        )

    def start(self) -> None:
        """Start handing queued messages to `on_message` (the connection does, once subscribed)."""
        self._worker = asyncio.create_task(self._deliver(), name=f"twitch chat delivery #{self.login}")

    async def stop(self) -> None:
        """Stop delivering; what is still queued is dropped (the connection does, on closing)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _deliver(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._on_message(message)
            except Exception:
                logger.exception("handling %s's message %r failed", message.login, message.text)


class TwitchChat:
    """The bot's connection to one Twitch channel's chat (`settings.channel`), as an async context manager.

    A `TwitchConnection` that joins one channel; a deployment of several channels opens one connection and
    joins each channel on it instead.

    Args:
        settings: credentials, channel and addresses (see `config.twitch.TwitchSettings`).
        on_message: awaited with each chat line and each channel-point redemption as a `ChatMessage`, one at
            a time in arrival order; it should return quickly. What it raises is logged and the next message
            still arrives. The bot's own lines are not passed on.

    Example:
        async with TwitchChat(settings, handle) as chat:
            await chat.send("Now playing: a fugue for strings")

    Raises (on entering):
        ConfigError: Twitch refused the credentials, the token lacks a scope or belongs to another account,
            or the channel does not exist.
        TwitchError: Twitch could not be reached or would not deliver the channel's chat.
    """

    def __init__(self, settings: TwitchSettings, on_message: OnMessage) -> None:
        self._connection = TwitchConnection(settings)
        self._on_message = on_message
        self._channel: TwitchChannel | None = None

    async def __aenter__(self) -> Self:
        await self._connection.__aenter__()
        try:
            self._channel = await self._connection.join(self._connection.settings.channel, self._on_message)
        except BaseException:
            await self._connection.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._channel = None
        await self._connection.__aexit__(exc_type, exc, tb)

    @property
    def channel(self) -> TwitchChannel:
        if self._channel is None:
            raise RuntimeError("TwitchChat used outside `async with`")
        return self._channel

    @property
    def broadcaster_id(self) -> str:
        """The channel owner's user id, found at start-up."""
        return self.channel.broadcaster_id

    @property
    def redemptions(self) -> bool:
        """Whether Twitch delivers channel-point redemptions directly (else only rewards that take text)."""
        return self.channel.redemptions

    @property
    def bot_is_moderator(self) -> bool:
        """Whether the bot may send at the moderator's rate: it is the broadcaster or its echo had a badge."""
        return self.channel.bot_is_moderator

    async def send(self, text: str, reply_to: str | None = None) -> str:
        """Post `text` to the channel's chat (see `TwitchChannel.send`); returns Twitch's id for the message."""
        return await self.channel.send(text, reply_to)


@contextmanager
def _translated(what: str, url: str, renew: str = "make a new token for the bot account") -> Iterator[None]:
    """Turns twitchio's and aiohttp's errors during `what` into ours, without their secret-bearing text."""
    try:
        yield
    except twitchio.InvalidTokenException:
        raise ConfigError(
            f"could not {what}: Twitch rejected the token and its refresh token could not renew it; {renew}"
        ) from None
    except twitchio.HTTPException as exc:
        error = ConfigError if exc.status in (400, 401, 403, 404) else TwitchError
        raise error(f"could not {what}: Twitch answered HTTP {exc.status}: {_twitch_says(exc)}") from None
    except (twitchio.WebsocketConnectionException, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TwitchError(f"could not {what}: {url} is unreachable ({type(exc).__name__})") from None


def _twitch_says(exc: twitchio.HTTPException) -> str:
    """Twitch's own short explanation from an error response (never the request, which may hold secrets)."""
    extra = exc.extra
    if isinstance(extra, dict):
        return str(extra.get("message") or extra.get("error") or "no reason given")
    return "no reason given"
