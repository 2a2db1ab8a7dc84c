"""The concert's web side: OBS overlay, pages, JSON API, Prometheus metrics and health, in one aiohttp app.

    app = make_app(view, admin_token=os.environ.get("CONCERTBOT_ADMIN_TOKEN"), broadcast=broadcast)
    runner = web.AppRunner(app)   # or web.run_app(app, host="127.0.0.1", port=8080)

Everything is read through the `ConcertView` protocol (`bot.web.view`); the app holds no concert state itself.
Routes:

    /  /overlay ?panels=now,queue,top,roll &period= &audio=1    the OBS browser source
    /ws ?period=                    the overlay's live updates (JSON text messages)
    /p/<seed>  /p/<seed>.mid  /p/<seed>.wav  /top ?period=  /chat (local_chat only)
                                    (.mid: the notes so far, marked partial, while the piece is composed)
    GET /api/now  /api/queue  /api/leaderboard ?period= &n=  /api/pieces/<seed>
    POST /api/chat (local_chat only)   POST /api/skip /api/pause /api/resume /api/clear (Bearer admin token)
    /metrics  /healthz  /stream.mp3  /stream.wav (with a broadcast)  /static/...
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.state.store import StoreUnavailable
from bot.web import overlay, pages
from bot.web.data import (
    WebInputError,
    board_json,
    now_json,
    parse_chat,
    parse_count,
    parse_json_body,
    parse_period,
    parse_seed,
    piece_json,
    queue_json,
    same_site,
)
from bot.web.pages import VIEW
from bot.web.view import ConcertView
from synth.http_audio import AudioBroadcast
from synth.http_audio import add_routes as add_audio_routes
from synth.outputs import OutputStatus

log = logging.getLogger(__name__)

STATIC = overlay.STATIC
ADMIN_TOKEN = web.AppKey("admin_token", str)
HOSTS: web.AppKey[tuple[str, ...]] = web.AppKey("hosts", tuple)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAVAILABLE = "state unavailable: Redis is not answering"
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
# No inline script or style anywhere, and nothing fetched from elsewhere: OBS may be offline anyway.
# ws:/wss: are listed because older Chromium (OBS's CEF) does not count a same-host WebSocket as 'self'.
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    view: ConcertView,
    admin_token: str | None,
    broadcast: AudioBroadcast | None = None,
    local_chat: bool = False,
    hosts: Collection[str] = (),
    outputs: Callable[[], Sequence[OutputStatus]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The web app for one concert.

    Args:
        view: the running concert, read and steered through this protocol only.
        admin_token: the secret that `POST /api/skip|pause|resume|clear` need as `Authorization: Bearer ...`;
            None turns those endpoints off (they always answer 401).
        broadcast: the live audio; when given, `/stream.mp3` and `/stream.wav` are served and the overlay's
            `?audio=1` plays the MP3 stream.
        local_chat: serve the `/chat` page and `POST /api/chat`, which speak to the bot as any viewer (as the
            broadcaster only with the admin token): only for a server that strangers cannot reach.
        hosts: the address the server listens on besides localhost, 127.0.0.1 and [::1] (`concert.http_host`);
            a POST whose `Host` or `Origin` names anything else is refused with 403.
        outputs: the engine's outputs as they are now, for `/metrics` (failures and state of each).
        clock: monotonic seconds, the concert's (its conductor's): by it the overlay tells a paused piece.
    """
    app = web.Application(middlewares=[error_pages, same_site_only])
    app[VIEW] = view
    app[HOSTS] = tuple(hosts)
    if admin_token:
        app[ADMIN_TOKEN] = admin_token
    app.on_response_prepare.append(security_headers)

    hub = overlay.add_routes(app, view, has_audio=broadcast is not None, local_chat=local_chat, clock=clock)
    app[REGISTRY] = CollectorRegistry(auto_describe=True)  # one per app: two apps in a process never clash
    app[REGISTRY].register(ConcertCollector(view, hub))
    if outputs is not None:
        app[REGISTRY].register(OutputsCollector(outputs))
    pages.add_routes(app, local_chat)
    app.router.add_get("/api/now", api_now)
    app.router.add_get("/api/queue", api_queue)
    app.router.add_get("/api/leaderboard", api_leaderboard)
    app.router.add_get("/api/pieces/{seed}", api_piece)
    for action in ("skip", "pause", "resume", "clear"):
        app.router.add_post(f"/api/{action}", admin_action(action))
    if local_chat:
        app.router.add_post("/api/chat", api_chat)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    add_static_routes(app)
    if broadcast is not None:
        add_audio_routes(app, broadcast)
        app[REGISTRY].register(BroadcastCollector(broadcast))
    return app


def add_static_routes(app: web.Application) -> None:
    """`/static/<name>` for the files shipped in bot/web/static, and the readable 404 for any other name.

    aiohttp's own static route answers a missing file with an empty application/octet-stream 404, decided
    only as the response is sent, past any middleware; and these files are a fixed few, so a lookup of the
    name is all the routing they need (no path, so no traversal either).
    """
    files = {path.name: path for path in STATIC.iterdir() if path.is_file()}

    async def static(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app.router.add_get("/static/{name}", static)


# Cross-cutting


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's 404 and 405 as JSON under /api/ and as a readable page elsewhere."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        reason = "not found" if exc.status == 404 else f"{request.method} is not allowed here"
        if request.path.startswith("/api/"):
            return web.json_response({"error": reason}, status=exc.status, headers=_allow(exc))
        title = "Not found" if exc.status == 404 else "Method not allowed"
        chat = request.app.get(pages.LOCAL_CHAT, False)
        response = pages.error_page(exc.status, title, "There is nothing like that here.", chat)
        response.headers.update(_allow(exc))
        return response
    except StoreUnavailable as exc:
        # Expected while Redis restarts: one line, no traceback, and an answer that says to come back.
        log.warning("%s %s: %s", request.method, request.path, exc)
        retry = {"Retry-After": "5"}
        if request.path.startswith("/api/"):
            return web.json_response({"error": UNAVAILABLE}, status=503, headers=retry)
        response = pages.error_page(503, "Unavailable", "The concert's records cannot be read right now.")
        response.headers.update(retry)
        return response


@web.middleware
async def same_site_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a state-changing request that names another host: a DNS-rebinding page's requests would."""
    hosts: tuple[str, ...] = request.app[HOSTS]
    if request.method not in SAFE_METHODS and not same_site(request.host, request.headers.get("Origin"), hosts):
        return json_error(403, "this server answers only to its own address")
    return await handler(request)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    return {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}


async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a URL or header past its limits, a malformed line) at ERROR with
    a traceback, though it answers it with a 400: the client's fault, so one INFO line, or anyone could fill the
    log with tracebacks. Set on the logger that `web.AppRunner(app, logger=HTTP_LOG)` hands its handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.msg, record.args = "%s: %d %s", (record.getMessage(), exc.code, exc.message[:200])
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


HTTP_LOG = logging.getLogger("bot.web.http")
HTTP_LOG.addFilter(ClientErrorsInOneLine())


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# Read-only API


async def api_now(request: web.Request) -> web.Response:
    """The piece playing, or `null` when the concert is silent."""
    return web.json_response(now_json(await request.app[VIEW].now()))


async def api_queue(request: web.Request) -> web.Response:
    return web.json_response(queue_json(await request.app[VIEW].queue()))


async def api_leaderboard(request: web.Request) -> web.Response:
    """`?period=stream|week|all` (default stream) and `?n=` rows (default 10, at most 100)."""
    try:
        period = parse_period(request.query.get("period"))
        count = parse_count(request.query.get("n"))
    except WebInputError as exc:
        return json_error(400, str(exc))
    return web.json_response(board_json(await request.app[VIEW].leaderboard(period, count)))


async def api_piece(request: web.Request) -> web.Response:
    seed = parse_seed(request.match_info["seed"])
    piece = None if seed is None else await request.app[VIEW].piece(seed)
    if piece is None:
        return json_error(404, "no such piece")
    return web.json_response(piece_json(piece))


# Steering


def admin_action(action: str) -> Handler:
    """The handler for `POST /api/<action>`: only with the admin token."""

    async def handler(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response(
                {"error": "admin token required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        view = request.app[VIEW]
        if action == "clear":
            return web.json_response({"ok": True, "removed": await view.clear()})
        await {"skip": view.skip, "pause": view.pause, "resume": view.resume}[action]()
        return web.json_response({"ok": True})

    return handler


def authorized(request: web.Request) -> bool:
    """Whether the request carries the admin token; never, when no token is set."""
    token = request.app.get(ADMIN_TOKEN)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    # surrogateescape: aiohttp hands bytes that are not UTF-8 over as lone surrogates; they are just wrong.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


async def api_chat(request: web.Request) -> web.Response:
    """A line from the local chat box: `{"user", "text"}` in, `{"replies": [...]}` out.

    The line is a viewer's; with the admin token it is the broadcaster's, who may !skip, !pause or !block.
    """
    if "Authorization" in request.headers and not authorized(request):
        return web.json_response(
            {"error": "wrong admin token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    # A JSON content type makes a cross-site form or fetch need a CORS preflight, which this app never grants.
    if request.content_type != "application/json":
        return json_error(400, "send the line as JSON (Content-Type: application/json)")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # aiohttp's own answer is text/plain; the API's are JSON
        return json_error(413, f"send at most {request.client_max_size} bytes")
    try:
        line = parse_chat(parse_json_body(body, request.charset))
    except WebInputError as exc:
        return json_error(400, str(exc))
    replies = await request.app[VIEW].chat(line.user, line.text, privileged=authorized(request))
    return web.json_response({"replies": replies})


# Operations


class ConcertCollector(Collector):
    """Reads `view.metrics()` at each scrape, so the numbers are never stale copies."""

    def __init__(self, view: ConcertView, hub: overlay.OverlayHub) -> None:
        self._view = view
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        m = self._view.metrics()
        yield GaugeMetricFamily("concertbot_queue_length", "Requests waiting to be played.", m.queue_length)
        yield GaugeMetricFamily(
            "concertbot_generation_rtf",
            "Seconds of music generated per second of sampling, for the piece playing or last played.",
            m.generation_rtf,
        )
        yield CounterMetricFamily(
            "concertbot_underruns", "Audio blocks the engine could not fill in time.", m.underruns
        )
        yield CounterMetricFamily("concertbot_chat_messages", "Chat messages seen.", m.chat_messages)
        yield CounterMetricFamily("concertbot_votes", "Votes counted.", m.votes)
        requests = CounterMetricFamily("concertbot_requests", "Pieces requested, by style.", labels=["style"])
        for style, count in sorted(m.requests_by_style.items()):
            requests.add_metric([style], count)
        yield requests
        yield GaugeMetricFamily("concertbot_overlay_clients", "Overlays connected now.", len(self._hub.clients))
        try:  # a scrape runs on the concert's loop; a count that keeps growing is a task leak (bench_soak.py)
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # collected off the loop: there is nothing to count
            return
        yield GaugeMetricFamily("concertbot_asyncio_tasks", "Tasks on the concert's event loop now.", tasks)


class OutputsCollector(Collector):
    """Each output's failures and state (`name` is free of stream keys), read at each scrape."""

    STATES = ("starting", "ok", "failing", "stopped")

    def __init__(self, outputs: Callable[[], Sequence[OutputStatus]]) -> None:
        self._outputs = outputs

    def collect(self) -> Iterator[Metric]:
        outputs = self._outputs()
        failures = CounterMetricFamily(
            "concertbot_output_failures", "Times an output failed to open or write.", labels=["output"]
        )
        state = GaugeMetricFamily(
            "concertbot_output_state", "1 for the state each output is in now.", labels=["output", "state"]
        )
        retry = GaugeMetricFamily(
            "concertbot_output_retry_seconds",
            "The wait before a failing output is tried again (doubling, capped); 0 when it works.",
            labels=["output"],
        )
        dropped = CounterMetricFamily(
            "concertbot_output_dropped_blocks", "Audio blocks an output was too slow for.", labels=["output"]
        )
        for o in outputs:
            failures.add_metric([o.name], o.failures)
            for name in self.STATES:
                state.add_metric([o.name, name], float(o.state == name))
            retry.add_metric([o.name], o.retry_delay)
            dropped.add_metric([o.name], o.dropped_blocks)
        yield from (failures, state, retry, dropped)


class BroadcastCollector(Collector):
    """The HTTP audio streams' listeners and what they lost, read at each scrape."""

    def __init__(self, broadcast: AudioBroadcast) -> None:
        self._broadcast = broadcast

    def collect(self) -> Iterator[Metric]:
        b = self._broadcast
        yield GaugeMetricFamily(
            "concertbot_http_audio_listeners", "Clients of /stream.mp3 and /stream.wav now.", b.listeners
        )
        yield CounterMetricFamily(
            "concertbot_http_audio_dropped_seconds",
            "Audio the MP3 encoder could not take in time: a glitch every MP3 listener heard.",
            b.dropped_seconds,
        )
        yield CounterMetricFamily(
            "concertbot_http_audio_slow_listeners", "Listeners cut off for falling behind.", b.too_slow
        )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")
