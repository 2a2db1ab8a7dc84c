"""`concertbot run`: the whole concert in one task group: store, engine, conductor, chat (Twitch or local).

Everything is opened with `async with`/`with` and closed in reverse order, so a Ctrl-C or a cancelled test
leaves no thread, socket or Redis server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from bot.chat.handlers import ChatCommands, Reply
from bot.chat.journal import JournalWriter, Written
from bot.chat.message import ChatMessage
from bot.chat.sendqueue import Importance, Sender, SendQueue, SendWindow
from bot.concert.batchloop import BatchLoop, TokenSource
from bot.concert.conductor import Conductor
from bot.concert.player import LiveSession, build_sinks
from bot.concert_view import LiveConcertView
from bot.state.embedded_redis import embedded_redis
from bot.state.lock import data_folder_lock
from bot.state.store import QueueLimits, Store, open_store
from config.errors import ConfigError
from config.settings import ChannelPlan, Settings, channel_plans
from config.twitch import TwitchSettings
from generator.model import LoadedModel, load_model
from generator.sampling import Composer
from synth.sinks import AudioSink

if TYPE_CHECKING:
    from bot.chat.twitch import TwitchConnection

log = logging.getLogger(__name__)


@dataclass
class Concert:
    """The running parts, for tests and the web side to reach."""

    settings: Settings
    store: Store
    session: LiveSession
    conductor: Conductor
    commands: ChatCommands
    say: Callable[[Reply], None]
    channel: str = "default"
    twitch: TwitchSettings | None = None  # the Twitch chat it reads; None: local chat
    local_replies: list[str] = field(default_factory=list)

    async def chat(self, msg: ChatMessage) -> list[Reply]:
        """One chat line through the command path; its replies are also said in chat."""
        replies = await self.commands.handle(msg)
        for reply in replies:
            self.say(reply)
        return replies


async def run_concert(
    settings: Settings,
    twitch: TwitchSettings | None,
    *,
    local_input: TextIO | None = None,
    sinks: list[AudioSink] | None = None,
    seconds: float | None = None,
    started: Callable[[Concert], Awaitable[None] | None] | None = None,
    namespace: str = "concertbot",
    channels_started: Callable[[dict[str, Concert]], Awaitable[None] | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run the concert of every channel the settings name until cancelled, or for `seconds`.

    Args:
        settings: everything configurable; `[[channels]]` in it makes several concerts (see
            `config.settings.channel_plans`), each with its own queue, leaderboard, engine, outputs and web
            side, sharing one loaded model and one Redis.
        twitch: Twitch credentials, or None for local chat (typed into `local_input`, one line per message,
            "name: text" to speak as a viewer, plain text to speak as the streamer). With `[[channels]]`, a
            channel reads the Twitch chat of its `twitch_channel`, and one without it local (web) chat only;
            every channel's chat goes over one connection of the bot account (`TwitchConnection`).
        local_input: where local chat comes from (the first channel's); None reads nothing.
        sinks: outputs to use instead of those the first channel's settings name.
        seconds: stop after this long (demos and tests); None runs until cancelled.
        started: called with the first channel's running Concert once every channel is up.
        namespace: the first part of every Redis key, so that several bots can share one server.
        channels_started: called with every running Concert by channel name once every channel is up.
        clock: monotonic seconds, the one clock every channel's engine, generator, conductor, chat cooldowns
            and overlay keep time by; injected for tests.
    """
    plans = channel_plans(settings, namespace, twitch.channel if twitch is not None else None)
    _one_channel_per_chat(plans)
    c = settings.concert
    redis_url = c.redis_url.get_secret_value() if c.redis_url else None
    with contextlib.ExitStack() as claimed:
        # What another program can hold is claimed first, so that nothing plays or starts before it fails.
        if redis_url is None:
            claimed.enter_context(data_folder_lock(settings.paths.data_dir))
        listeners: dict[str, socket.socket | None] = {}
        for plan in plans:
            pc = plan.settings.concert
            listeners[plan.name] = (
                claimed.enter_context(listen(pc.http_host, pc.http_port)) if pc.http_port else None
            )
        async with contextlib.AsyncExitStack() as stack:
            if redis_url is None and len(plans) > 1:
                # One embedded server for every channel; a single channel opens its own as it always did.
                path = await stack.enter_async_context(embedded_redis(settings.paths.data_dir / "redis"))
                redis_url = f"unix://{path}"
            loaded = load_model(settings.paths.model_dir)  # once: every channel samples from the same weights
            source: TokenSource | None = None
            if shares_generator(settings, len(plans)):
                # Opened before the channels, closed after them: no channel's thread waits on a stopped loop.
                source = stack.enter_context(BatchLoop(Composer(loaded), clock))
                log.info("generation: one batched generator for %d channel(s)", len(plans))
            link: TwitchConnection | None = None
            if twitch is not None and any(plan.twitch_channel for plan in plans):
                from bot.chat.twitch import TwitchConnection

                # One login, one EventSub WebSocket for every channel's chat (Twitch allows a user three).
                link = await stack.enter_async_context(TwitchConnection(twitch))
            account_sends = SendWindow()  # the bot account's lines, which Twitch counts over channels
            concerts: dict[str, Concert] = {}
            tasks: list[asyncio.Task[None]] = []
            conductors: list[asyncio.Task[None]] = []
            try:
                for i, plan in enumerate(plans):
                    login = chat_login(plan.twitch_channel or "")
                    chat = twitch.model_copy(update={"channel": login}) if twitch else None
                    concert, more = await _open_channel(
                        stack,
                        plan,
                        loaded,
                        redis_url,
                        listeners[plan.name],
                        chat if plan.twitch_channel else None,
                        sinks if i == 0 else None,
                        source,
                        clock,
                        link=link,
                        account_sends=account_sends,
                    )
                    concerts[plan.name] = concert
                    conductors.append(more[0])
                    tasks += more
                first = concerts[plans[0].name]
                if first.twitch is None and local_input is not None:
                    tasks.append(asyncio.create_task(_read_local_chat(local_input, first), name="local chat"))
                if started is not None and asyncio.iscoroutine(result := started(first)):
                    await result
                if channels_started is not None and asyncio.iscoroutine(result := channels_started(concerts)):
                    await result
                done, _ = await asyncio.wait(conductors, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a conductor only ends by failing: let that be seen
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def _open_channel(
    stack: contextlib.AsyncExitStack,
    plan: ChannelPlan,
    loaded: LoadedModel,
    redis_url: str | None,
    listener: socket.socket | None,
    twitch: TwitchSettings | None,
    sinks: list[AudioSink] | None,
    source: TokenSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    link: TwitchConnection | None = None,
    account_sends: SendWindow | None = None,
) -> tuple[Concert, list[asyncio.Task[None]]]:
    """Open one channel's parts on `stack` and start its tasks, the conductor's first."""
    settings = plan.settings
    c = settings.concert
    limits = QueueLimits(c.max_per_viewer, c.max_queue)
    store = await stack.enter_async_context(
        open_store(redis_url, settings.paths.data_dir, plan.namespace, limits=limits)
    )
    if not c.autoplay:
        await store.set_flags(autoplay=False)
    outputs = build_sinks(settings) if sinks is None else list(sinks)
    broadcast = None
    if c.http_port:
        from synth.http_audio import AudioBroadcast

        broadcast = AudioBroadcast()  # the overlay's ?audio=1 and any player: /stream.mp3, /stream.wav
        outputs.append(broadcast)
    session = stack.enter_context(LiveSession(settings, loaded, outputs, clock=clock, source=source))
    speak: Callable[[Reply], None] = lambda reply: None  # noqa: E731 (replaced once chat is up)
    conductor = Conductor(
        settings,
        loaded,
        store,
        session,
        announce=lambda text, mention: speak(Reply(text, Importance.NOW_PLAYING, None, mention)),
    )
    session.listener = conductor.on_engine_event
    commands = ChatCommands(settings, conductor, store)
    concert = Concert(settings, store, session, conductor, commands, lambda r: speak(r), plan.name, twitch)
    if twitch is not None and link is not None:

        async def on_message(msg: ChatMessage) -> None:
            await concert.chat(msg)

        setting = "TWITCH_CHANNEL" if plan.name == "default" else f"channels {plan.name!r}: twitch_channel"
        chat = await link.join(twitch.channel, on_message, setting=setting)
        # Its own queue (order, merging, the moderator's limit where the bot moderates), counted with the rest.
        sender = await stack.enter_async_context(
            Sender(SendQueue(sent=account_sends), chat.send, is_moderator=lambda: chat.bot_is_moderator)
        )

        def speak_twitch(reply: Reply) -> None:
            sender.say(reply.text, reply.importance, reply.reply_to, reply.mention)

        speak = speak_twitch
    else:
        tag = "" if plan.name == "default" else f"[{plan.name}] "  # which channel's bot, when several speak

        def speak_local(reply: Reply) -> None:
            line = f"@{reply.mention} {reply.text}" if reply.mention else reply.text
            concert.local_replies.append(line)
            print(f"{tag}bot> {line}", flush=True)

        speak = speak_local
    await conductor.start()
    tasks = [asyncio.create_task(conductor.run(), name=f"conductor {plan.name}")]

    # What chat asked for while Redis was away, written once it is back.
    def journal_written(written: Written) -> None:
        for reply in commands.journal_written(written):
            concert.say(reply)

    writer = JournalWriter(commands.journal, store, journal_written)
    tasks.append(asyncio.create_task(writer.run(), name=f"outage journal {plan.name}"))
    if listener is not None:
        # The web chat box speaks as anyone, the streamer included: only on a local-only server.
        local = twitch is None and c.http_host in ("127.0.0.1", "localhost", "::1")
        view = await stack.enter_async_context(_web(concert, broadcast, listener, local=local))
        tasks.append(asyncio.create_task(view.publish_forever(), name=f"overlay updates {plan.name}"))
    return concert, tasks


def _one_channel_per_chat(plans: list[ChannelPlan]) -> None:
    """ConfigError when two channels name one Twitch chat: both concerts would answer every line in it."""
    readers: dict[str, str] = {}
    for plan in plans:
        if plan.twitch_channel is None:
            continue
        login = chat_login(plan.twitch_channel)
        if login in readers:
            raise ConfigError(
                f"channels {readers[login]!r} and {plan.name!r} both read twitch_channel {login!r}; "
                "give each its own Twitch chat"
            )
        readers[login] = plan.name


def chat_login(twitch_channel: str) -> str:
    """A `twitch_channel` as Twitch names the chat: its login, without `#` or capitals."""
    return twitch_channel.strip().removeprefix("#").lower()


def shares_generator(settings: Settings, channels: int) -> bool:
    """Whether the deployment's channels sample in one shared batched loop (`generation.batched`)."""
    g = settings.generation
    if g.remote:  # `concertbot worker`s sample every piece
        return False
    return g.batched == "on" or (g.batched == "auto" and channels > 1)


@contextlib.asynccontextmanager
async def _web(
    concert: Concert, broadcast: AudioSink | None, listener: socket.socket, local: bool
) -> AsyncIterator[LiveConcertView]:
    """The overlay, pages, API and metrics on `concert.http_host:http_port`, for as long as the concert runs."""
    from aiohttp import web

    from bot.chat.journal import JournalCollector
    from bot.web.server import HTTP_LOG, REGISTRY, make_app

    c = concert.settings.concert
    view = LiveConcertView(concert)
    token = c.admin_token.get_secret_value() if c.admin_token else None
    runners = concert.session.engine.runners
    app = make_app(
        view,
        token,
        broadcast,  # type: ignore[arg-type]
        local_chat=local,
        hosts=[c.http_host],
        outputs=lambda: [r.status() for r in runners],
        clock=concert.conductor.clock,
    )
    app[REGISTRY].register(JournalCollector(concert.commands.journal))
    runner = web.AppRunner(app, logger=HTTP_LOG)  # a request aiohttp cannot parse: one line, no traceback
    await runner.setup()
    await web.SockSite(runner, listener).start()
    log.info("overlay: http://%s:%d/overlay  (add ?audio=1 to carry the sound)", c.http_host, c.http_port)
    try:
        yield view
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def listen(host: str, port: int) -> Iterator[socket.socket]:
    """A socket listening on `host:port` for the web side; `ConfigError` if the port is taken."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(
            f"concert.http_port = {port}: cannot listen on {host} ({exc.strerror or exc}); "
            "is another program (or another concertbot) using it?"
        ) from None
    sock.setblocking(False)
    with sock:
        yield sock


async def _read_local_chat(stream: TextIO, concert: Concert) -> None:
    """Local chat: the streamer types commands in the terminal, through the same path as Twitch chat."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        # A daemon thread: a terminal that never sends end-of-file must not keep the program from exiting.
        for line in stream:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read, name="local chat", daemon=True).start()
    count = 0
    while line := await lines.get():
        name, text = "streamer", line.strip()
        if ":" in text and not text.startswith("!"):
            head, rest = text.split(":", 1)
            if head.strip().isidentifier():
                name, text = head.strip().lower(), rest.strip()
        count += 1
        await concert.chat(
            ChatMessage(
                user_id=f"local:{name}",
                login=name,
                display_name=name,
                text=text,
                message_id=f"local-{count}",
                is_broadcaster=name == "streamer",
            )
        )


def stdin_if_interactive() -> TextIO | None:
    """The terminal (or a pipe) for local chat; None when the process has no standard input."""
    return sys.stdin if sys.stdin is not None and not sys.stdin.closed else None
