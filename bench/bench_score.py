"""Speed of the piece page's score: MusicXML from a piece's MIDI (music21) and its engraving (Verovio).

    python bench/bench_score.py [--model DIR] [--seconds 30 240] [--styles bach irish]

Composes each piece with the shipped model (not timed), then times what `/p/<seed>.svg` does the first time
it is asked for (the cache answers every later request at once): read the MIDI onto the grid, build the
MusicXML, engrave every page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bot.concert_view import metre
from bot.web.score import ScoreSpec, midi_notes, musicxml, svg_pages
from generator.decode import midi_bytes, to_midi
from generator.model import load_model
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest, chosen_key, piece_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 240.0])
    parser.add_argument("--styles", nargs="+", default=["bach", "irish"])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    loaded = load_model(args.model)
    composer = Composer(loaded)
    table = Table(title="score of a piece, first request (then cached)")
    for column in ("style", "length", "notes", "MusicXML", "pages", "MusicXML s", "SVG s", "total s"):
        table.add_column(column, justify="right")
    for style in args.styles:
        instruments, tempo = style_defaults(loaded, style)
        for seconds in args.seconds:
            request = PieceRequest(style, instruments, tempo, seconds, args.seed)
            piece = composer.compose(request)
            plan = piece_plan(loaded, request)
            spec = ScoreSpec(
                f"{style} {args.seed}",
                instruments,
                tempo,
                chosen_key(loaded, style, args.seed, None),
                metre(plan.bar) if plan else None,
            )
            data = midi_bytes(to_midi(piece.notes, tempo))
            began = time.perf_counter()
            xml = musicxml(midi_notes(data), spec)
            built = time.perf_counter()
            pages = svg_pages(xml)
            done = time.perf_counter()
            table.add_row(
                style,
                f"{seconds:g} s",
                str(len(piece.notes)),
                f"{len(xml) // 1024} KB",
                str(len(pages)),
                f"{built - began:.2f}",
                f"{done - built:.2f}",
                f"{done - began:.2f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
