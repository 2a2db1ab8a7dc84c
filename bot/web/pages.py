"""The web pages people open: a piece's page and downloads, the leaderboard, the local chat box, errors.

Pages are small enough to write as escaped f-strings; everything that came from chat (styles, logins) goes
through `html.escape`. Scripts live in `bot/static/`, never inline, so the pages can forbid inline script.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from aiohttp import web

from bot.web.data import PERIODS, WebInputError, parse_period, parse_seed
from bot.web.score_routes import KINDS as SCORE_KINDS
from bot.web.score_routes import add_cache, score_response
from bot.web.view import BoardView, ConcertView, PieceView

VIEW = web.AppKey("concert_view", ConcertView)
LOCAL_CHAT = web.AppKey("local_chat", bool)  # whether /chat is served: then every page links to it
PERIOD_NAMES = {"stream": "This stream", "week": "This week", "all": "All time"}
# A cadence's root (semitones above the tonic) as a degree of the key, cased by the chord the sampler builds
# on it from the key's scale (generator.steering: major, or harmonic minor); a root outside it gets a ♯ or ♭.
MAJOR_DEGREES = ("I", "♭II", "ii", "♭III", "iii", "IV", "♯iv°", "V", "♭VI", "vi", "♭VII", "vii°")
MINOR_DEGREES = ("i", "♭II", "ii°", "III", "♯III", "iv", "♯iv°", "V", "VI", "♯vi°", "VII", "vii°")


def page(
    title: str, body: str, status: int = 200, scripts: tuple[str, ...] = (), chat: bool = False
) -> web.Response:
    """A whole HTML page around `body` (already escaped); `chat` adds the local chat box to its links."""
    tags = "".join(f'<script src="/static/{name}" defer></script>' for name in scripts)
    chat_link = '<a href="/chat">Local chat</a>' if chat else ""
    text = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · concertbot</title>
<link rel="stylesheet" href="/static/pages.css">{tags}
</head>
<body>
<header><a class="brand" href="/top">♪ concertbot</a>
<nav><a href="/top">Leaderboard</a>{chat_link}</nav></header>
<main>
{body}
</main>
</body>
</html>
"""
    return web.Response(text=text, status=status, content_type="text/html")


def error_page(status: int, title: str, detail: str, chat: bool = False) -> web.Response:
    """An error as a page a person can read, with a way back."""
    body = f"""<section class="card error">
<p class="status">{status}</p>
<h1>{html.escape(title)}</h1>
<p>{html.escape(detail)}</p>
<p><a href="/top">See the leaderboard</a></p>
</section>"""
    return page(title, body, status=status, chat=chat)


def not_found(what: str = "There is nothing at this address.", chat: bool = False) -> web.Response:
    return error_page(404, "Not found", what, chat)


def _names(words: tuple[str, ...]) -> str:
    return ", ".join(html.escape(word) for word in words) or "—"


def _who(requester: str | None) -> str:
    return html.escape(requester) if requester else "the bot"


def _length(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _key(name: str) -> str:
    """ "F#m" -> "F♯ minor"."""
    tonic, minor = (name[:-1], True) if name.endswith("m") else (name, False)
    return html.escape(f"{tonic.replace('#', '♯').replace('b', '♭')} {'minor' if minor else 'major'}")


def _bars(n: int) -> str:
    return f"{n} bar" if n == 1 else f"{n} bars"


def form_line(plan: dict[str, Any], key: str | None) -> str:
    """A plan (`bot.concert_view.plan_summary`) in a line: "A A B B · 24 bars of 2/4 · phrases of 4 bars,
    cadences on I, V, I"."""
    phrases = plan["phrases"]
    lengths = sorted({p["bars"] for p in phrases})
    span = _bars(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}–{_bars(lengths[-1])}"
    degrees = MINOR_DEGREES if key and key.endswith("m") else MAJOR_DEGREES
    cadences = ", ".join(degrees[p["cadence"] % 12] for p in phrases)
    many = len(phrases) > 1
    said = f"{'phrases' if many else 'one phrase'} of {span}, {'cadences' if many else 'cadence'} on {cadences}"
    return html.escape(f"{plan['form']} · {_bars(plan['bars'])} of {plan['metre']} · {said}")


def _steers(steers: tuple[dict[str, Any], ...]) -> str:
    """What chat changed, where: "!add harp at bar 6 (0:12) · !faster at bar 9 (0:20)"."""
    said = [
        f"{s['steer']} at bar {s['bar'] + 1} ({int(s['at']) // 60}:{int(s['at']) % 60:02d})" for s in steers
    ]
    return html.escape(" · ".join(said))


def piece_body(piece: PieceView, chat: bool = False) -> str:
    """The piece page's content: recipe, votes, player and downloads (the notes so far while it is composed).

    `chat`: the local chat box is served, and the hint to replay the piece links to it.
    """
    seed, recipe = piece.seed, piece.recipe
    created = dt.datetime.fromtimestamp(piece.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("Style", html.escape(recipe.style)),
        ("Instruments", _names(recipe.heard())),
        ("Tempo", f"{recipe.tempo:g} bpm"),
        *([("Key", _key(piece.key))] if piece.key else []),
        ("Length", _length(recipe.seconds)),
        *([("Form", form_line(piece.plan, piece.key))] if piece.plan else []),
        *([("Steered by chat", _steers(piece.steers))] if piece.steers else []),
        ("Temperature", f"{recipe.temperature:g}"),
        ("Top-p", f"{recipe.top_p:g}"),
        ("Model", html.escape(piece.model_version)),
        ("Requested by", _who(piece.requester)),
        ("Composed", created),
    ]
    table = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    if piece.complete:
        listen = f"""<audio controls preload="none" src="/p/{seed}.wav"></audio>
<p class="downloads"><a class="button" href="/p/{seed}.mid" download>Download MIDI</a>
<a class="button" href="/p/{seed}.wav" download>Download WAV</a>
<a class="button" href="/p/{seed}.musicxml" download>Download MusicXML</a></p>"""
        # The engraving is its own request: the page comes at once, the score when Verovio has drawn it.
        score = f"""<figure class="score">
<img src="/p/{seed}.svg" alt="The score of piece {seed}" loading="lazy"></figure>"""
    else:
        score = ""
        listen = f"""<p class="note">Still being composed: the WAV and the whole MIDI come when it has
finished.</p>
<p class="downloads"><a class="button" href="/p/{seed}.mid" download>Download the notes so far (MIDI)</a></p>"""
    votes = "vote" if piece.votes == 1 else "votes"
    where = '<a href="/chat">the local chat</a>' if chat else "chat"
    # A title names the piece; the style is then the line above it, as a programme prints them.
    kicker = f"{html.escape(recipe.style)} · " if piece.title else ""
    return f"""<section class="card piece">
<p class="kicker">{kicker}Piece <span class="seed">{seed}</span></p>
<h1>{html.escape(piece.title or recipe.style)}</h1>
<p class="votes"><strong>{piece.votes}</strong> {votes}</p>
{listen}
<table class="recipe">
{table}
</table>
{score}
<p class="hint">Play it again on stream: type <code>!replay {seed}</code> in {where}.</p>
</section>"""


def top_body(period: str, board: list[BoardView]) -> str:
    """The leaderboard page's content: tabs for the periods, then the table."""
    tabs = "".join(
        f'<a href="/top?period={name}"{" class=current" if name == period else ""}>{PERIOD_NAMES[name]}</a>'
        for name in PERIODS
    )
    rows = "\n".join(
        f"""<tr><td class="rank">{row.rank}</td><td class="num">{row.votes}</td>
<td><a href="/p/{row.seed}">{html.escape(row.recipe.style if row.recipe else "?")}</a></td>
<td>{_names(row.recipe.heard() if row.recipe else ())}</td>
<td>{_who(row.requester)}</td><td class="seed">{row.seed}</td></tr>"""
        for row in board
    )
    if not rows:
        rows = (
            '<tr><td colspan="6" class="empty">No votes yet: type <code>!vote</code> during a piece.</td></tr>'
        )
    return f"""<section class="card">
<h1>Leaderboard</h1>
<nav class="tabs">{tabs}</nav>
<table class="board">
<thead><tr><th>#</th><th>Votes</th><th>Style</th><th>Instruments</th><th>Requested by</th><th>Seed</th>
</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</section>"""


CHAT_BODY = """<section class="card chat">
<h1>Local chat</h1>
<p class="hint">Lines typed here go through the same commands as Twitch chat,
e.g. <code>!compose bach</code>.</p>
<ol id="log" class="log" aria-live="polite"></ol>
<form id="chat" autocomplete="off">
<input id="user" name="user" maxlength="25" pattern="[A-Za-z0-9_]{1,25}" required placeholder="name">
<input id="text" name="text" maxlength="500" required placeholder="!compose bach violin">
<button type="submit">Send</button>
</form>
</section>"""


# Handlers


async def piece_route(request: web.Request) -> web.StreamResponse:
    """`/p/<seed>`, `/p/<seed>.mid`, `/p/<seed>.wav`, and the score: `/p/<seed>.musicxml`, `/p/<seed>.svg`."""
    name = request.match_info["name"]
    stem, dot, kind = name.partition(".")
    seed = parse_seed(stem)
    chat = request.app[LOCAL_CHAT]
    if seed is None or (dot and kind not in ("mid", "wav", *SCORE_KINDS)):
        return not_found("Seeds are whole numbers of up to 19 digits, like /p/123456789.", chat)
    view = request.app[VIEW]
    piece = await view.piece(seed)
    if piece is None:
        return not_found(f"No piece has the seed {seed} (yet).", chat)
    if not dot:
        return page(f"{piece.title or piece.recipe.style} · {seed}", piece_body(piece, chat), chat=chat)
    if not piece.complete:
        so_far = await view.piece_midi_so_far(seed) if kind == "mid" else None
        if so_far is None:
            detail = f"Piece {seed} has no notes to offer yet: it is composed as it plays."
            return error_page(404, "Not ready", detail, chat)
        # Generation runs only seconds ahead of the sound: the notes so far, said to be partial, and never
        # cached, since the next request gets more of them.
        disposition = f'attachment; filename="concertbot-{seed}-partial.mid"'
        response = bytes_response(request, so_far, "audio/midi", disposition, cache="no-store")
        response.headers["X-Concertbot-Partial"] = "1"
        return response
    if kind in SCORE_KINDS:
        return await score_response(request, view, piece, kind)
    data = await (view.piece_midi(seed) if kind == "mid" else view.piece_wav(seed))
    if data is None:
        return not_found(f"Piece {seed} has no {kind.upper()} file.", chat)
    content_type = "audio/midi" if kind == "mid" else "audio/wav"
    disposition = "attachment" if kind == "mid" else "inline"
    return bytes_response(request, data, content_type, f'{disposition}; filename="concertbot-{seed}.{kind}"')


def bytes_response(
    request: web.Request,
    data: bytes,
    content_type: str,
    disposition: str,
    cache: str = "public, max-age=86400",  # a complete piece never changes
) -> web.Response:
    """`data` whole, or the byte range asked for (so an audio player can seek); 416 for a range past the end."""
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "Accept-Ranges": "bytes",
        "Cache-Control": cache,
    }
    try:
        wanted = request.http_range
    except ValueError:
        wanted = slice(None)
    if wanted.start is None and wanted.stop is None:
        return web.Response(body=data, headers=headers)
    start, stop, _ = wanted.indices(len(data))
    if start >= stop:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
    return web.Response(body=data[start:stop], status=206, headers=headers)


async def top_page(request: web.Request) -> web.Response:
    """`/top?period=stream|week|all`."""
    try:
        period = parse_period(request.query.get("period"))
    except WebInputError as exc:
        return error_page(400, "Unknown period", str(exc), request.app[LOCAL_CHAT])
    board = await request.app[VIEW].leaderboard(period, 20)
    return page(f"Leaderboard · {PERIOD_NAMES[period]}", top_body(period, board), chat=request.app[LOCAL_CHAT])


async def chat_page(_: web.Request) -> web.Response:
    return page("Local chat", CHAT_BODY, scripts=("chat.js",))


def add_routes(app: web.Application, local_chat: bool) -> None:
    """Serve the piece pages, the leaderboard and (if `local_chat`) the chat box page; needs `app[VIEW]`."""
    app[LOCAL_CHAT] = local_chat
    add_cache(app)
    app.router.add_get("/p/{name}", piece_route)
    app.router.add_get("/top", top_page)
    if local_chat:
        app.router.add_get("/chat", chat_page)
