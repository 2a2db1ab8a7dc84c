"""`concertbot data titles`: learn the title model from music21's corpus into a model directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SAMPLES = 3  # titles shown per style


def data_titles(
    model: Annotated[
        Path | None, typer.Option(help="The model directory to write titles.json into (default: ours).")
    ] = None,
    no_metadata: Annotated[
        bool,
        typer.Option("--no-metadata", help="Skip music21's metadata (the Renaissance titles; saves ~40 s)."),
    ] = False,
) -> None:
    """Learn a title model from the corpus's own tune and song titles (O'Neill's, Ryan's, Aird's, Essen's,
    the chorales, the Renaissance scores) and write it beside the model as titles.json."""
    from generator import titles
    from generator.model import DEFAULT_MODEL_DIR

    directory = Path(model or DEFAULT_MODEL_DIR)
    if not directory.is_dir():
        console.print(f"[red]error:[/red] no model directory {str(directory)!r}", soft_wrap=True)
        raise typer.Exit(2)
    started = time.monotonic()
    corpus = titles.corpus_titles(metadata=not no_metadata)
    data = titles.learn(corpus)
    path = directory / titles.FILE_NAME
    titles.save(data, path)
    learnt = titles.TitleModel(data)
    table = Table(title=f"titles learnt into {path} ({path.stat().st_size // 1024} KB)")
    for column in ("style", "family", "real titles", "drawn, e.g."):
        table.add_column(column)
    for style, family in sorted(learnt.styles.items()):
        base = learnt.prefixed.get(family, (family, ""))[0]
        table.add_row(
            style,
            family,
            str(data["learnt_from"].get(base, 0)),
            " · ".join(learnt.draw(seed, style) for seed in range(SAMPLES)),
        )
    console.print(table)
    total = sum(len(family) for family in corpus.values())  # the nicknames are Irish and Scottish titles again
    console.print(f"{total} corpus titles in {time.monotonic() - started:.0f} s")
