"""Settings, typed and validated once at start-up from TOML files plus environment variables.

Precedence, highest first: environment (`CONCERTBOT_*`, nested with `__`, e.g.
`CONCERTBOT_SAMPLING__TEMPERATURE=0.9`), the file named by `CONCERTBOT_CONFIG`, `./concertbot.toml`,
then the defaults shipped in `config/concertbot.toml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from config.errors import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("concertbot.toml")


class Paths(BaseModel):
    data_dir: Path = Path("data")
    # Empty means the small model that ships inside the `generator` package.
    model_dir: Path | None = None


class Sampling(BaseModel):
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seconds: float = Field(60.0, gt=0.0, le=3600.0)
    # The bounds every request is held to (generator.recipes.MIN_TEMPO, MAX_TEMPO; config imports no stage).
    tempo: int | None = Field(None, ge=30, le=240)
    # Candidates written per bar of a new piece, the critic (generator.critic) keeping the best; kept in the
    # piece's record, so a piece replays as it was made whatever this says later. 1: no critic.
    critic: int = Field(1, ge=1, le=8)


class Synth(BaseModel):
    soundfont: Path | None = None
    sample_rate: int = Field(44100, ge=8000, le=192000)
    gain: float = Field(0.5, gt=0.0, le=5.0)
    reverb: bool = True
    reverb_room: float = Field(0.5, ge=0.0, le=1.0)
    reverb_level: float = Field(0.6, ge=0.0, le=1.0)


class Engine(BaseModel):
    block_frames: int = Field(2048, ge=64, le=8192)  # 46 ms at 44.1 kHz: also how quickly a skip is heard
    lookahead_seconds: float = Field(4.0, gt=0.0, le=120.0)  # generation stays this far ahead of playback
    prebuffer_seconds: float = Field(0.25, ge=0.0, le=10.0)  # generated before a piece starts to sound
    max_ahead_seconds: float = Field(0.1, gt=0.0, le=2.0)  # rendered ahead of the clock for the outputs
    tail_seconds: float = Field(1.5, ge=0.0, le=10.0)  # reverb and releases after a piece's last note
    gap_seconds: float = Field(0.5, ge=0.0, le=10.0)  # silence between pieces
    hold_seconds: float = Field(0.5, ge=0.0, le=10.0)  # notes held while generation catches up
    torch_threads: int = Field(1, ge=0)  # 0 = torch's default; 1 leaves a core for the synth


class Loudness(BaseModel):
    enabled: bool = True
    target_dbfs: float = Field(-18.0, ge=-40.0, le=-6.0)
    limit_dbfs: float = Field(-1.0, ge=-12.0, le=0.0)
    max_boost_db: float = Field(18.0, ge=0.0, le=40.0)


class Outputs(BaseModel):
    # "auto" plays to the default sound card when there is one; "off" never; anything else names a device.
    device: str = "auto"
    record: Path | None = None  # .wav or .flac recording of the whole concert (also CONCERTBOT_RECORD)
    # rtmp://, rtmps://, icecast:// or any ffmpeg output; it holds a stream key, so it is never logged.
    push_url: SecretStr | None = None


class Concert(BaseModel):
    max_per_viewer: int = Field(3, ge=1, le=100)  # requests one viewer may have queued
    max_queue: int = Field(50, ge=1, le=10000)
    viewer_cooldown_seconds: float = Field(30.0, ge=0.0)  # between one viewer's requests
    global_cooldown_seconds: float = Field(2.0, ge=0.0)  # between any two requests
    vote_grace_seconds: float = Field(30.0, ge=0.0)  # votes still count this long after a piece ends
    voteskip_share: float = Field(0.5, gt=0.0, le=1.0)  # of the viewers who chatted recently
    voteskip_min: int = Field(3, ge=1)
    chatter_window_seconds: float = Field(600.0, gt=0.0)  # "recently", for voteskip
    # Steering the piece that plays (!faster, !add harp, ...): a vote stays open this long, passes with this
    # share of the recent chatters (at least steer_min), and the next one opens a cooldown after one passed.
    steer_window_seconds: float = Field(15.0, gt=0.0, le=600.0)
    steer_share: float = Field(0.25, gt=0.0, le=1.0)
    steer_min: int = Field(2, ge=1)
    steer_cooldown_seconds: float = Field(10.0, ge=0.0)
    error_reply_seconds: float = Field(20.0, ge=0.0)  # one error reply per viewer per this long
    autoplay: bool = True
    redis_url: SecretStr | None = None  # also REDIS_URL; empty runs the embedded Redis in data_dir/redis
    admin_token: SecretStr | None = None  # also CONCERTBOT_ADMIN_TOKEN; empty disables the web admin actions
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)  # also CONCERTBOT_HTTP_PORT; 0 turns the web side off


class Data(BaseModel):
    # Most pieces taken from each style of the music21 corpus (0 = all of them).
    max_pieces_per_style: int = Field(0, ge=0)
    valid_percent: float = Field(5.0, ge=0.0, le=50.0)
    workers: int = Field(0, ge=0)  # 0 = one per core


class Train(BaseModel):
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(256, ge=16)
    n_head: int = Field(4, ge=1)
    context: int = Field(512, ge=32)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(200, ge=0)
    max_steps: int = Field(5000, ge=1)
    eval_every: int = Field(250, ge=1)
    save_every: int = Field(250, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 1234


class Generation(BaseModel):
    # False samples in the concert's own process (the default). True sends each piece to `concertbot worker`s
    # through the Redis at REDIS_URL (bot/concert/remote.py), which they share with other concerts.
    remote: bool = False
    namespace: str = "concertbot"  # the first part of the job streams' keys; workers and concerts must agree
    wait_seconds: float = Field(30.0, gt=0.0, le=3600.0)  # a remote piece fails after this long with no tokens
    # A worker that has not refreshed its claim on a piece for this long is taken for dead, and another worker
    # continues the piece. Live workers refresh theirs several times a second.
    claim_idle_seconds: float = Field(3.0, ge=0.5, le=600.0)
    # In-process pieces of `concertbot run`: "on" samples every channel's pieces in one shared batched loop
    # (bot/concert/batchloop.py), "off" each channel one piece at a time in its own thread, "auto" batches
    # with two channels or more. A piece's notes are the same either way.
    batched: Literal["auto", "on", "off"] = "auto"


class Channel(BaseModel):
    """One `[[channels]]` table: a channel of its own (queue, leaderboard, concert, overlay, outputs) in a
    deployment that serves several; everything it does not name is the top-level setting."""

    model_config = ConfigDict(extra="forbid")

    # Its Redis keys live under "<namespace>.<name>", so the name is part of a key name: short and plain.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    twitch_channel: str | None = None  # the Twitch login whose chat it reads; None: local (web) chat only
    outputs: Outputs | None = None  # replaces [outputs] whole: one sound card or RTMP push per channel
    concert: dict[str, Any] = {}  # [concert] keys to override (http_port, max_queue, ...); not redis_url
    sampling: dict[str, Any] = {}  # [sampling] keys to override (seconds, critic, ...)


SHARED_CONCERT_KEYS = ("redis_url",)  # one Redis for every channel


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONCERTBOT_", env_nested_delimiter="__", extra="forbid")

    paths: Paths = Paths()
    sampling: Sampling = Sampling()
    synth: Synth = Synth()
    engine: Engine = Engine()
    loudness: Loudness = Loudness()
    outputs: Outputs = Outputs()
    concert: Concert = Concert()
    data: Data = Data()
    train: Train = Train()
    generation: Generation = Generation()
    # Empty: one channel, made of the settings above (a single streamer's bot, as it always was).
    channels: list[Channel] = []

    @model_validator(mode="after")
    def _channels_apart(self) -> Self:
        names = [ch.name for ch in self.channels]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"channel names must differ; repeated: {', '.join(dupes)}")
        ports: dict[int, str] = {}
        for ch in self.channels:
            if shared := [k for k in SHARED_CONCERT_KEYS if k in ch.concert]:
                raise ValueError(f"channel {ch.name!r}: {', '.join(shared)} is shared by every channel")
            try:
                port = _overridden(self, ch).concert.http_port
            except ValidationError as exc:
                raise ValueError(f"channel {ch.name!r}: " + "; ".join(_problems(exc))) from None
            if port and port in ports:
                raise ValueError(
                    f"channels {ports[port]!r} and {ch.name!r} both want http_port {port}; "
                    "give each channel its own in its [channels.concert]"
                )
            ports[port] = ch.name
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = [DEFAULTS_FILE, Path("concertbot.toml")]
        if extra := os.environ.get("CONCERTBOT_CONFIG"):
            if not Path(extra).is_file():
                raise ConfigError(f"CONCERTBOT_CONFIG names {extra!r}, which is not a file")
            files.append(Path(extra))
        # Later files win in pydantic-settings' TOML source, so the list runs from defaults up.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=[f for f in files if f.is_file()])
        return (init_settings, env_settings, toml)


SHORT_NAMES = [
    ("CONCERTBOT_RECORD", "outputs", "record"),
    ("REDIS_URL", "concert", "redis_url"),
    ("CONCERTBOT_ADMIN_TOKEN", "concert", "admin_token"),
    ("CONCERTBOT_HTTP_PORT", "concert", "http_port"),
]


def load_settings(**overrides: Any) -> Settings:
    """Read and validate every setting once; a bad value becomes a ConfigError quoting it."""
    # The switches a streamer is most likely to set by hand get short names of their own.
    for env, section, key in SHORT_NAMES:
        if (value := os.environ.get(env)) and f"CONCERTBOT_{section.upper()}__{key.upper()}" not in os.environ:
            overrides.setdefault(section, {})[key] = value
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError("bad settings: " + "; ".join(_problems(exc))) from None


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        # A check of several settings at once (the channels') has no one place: its message names them.
        problems.append(f"{where} = {err.get('input')!r}: {err['msg']}" if where else err["msg"])
    return problems


@dataclass(frozen=True)
class ChannelPlan:
    """What one channel of a deployment runs with: its name, Redis namespace, settings and Twitch login."""

    name: str
    namespace: str
    settings: Settings
    twitch_channel: str | None


def _overridden(settings: Settings, ch: Channel) -> Settings:
    for section, model, given in (("concert", Concert, ch.concert), ("sampling", Sampling, ch.sampling)):
        if unknown := sorted(set(given) - set(model.model_fields)):
            # [concert] itself ignores unknown keys; a channel's misspelt override would then do nothing.
            raise ValueError(f"channel {ch.name!r}: [{section}] has no {', '.join(unknown)}")
    concert = Concert.model_validate({**settings.concert.model_dump(), **ch.concert})
    sampling = Sampling.model_validate({**settings.sampling.model_dump(), **ch.sampling})
    update: dict[str, Any] = {"concert": concert, "sampling": sampling, "channels": []}
    if ch.outputs is not None:
        update["outputs"] = ch.outputs
    return settings.model_copy(update=update)


def channel_plans(settings: Settings, namespace: str, twitch_channel: str | None = None) -> list[ChannelPlan]:
    """The channels `settings` serve, first the one local terminal chat speaks to.

    Without `[[channels]]`: one channel, the settings as they are, under `namespace` itself (so a bot that
    ran before keeps its queue and leaderboard) and reading `twitch_channel`. With them: each under
    "<namespace>.<name>".
    """
    if not settings.channels:
        return [ChannelPlan("default", namespace, settings, twitch_channel)]
    return [
        ChannelPlan(ch.name, f"{namespace}.{ch.name}", _overridden(settings, ch), ch.twitch_channel)
        for ch in settings.channels
    ]
