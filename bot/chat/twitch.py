"""The Twitch edge: chat in over EventSub, chat out over Helix. The only module that imports twitchio.

An unmodified `twitchio.Client` does the talking; this module points it at the configured addresses, logs
in with the app credentials and the bot's user token, finds the channel, subscribes to its chat (and, when
the token allows, to channel-point redemptions) and turns what arrives into `bot.chat.message.ChatMessage`.
twitchio reconnects and resubscribes by itself when the socket drops or Twitch asks it to move.

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


class TwitchChat:
    """The bot's connection to one Twitch channel's chat, as an async context manager.

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
        self._settings = settings
        self._on_message = on_message
        self._client: twitchio.Client | None = None
        self._inbox: asyncio.Queue[ChatMessage] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._broadcaster_id = ""
        self._redemptions = False
        self._bot_is_moderator = False
        # Texts recently sent, to recognise their echo when the bot shares the broadcaster's account.
        self._echoes: deque[str] = deque(maxlen=64)

    @property
    def broadcaster_id(self) -> str:
        """The channel owner's user id, found at start-up."""
        return self._broadcaster_id

    @property
    def redemptions(self) -> bool:
        """Whether Twitch delivers channel-point redemptions directly (else only rewards that take text)."""
        return self._redemptions

    @property
    def bot_is_moderator(self) -> bool:
        """Whether the bot may send at the moderator's rate: it is the broadcaster or its echo had a badge."""
        return self._bot_is_moderator

    async def __aenter__(self) -> Self:
        point_twitchio_at(self._settings)
        s = self._settings
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
            await self._connect(client)
        except BaseException:
            await client.close(save_tokens=False)
            self._client = None
            raise
        self._worker = asyncio.create_task(self._deliver(), name="twitch chat delivery")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._client is not None:
            await self._client.close(save_tokens=False)
            self._client = None

    @property
    def _as_user(self) -> str | None:
        """Whose user token does what the app token does for a confidential client: None for the app token.

        A public client (no secret, as the device code flow registers it) has no app token, so the bot's user
        token looks users up and sends chat; Twitch then shows no chat-bot badge.
        """
        return None if self._settings.client_secret.get_secret_value() else self._settings.bot_id

    async def _connect(self, client: twitchio.Client) -> None:
        s = self._settings
        token_name = "the token stored by `concertbot twitch login`" if s.token_file else "TWITCH_BOT_TOKEN"
        renew = (
            "run `concertbot twitch login` again" if s.token_file else "make a new token for the bot account"
        )
        if self._as_user is None:
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
        if self._as_user is not None:
            # As twitchio's own device code flow does: the user token (renewed, if it had to be) stands in for
            # the app token, which twitchio's requests otherwise look for even when they name a user's token.
            with _translated(f"check {token_name}", s.id_url, renew):
                await client.login(
                    token=client.tokens[token.user_id]["token"], load_tokens=False, save_tokens=False
                )

        with _translated(f"look up TWITCH_CHANNEL={s.channel!r}", s.helix_url):
            users = await client.fetch_users(logins=[s.channel], token_for=self._as_user)
        if not users:
            raise ConfigError(f"TWITCH_CHANNEL={s.channel!r} is not a Twitch account")
        self._broadcaster_id = users[0].id
        self._bot_is_moderator = self._broadcaster_id == s.bot_id

        chat = eventsub.ChatMessageSubscription(broadcaster_user_id=self._broadcaster_id, user_id=s.bot_id)
        with _translated(f"subscribe to the chat of #{s.channel}", s.eventsub_url):
            await client.subscribe_websocket(chat, token_for=s.bot_id)
        logger.info("reading the chat of #%s", s.channel)

        # Twitch delivers redemptions only on the broadcaster's own token; a separate bot account gets a 403
        # and still sees rewards that take text, as chat lines carrying the reward's id.
        redeem = eventsub.ChannelPointsRedeemAddSubscription(broadcaster_user_id=self._broadcaster_id)
        try:
            await client.subscribe_websocket(redeem, token_for=s.bot_id)
        except twitchio.HTTPException as exc:
            logger.warning(
                "channel-point redemptions arrive only as chat lines: Twitch refused the subscription "
                "(HTTP %s: %s); it needs the broadcaster's token with channel:read:redemptions",
                exc.status,
                _twitch_says(exc),
            )
        else:
            self._redemptions = True

    async def send(self, text: str, reply_to: str | None = None) -> str:
        """Post `text` (at most 500 characters) to the channel's chat; returns Twitch's id for the message.

        Args:
            text: the line to post.
            reply_to: the id of the chat message this answers (`ChatMessage.message_id`), or None.

        Raises:
            TwitchError: Twitch refused or dropped the message (rate limit, duplicate, AutoMod, ...).
            ValueError: the text is longer than 500 characters.
        """
        if self._client is None:
            raise RuntimeError("TwitchChat.send outside `async with`")
        echo = " ".join(text.split())
        self._echoes.append(echo)
        channel = self._client.create_partialuser(self._broadcaster_id)
        try:
            # The app token sends when there is one, so Twitch shows the bot with its chat-bot badge.
            sent = await channel.send_message(
                text, self._settings.bot_id, token_for=self._as_user, reply_to_message_id=reply_to or None
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
        if chatter_id != self._settings.bot_id:
            return False
        if self._broadcaster_id != self._settings.bot_id:
            return True
        # The bot runs on the broadcaster's account: only lines it sent itself are echoes.
        echo = " ".join(text.split())
        if echo in self._echoes:
            self._echoes.remove(echo)
            return True
        return False

    async def _on_chat(self, payload: twitchio.ChatMessage) -> None:
        try:
            chatter = payload.chatter
            badges = {badge.set_id for badge in payload.badges}
            if self._is_own_echo(chatter.id, payload.text):
                self._bot_is_moderator = bool(badges & (MODERATOR_BADGES | {"broadcaster"}))
                return
            reward = payload.channel_points_id
            if reward and self._redemptions:
                return  # the redemption event brings this one, with the same text
            self._inbox.put_nowait(
                ChatMessage(
                    user_id=chatter.id,
                    login=chatter.name or "",
                    display_name=chatter.display_name or chatter.name or "",
                    text=payload.text,
                    message_id=payload.id,
                    is_moderator=bool(badges & MODERATOR_BADGES),
                    is_broadcaster=chatter.id == self._broadcaster_id,
                    reward_id=reward or None,
                )
            )
        except Exception:
            logger.exception("could not read a chat notification")

    async def _on_token_renewed(self, payload: twitchio.TokenRefreshedPayload) -> None:
        """twitchio renewed a token: keep the new pair in the token file, or the next start could not log in."""
        path = self._settings.token_file
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

    async def _on_redemption(self, payload: twitchio.ChannelPointsRedemptionAdd) -> None:
        try:
            user = payload.user
            self._inbox.put_nowait(
                ChatMessage(
                    user_id=user.id,
                    login=user.name or "",
                    display_name=user.display_name or user.name or "",
                    text=payload.user_input,
                    # A redemption is no chat message, so there is nothing to reply to.
                    message_id="",
                    is_broadcaster=user.id == self._broadcaster_id,
                    reward_id=payload.reward.id,
                )
            )
        except Exception:
            logger.exception("could not read a redemption notification")

    async def _deliver(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._on_message(message)
            except Exception:
                logger.exception("handling %s's message %r failed", message.login, message.text)


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
