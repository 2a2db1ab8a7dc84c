"""`concertbot twitch login` (the bot's Twitch token in one command) and `concertbot twitch status`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from config.errors import ConcertbotError
from config.twitch import CHAT_SCOPES, LOGIN_SCOPES, TwitchAddresses

if TYPE_CHECKING:
    from config.settings import Settings

twitch_app = typer.Typer(help="Log the bot in to Twitch and check its token.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _setup() -> tuple[Settings, TwitchAddresses]:
    """The settings and Twitch's addresses; a bad setting ends the command with one line (exit 2)."""
    from config import load_settings
    from config.twitch import twitch_addresses

    try:
        return load_settings(), twitch_addresses()
    except ConcertbotError as exc:
        raise _fail(str(exc), 2) from None


def _talk(job: Callable[..., Awaitable[T]]) -> T:
    """Run `job(session)` with one HTTP session; what Twitch refuses ends the command with one line (exit 1)."""
    import aiohttp

    async def main() -> T:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await job(session)

    try:
        return asyncio.run(main())
    except ConcertbotError as exc:
        raise _fail(str(exc), 1) from None
    except KeyboardInterrupt:
        raise _fail("login cancelled; nothing was stored", 130) from None


@twitch_app.command("login")
def login_cmd(
    client_id: Annotated[
        str | None,
        typer.Option(help="The application's client id from dev.twitch.tv (default: TWITCH_CLIENT_ID)."),
    ] = None,
) -> None:
    """Log the bot's account in with a code typed at twitch.tv/activate; the token is kept in a private file."""
    from bot.chat.twitch_auth import DeviceCode, device_login, save_token, token_path

    settings, addresses = _setup()
    data_dir = settings.paths.data_dir
    client_id = (client_id or os.environ.get("TWITCH_CLIENT_ID") or "").strip()
    if not client_id:
        raise _fail(
            "no client id: register an application at dev.twitch.tv/console (client type Public), then set "
            "TWITCH_CLIENT_ID or pass --client-id",
            2,
        )

    def show(code: DeviceCode) -> None:
        out.print(
            f"Open [bold]{escape(code.verification_uri)}[/bold] while logged in to Twitch as the bot's account "
            f"and enter the code [bold]{escape(code.user_code)}[/bold] "
            f"(it expires in {code.expires_in / 60:.0f} min). Waiting..."
        )

    token = _talk(lambda session: device_login(session, addresses.id_url, client_id, LOGIN_SCOPES, show))
    path = token_path(data_dir)
    try:
        save_token(path, token)
    except OSError as exc:
        raise _fail(f"could not write the token to {path}: {exc.strerror}", 1) from None
    lacking = [s for s in CHAT_SCOPES if s not in token.scopes]
    out.print(
        f"logged in as {escape(token.login)} (user id {token.user_id}); the token is in {path}, readable only "
        "by you. `concertbot run` uses it when TWITCH_BOT_TOKEN is unset."
    )
    if lacking:
        raise _fail(f"the token lacks {', '.join(lacking)}: allow every permission Twitch asks for", 1)


@twitch_app.command("status")
def status_cmd() -> None:
    """Who the bot's token belongs to, its scopes and expiry, and for each channel's chat (TWITCH_CHANNEL's, or
    every [[channels]] table's) whether it exists and the bot moderates it."""
    from bot.chat.twitch_auth import LOGIN_AGAIN, config_chats, inspect_token

    settings, addresses = _setup()
    chats = config_chats(settings)
    report = _talk(
        lambda session: inspect_token(
            session, addresses.helix_url, addresses.id_url, settings.paths.data_dir, chats
        )
    )
    renewed = " (it had run out and was renewed)" if report.renewed else ""
    out.print(f"token: {escape(report.source)}{renewed}")
    out.print(f"account: {escape(report.login)} (user id {report.user_id})")
    out.print(f"scopes: {', '.join(report.scopes) or 'none'}")
    out.print(f"expires in: {report.expires_in:.0f} s")
    if not report.chats:
        out.print("chats: none ([[channels]] names no twitch_channel: every channel has local chat)")
    for chat in report.chats:
        out.print(escape(chat.line()))
        if chat.moderator == "no":
            out.print(
                f"  (/mod {escape(report.login)} in #{escape(chat.login)}'s chat allows 100 lines per 30 s)"
            )
    problems = []
    if unknown := [f"{c.setting} = {c.login!r}" for c in report.chats if not c.exists]:
        problems.append(f"not a Twitch account: {', '.join(unknown)}; correct the login (twitch.tv/<login>)")
    if report.missing:
        problems.append(
            f"the token lacks {', '.join(report.missing)}, which the bot needs to chat; {LOGIN_AGAIN}"
        )
    if problems:
        raise _fail("; ".join(problems), 1)
