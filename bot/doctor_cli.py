"""`concertbot doctor` and `concertbot soundfonts`: bot.doctor's checks and the SoundFont search, shown."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bot.doctor import Check, failed, run_checks
from config import ConcertbotError, load_settings

console = Console()
err = Console(stderr=True)

STYLES = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as a JSON list.")] = False,
) -> None:
    """Check everything the concert needs before going live; exit status 1 when something would stop it."""
    from bot.chat.twitch_auth import config_chats, run_settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except ConcertbotError as exc:
        checks = [Check("settings", "FAIL", str(exc), "fix the value the message quotes")]
    else:
        chats = [login for _, login in config_chats(settings) or []]
        checks = run_checks(settings, lambda: run_settings(settings.paths.data_dir, chats))
    if as_json:
        print(json.dumps([asdict(c) for c in checks]))
    else:
        table = Table(title="concertbot doctor")
        for col in ("check", "status", "found", "fix"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{STYLES[c.status]}]{c.status}[/]", escape(c.found), escape(c.fix))
        console.print(table)
        bad = [c.name for c in checks if c.status == "FAIL"]
        if bad:
            err.print(f"[red]{len(bad)} check(s) would stop the concert:[/red] {', '.join(bad)}")
    if failed(checks):
        raise typer.Exit(1)


def soundfonts_cmd() -> None:
    """List the SoundFonts found, in the order they are chosen, and mark the one that plays."""
    from synth.soundfonts import SoundFont, find_soundfont, found_soundfonts

    try:
        settings = load_settings()
    except ConcertbotError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    configured = settings.synth.soundfont
    fonts: list[SoundFont] = [SoundFont(configured.expanduser(), "configured")] if configured else []
    fonts += list(found_soundfonts())
    try:
        playing: SoundFont | None = find_soundfont(configured)
        problem = None
    except ConcertbotError as exc:
        playing, problem = None, str(exc)
    table = Table(title="SoundFonts, in the order they are chosen (soundfonts/README.md)")
    for col in ("", "SoundFont", "size", "found as"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for font in fonts:
        size = f"{font.path.stat().st_size / (1 << 20):,.1f} MiB" if font.path.is_file() else "missing"
        mark = "[green]plays[/green]" if playing is not None and font.path == playing.path else ""
        table.add_row(mark, escape(str(font.path)), size, escape(font.origin))
    console.print(table)
    if problem is not None:
        err.print(f"[red]error:[/red] {escape(problem)}", soft_wrap=True)
        raise typer.Exit(2)
