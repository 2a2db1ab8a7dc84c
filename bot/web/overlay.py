"""The OBS overlay: its page, and the hub that pushes the concert's state to every open overlay.

One hub task subscribes to the view once and fans out to the overlays' WebSockets; each overlay has a
bounded outbox drained by its own handler, so a stalled browser source never holds up the others. An event
triggers a fresh read of what it touched (now playing, queue, leaderboard) rather than trusting its data;
"notes" events are passed through as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from aiohttp import WSCloseCode, web

from bot.state.outage import FailureLog, stop_if_cancelled
from bot.state.store import StoreUnavailable
from bot.web.data import (
    WebInputError,
    board_json,
    notes_json,
    now_json,
    parse_panels,
    parse_period,
    queue_json,
    seeds_as_text,
)
from bot.web.view import ConcertEvent, ConcertView, NowView, Period

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
RESYNC = 2.0  # seconds between refreshes without events: queue ETAs drift, and pauses send no event
RECENT_NOTES = 256  # "notes" messages kept for overlays that join mid-piece: the roll's few seconds and more
OUTBOX = 512  # messages an overlay may have waiting before it counts as stalled and is dropped
PAUSE_AFTER = 1.0  # seconds the elapsed time must stand still before the overlay's clock stops
REFRESH_KINDS = {"now": {"now", "queue", "top"}, "queue": {"queue"}, "votes": {"now", "top"}}
AUDIO_TAG = '<audio id="audio" src="/stream.mp3" autoplay preload="auto"></audio>'
# Hidden until overlay.js finds it is not in OBS: a browser source is the stream, and a link there is only
# noise to viewers who cannot click it; the streamer who opens the overlay in a browser tab gets the way in.
CHAT_TAG = '<a id="chat-link" class="chat-link" href="/chat" hidden>Local chat</a>'


class PlayClock:
    """Tells from successive `NowView`s whether the piece is sounding: a paused one's elapsed stands still."""

    def __init__(self) -> None:
        self._seed: int | None = None
        self._elapsed = 0.0
        self._since = 0.0
        self.ticking = True

    def observe(self, now: NowView | None, at: float) -> bool:
        """Whether `now` (read at monotonic time `at`) is ticking."""
        if now is not None and now.paused:
            self.ticking = False
            return False
        if now is None or now.seed != self._seed or abs(now.elapsed - self._elapsed) > 0.01:
            self._seed, self._elapsed, self._since = (now.seed, now.elapsed, at) if now else (None, 0.0, at)
            self.ticking = True
        elif at - self._since >= PAUSE_AFTER:
            self.ticking = False
        return self.ticking


@dataclass(eq=False)
class OverlayClient:
    """One overlay's WebSocket and the messages waiting for it."""

    ws: web.WebSocketResponse
    period: Period
    outbox: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(OUTBOX))
    stalled: bool = False

    def send(self, message: str) -> None:
        """Queue `message`; a client whose outbox is full is cut off instead of slowing everyone down."""
        if self.stalled:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("an overlay stopped reading; dropping it")
            self.stalled = True
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.outbox.put_nowait(None)


class OverlayHub:
    """Fans the view's events out to every connected overlay, as JSON text messages."""

    def __init__(self, view: ConcertView, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: monotonic seconds, by which a piece whose elapsed time stands still counts as paused."""
        self.view = view
        self.clients: set[OverlayClient] = set()
        self._clock = clock
        self._play = PlayClock()
        # The piece's latest "notes" messages, so that an overlay that (re)loads mid-piece shows a full roll.
        self._recent_notes: deque[str] = deque(maxlen=RECENT_NOTES)
        # Held while reading state and queueing it, so a joining overlay's snapshot and the updates after it
        # reach it in order.
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Forward the view's events until cancelled."""
        events = self.view.subscribe()
        said = FailureLog(log, "overlay refreshes")  # once when they start failing, once when they work again
        try:
            while True:
                stop_if_cancelled()  # a cancel that a Redis read swallowed still stops the hub
                batch = await _next_batch(events, RESYNC)
                notes = self._remember_notes(batch)
                if not self.clients:
                    continue
                try:
                    async with self._lock:
                        await self._publish(batch, notes)
                except Exception as exc:
                    said.failed(exc)
                    await asyncio.sleep(RESYNC)
                else:
                    said.worked()
        finally:
            self.view.unsubscribe(events)

    async def join(self, client: OverlayClient) -> None:
        """Send `client` the whole state, then every update."""
        async with self._lock:
            state, boards = await self._read({"now", "queue", "top"}, {client.period})
            _deliver(client, state, boards, list(self._recent_notes))
            self.clients.add(client)

    def leave(self, client: OverlayClient) -> None:
        self.clients.discard(client)

    async def close_all(self) -> None:
        """Say goodbye to every overlay (on shutdown; they reconnect to the next server)."""
        closing = [
            client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for client in self.clients
        ]
        await asyncio.gather(*closing, return_exceptions=True)

    def _remember_notes(self, batch: list[ConcertEvent]) -> list[str]:
        """The batch's "notes" messages, also kept until the next "now" event (a piece started or ended)."""
        notes: list[str] = []
        for event in batch:
            if event.kind == "now":
                self._recent_notes.clear()
                notes.clear()
            elif event.kind == "notes":
                message = _message("notes", **notes_json(event.data))
                self._recent_notes.append(message)
                notes.append(message)
        return notes

    async def _publish(self, batch: list[ConcertEvent], notes: list[str]) -> None:
        kinds: set[str] = set()
        for event in batch:
            kinds |= REFRESH_KINDS.get(event.kind, set() if event.kind == "notes" else {"now", "queue", "top"})
        if not batch:
            kinds = {"now", "queue"}
        state, boards = await self._read(kinds, {client.period for client in self.clients})
        for client in list(self.clients):
            _deliver(client, state, boards, notes)

    async def _read(self, kinds: set[str], periods: set[Period]) -> tuple[list[str], dict[Period, str]]:
        """Fresh messages for `kinds`, and for "top" one leaderboard message per period."""
        state = []
        now = await self.view.now() if "now" in kinds else None
        queue = await self.view.queue() if "queue" in kinds else []
        for _ in range(3):
            # A piece that starts between the two reads would be in neither (no longer next, not yet playing):
            # read again until both describe one moment.
            if "now" not in kinds or "queue" not in kinds or _seed(await self.view.now()) == _seed(now):
                break
            now, queue = await self.view.now(), await self.view.queue()
        if "now" in kinds:
            ticking = self._play.observe(now, self._clock())
            state.append(_message("now", now=now_json(now), ticking=ticking))
        if "queue" in kinds:
            state.append(_message("queue", queue=queue_json(queue)))
        boards = {}
        if "top" in kinds:
            for period in periods:
                boards[period] = _message(
                    "top", period=period, top=board_json(await self.view.leaderboard(period))
                )
        return state, boards


def _seed(now: NowView | None) -> int | None:
    return None if now is None else now.seed


def _deliver(
    client: OverlayClient, state: list[str], boards: dict[Period, str], notes: Sequence[str] = ()
) -> None:
    """Now playing and the queue, then the client's leaderboard, then notes (after the piece they belong to)."""
    for message in state:
        client.send(message)
    if client.period in boards:
        client.send(boards[client.period])
    for message in notes:
        client.send(message)


async def _next_batch(events: asyncio.Queue[ConcertEvent], timeout: float) -> list[ConcertEvent]:
    """The next event and all that queued up behind it; empty after `timeout` s without any."""
    try:
        async with asyncio.timeout(timeout):
            batch = [await events.get()]
    except TimeoutError:
        return []
    while not events.empty():
        batch.append(events.get_nowait())
    return batch


def _message(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **seeds_as_text(fields)}, separators=(",", ":"))


HUB = web.AppKey("overlay_hub", OverlayHub)
HAS_AUDIO = web.AppKey("overlay_has_audio", bool)
TEMPLATE = web.AppKey("overlay_template", Template)
LOCAL_CHAT = web.AppKey("overlay_local_chat", bool)


async def overlay_page(request: web.Request) -> web.Response:
    """The overlay, its panels and leaderboard period chosen by the query string."""
    try:
        period = parse_period(request.query.get("period"))
    except WebInputError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    audio = request.query.get("audio", "").lower() in ("1", "true", "yes", "on") and request.app[HAS_AUDIO]
    html = request.app[TEMPLATE].substitute(
        panels=" ".join(parse_panels(request.query.get("panels"))),
        period=period,
        audio=AUDIO_TAG if audio else "",
        chat=CHAT_TAG if request.app[LOCAL_CHAT] else "",
    )
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def overlay_socket(request: web.Request) -> web.StreamResponse:
    """`GET /ws?period=`: the state now, then every change, as JSON messages; overlays send nothing."""
    try:
        period = parse_period(request.query.get("period"))
    except WebInputError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    # The heartbeat notices an OBS source that vanished without closing; the timeout bounds a close handshake.
    ws = web.WebSocketResponse(heartbeat=20.0, timeout=2.0)
    await ws.prepare(request)
    hub = request.app[HUB]
    client = OverlayClient(ws, period)
    sender = asyncio.create_task(_drain(client))
    try:
        try:
            await hub.join(client)
        except StoreUnavailable as exc:
            log.warning("an overlay could not join: %s", exc)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"state unavailable")
            return ws
        async for _ in ws:
            pass
    finally:
        hub.leave(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return ws


async def _drain(client: OverlayClient) -> None:
    with contextlib.suppress(ConnectionResetError):
        while (message := await client.outbox.get()) is not None:
            await client.ws.send_str(message)
        await client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"overlay too slow")


def add_routes(
    app: web.Application,
    view: ConcertView,
    has_audio: bool,
    local_chat: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> OverlayHub:
    """Serve the overlay at `/` and `/overlay`, its updates at `/ws`, and run their hub with the app.

    `local_chat`: `/chat` is served, and the overlay links to it when it is not open in OBS. `clock`: the
    hub's (`OverlayHub`).
    """
    hub = OverlayHub(view, clock)
    app[HUB] = hub
    app[HAS_AUDIO] = has_audio
    app[LOCAL_CHAT] = local_chat
    app[TEMPLATE] = Template((STATIC / "overlay.html").read_text(encoding="utf-8"))

    async def run_hub(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run(), name="overlay hub")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close_overlays(_: web.Application) -> None:
        await hub.close_all()

    app.cleanup_ctx.append(run_hub)
    app.on_shutdown.append(close_overlays)
    app.router.add_get("/", overlay_page)
    app.router.add_get("/overlay", overlay_page)
    app.router.add_get("/ws", overlay_socket)
    return hub
