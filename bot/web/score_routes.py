"""The score's two addresses: `/p/<seed>.musicxml` (the download MuseScore opens) and `/p/<seed>.svg` (the
engraving the piece page shows). Both come from one `bot.web.score.ScoreCache` per app, built from the piece's
own MIDI off the event loop.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from bot.web.score import MUSICXML_TYPE, Score, ScoreCache, ScoreSpec
from bot.web.view import ConcertView, PieceView

log = logging.getLogger(__name__)

SCORES = web.AppKey("scores", ScoreCache)
KINDS = ("musicxml", "svg")
PAGE_GAP = 20  # SVG units between engraved pages stacked into one picture
_ROOT = re.compile(r'<svg viewBox="0 0 ([0-9.]+) ([0-9.]+)"')


def add_cache(app: web.Application) -> None:
    app[SCORES] = ScoreCache()


def spec_of(piece: PieceView) -> ScoreSpec:
    """What the score prints beside the notes, from the piece's page data."""
    metre = piece.plan.get("metre") if piece.plan else None
    return ScoreSpec(
        title=piece.title or f"{piece.recipe.style.capitalize()} {piece.seed}",
        instruments=piece.recipe.heard(),
        tempo=piece.recipe.tempo,
        key=piece.key,
        metre=metre,
    )


async def score_response(request: web.Request, view: ConcertView, piece: PieceView, kind: str) -> web.Response:
    """The complete piece's MusicXML or SVG; 404 when it has no notes, 500 (logged once) when building fails."""

    async def source() -> tuple[bytes, ScoreSpec] | None:
        midi = await view.piece_midi(piece.seed)
        return None if midi is None else (midi, spec_of(piece))

    try:
        score = await request.app[SCORES].get(piece.seed, source)
    except Exception:
        log.exception("the score of piece %s could not be built", piece.seed)
        raise web.HTTPInternalServerError(
            text=f"The score of piece {piece.seed} could not be engraved."
        ) from None
    if score is None:
        raise web.HTTPNotFound(text=f"Piece {piece.seed} has no notes.")
    headers = {"Cache-Control": "public, max-age=86400"}  # a complete piece never changes
    if kind == "musicxml":
        headers["Content-Disposition"] = f'attachment; filename="concertbot-{piece.seed}.musicxml"'
        return web.Response(body=score.musicxml, content_type=MUSICXML_TYPE, headers=headers)
    return web.Response(text=one_picture(score), content_type="image/svg+xml", headers=headers)


def one_picture(score: Score) -> str:
    """Verovio's pages stacked into one SVG, so the page shows the whole score as one image."""
    placed, width, y = [], 0.0, 0.0
    for page in score.svg:
        match = _ROOT.search(page)
        if match is None:  # not the root Verovio writes: show the page on its own rather than nothing
            return page
        w, h = float(match.group(1)), float(match.group(2))
        placed.append(
            _ROOT.sub(f'<svg x="0" y="{y:g}" width="{w:g}" height="{h:g}" viewBox="0 0 {w:g} {h:g}"', page, 1)
        )
        width, y = max(width, w), y + h + PAGE_GAP
    height = max(0.0, y - PAGE_GAP)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}" '
        f'viewBox="0 0 {width:g} {height:g}">' + "".join(placed) + "</svg>"
    )
