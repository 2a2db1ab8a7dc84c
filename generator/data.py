"""`concertbot data build`: sources -> pieces -> token arrays, in parallel, cached and resumable.

Layout of a built data set (`<data_dir>/dataset`):
  tokens.npy     every piece's MidiTok ids, concatenated (uint16)
  pieces.jsonl   one line per piece: id, style, source, split, offset/length into tokens.npy, tempo, ...
  skipped.jsonl  one line per source or piece left out, with the reason
  vocab.json, tokenizer.json   the vocabulary a model trained on it uses
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import ConfigError
from generator import metrics
from generator.corpus import Piece, SourceResult, abc_tunes, extract_midi, extract_music21, piece_id
from generator.instruments import DRUMS
from generator.styles import CORPUS_STYLES
from generator.vocab import Vocab, key_name

# 2: ABC tunes one by one, Josquin's voices merged, tempo in the metre's beat; 3: one program per part;
# 4: each piece's form (metre, anacrusis, sections, fermatas); 5: which spare programs stand in for a doubled
# part (a quartet's second violin)
CACHE_VERSION = 5
# A user's MIDI files only: 1, a broken file's reason in plain words (the corpus's cached results stay good);
# 2, a second track on a program already played is a part of its own
MIDI_REVISION = 2
CORPUS_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
MIDI_SUFFIXES = (".mid", ".midi")


@dataclass(frozen=True)
class Source:
    style: str
    path: str  # absolute
    rel: str  # stable name: relative to the corpus or the user's folder
    kind: str  # "music21" or "midi"
    tune: int | None = None  # which tune of an ABC collection; None: the whole file


def _unit_order(source: Source) -> str:
    return piece_id(source.rel, source.tune)


def corpus_sources(styles: Iterable[str] | None = None) -> list[Source]:
    """The music21 corpus of each corpus style: one source per file, or per tune of an ABC collection.

    Within a style the order is a stable shuffle (by piece id), so a capped build takes pieces from every
    book of the style rather than the first few files in alphabetical order (which, for the Essen
    collection, were all old German songs).
    """
    import music21

    root = Path(music21.__file__).parent / "corpus"
    wanted = set(styles) if styles is not None else None
    out = []
    for style in CORPUS_STYLES:
        if wanted is not None and style.name not in wanted:
            continue
        mine = []
        for folder in style.folders:
            for path in sorted((root / folder).rglob("*")):
                if path.suffix.lower() not in CORPUS_SUFFIXES or not path.is_file():
                    continue
                rel = str(path.relative_to(root))
                is_book = path.suffix.lower() == ".abc" and not style.tunes_are_voices
                tunes = len(abc_tunes(path.read_text(errors="replace"))) if is_book else 1
                if tunes == 1:
                    mine.append(Source(style.name, str(path), rel, "music21"))
                else:
                    mine += [Source(style.name, str(path), rel, "music21", t) for t in range(tunes)]
        out += sorted(mine, key=_unit_order)
    return out


def midi_sources(folder: Path) -> list[Source]:
    """A user's folder laid out one sub-folder per style: `folder/<style>/*.mid`."""
    if not folder.is_dir():
        raise ConfigError(f"MIDI folder {str(folder)!r} does not exist")
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        style = re.sub(r"[^a-z0-9]+", "_", sub.name.lower()).strip("_")
        if not style:
            raise ConfigError(f"cannot make a style name of folder {sub.name!r}")
        for path in sorted(sub.rglob("*")):
            if path.suffix.lower() in MIDI_SUFFIXES and path.is_file():
                rel = f"{folder.name}/{path.relative_to(folder)}"
                out.append(Source(style, str(path), rel, "midi"))
    if not out:
        raise ConfigError(f"MIDI folder {str(folder)!r} has no <style>/*.mid files")
    return out


def _extract(source: Source) -> SourceResult:
    if source.kind == "midi":
        return extract_midi(source.path, source.rel, source.style)
    style = next(s for s in CORPUS_STYLES if s.name == source.style)
    return extract_music21(
        source.path, source.rel, source.style, style.ensemble, style.tempo, source.tune, style.tunes_are_voices
    )


def _cache_path(cache_dir: Path, source: Source) -> Path:
    stat = os.stat(source.path)
    version = f"{CACHE_VERSION}.{MIDI_REVISION}" if source.kind == "midi" else CACHE_VERSION
    parts = (version, source.kind, source.style, source.rel, source.tune, stat.st_size, stat.st_mtime_ns)
    key = "|".join(map(str, parts))
    return cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.pkl"


def _rank(piece_id: str) -> int:
    """A piece's place in the held-out order, 0-9999, from its id alone: the same on every run and machine."""
    return int(piece_id[:8], 16) % 10000


def is_valid(piece_id: str, valid_percent: float) -> bool:
    """Held-out split by piece, stable across runs and machines."""
    return _rank(piece_id) < valid_percent * 100


def held_out(pieces: list[Piece], valid_percent: float) -> set[str]:
    """The ids of the held-out pieces: `is_valid` ones, plus, for a style of at least two pieces that got
    none (Josquin has eight), its piece of lowest `is_valid` rank, so every style has a held-out loss."""
    chosen = {p.id for p in pieces if is_valid(p.id, valid_percent)}
    if valid_percent <= 0:
        return chosen
    for style in {p.style for p in pieces}:
        mine = [p.id for p in pieces if p.style == style]
        if len(mine) >= 2 and not chosen.intersection(mine):
            chosen.add(min(mine, key=_rank))
    return chosen


@dataclass
class BuildReport:
    pieces: list[Piece]
    skipped: list[tuple[str, str, str]]  # (source, piece id, reason)
    from_cache: int


def extract_all(
    sources: list[Source],
    cache_dir: Path,
    workers: int,
    max_per_style: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """Extract every source, reusing cached results; stops feeding a style once it has enough pieces."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[Source, SourceResult] = {}
    from_cache = 0
    todo: list[Source] = []
    for source in sources:
        path = _cache_path(cache_dir, source)
        if path.is_file():
            results[source] = pickle.loads(path.read_bytes())
            from_cache += 1
        else:
            todo.append(source)

    def enough(style: str) -> bool:
        have = sum(len(r.pieces) for s, r in results.items() if s.style == style)
        return max_per_style > 0 and have >= max_per_style

    done = len(results)
    if progress:
        progress(done, len(sources))
    pending: dict[Future[SourceResult], Source] = {}
    queue = list(todo)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        while queue or pending:
            while queue and len(pending) < 2 * max(1, workers):
                source = queue.pop(0)
                if enough(source.style):
                    done += 1
                    continue
                pending[pool.submit(_extract, source)] = source
            if not pending:
                break
            finished = _first_done(pending)
            source = pending.pop(finished)
            result = finished.result()
            tmp = _cache_path(cache_dir, source).with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(result))
            tmp.replace(tmp.with_suffix(".pkl"))  # atomic: an interrupted build never leaves half a file
            results[source] = result
            done += 1
            if progress:
                progress(done, len(sources))

    pieces: list[Piece] = []
    skipped: list[tuple[str, str, str]] = []
    per_style: dict[str, int] = {}
    for source in sources:  # the sources' order, not completion order, so the selection is stable
        if source not in results:
            continue
        result = results[source]
        skipped += [(result.source, pid, why) for pid, why in result.skipped]
        for piece in result.pieces:
            if max_per_style and per_style.get(piece.style, 0) >= max_per_style:
                continue
            per_style[piece.style] = per_style.get(piece.style, 0) + 1
            pieces.append(piece)
    return BuildReport(pieces, skipped, from_cache)


def _first_done(pending: dict[Future[SourceResult], Source]) -> Future[SourceResult]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    return next(iter(done))


def write_dataset(report: BuildReport, out_dir: Path, valid_percent: float) -> Vocab:
    """Write the token array, the piece index and the vocabulary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    styles = sorted({p.style for p in report.pieces})
    if not styles:
        raise ConfigError("no usable pieces were found; nothing to write")
    vocab = Vocab.build(styles)
    offset = 0
    arrays = []
    valid = held_out(report.pieces, valid_percent)
    with open(out_dir / "pieces.jsonl.tmp", "w") as index:
        for piece in report.pieces:
            ranges = {
                str(prog): [
                    int(piece.notes[piece.notes[:, 3] == prog, 2].min()),
                    int(piece.notes[piece.notes[:, 3] == prog, 2].max()),
                ]
                for prog in piece.programs
            }
            row = {
                "id": piece.id,
                "style": piece.style,
                "split": "valid" if piece.id in valid else "train",
                "offset": offset,
                "length": len(piece.tokens),
                "tempo": round(piece.tempo, 2),
                "notes": len(piece.notes),
                "seconds": round(piece.seconds, 2),
                "ranges": ranges,
                "key": piece_key(piece),
                "bar": piece.form.bar,
                "pickup": piece.form.pickup,
                "sections": [list(x) for x in piece.form.sections],
                "fermatas": list(piece.form.fermatas),
                "stand_ins": {str(spare): scored for spare, scored in sorted(piece.stand_ins.items())},
            }
            index.write(json.dumps(row) + "\n")
            arrays.append(piece.tokens)
            offset += len(piece.tokens)
    np.save(out_dir / "tokens.npy", np.concatenate(arrays).astype(np.uint16))
    (out_dir / "pieces.jsonl.tmp").replace(out_dir / "pieces.jsonl")
    with open(out_dir / "skipped.jsonl", "w") as f:
        for source, pid, why in report.skipped:
            f.write(json.dumps({"source": source, "id": pid, "reason": why}) + "\n")
    vocab.save(out_dir)
    return vocab


def piece_key(piece: Piece) -> str:
    """The piece's estimated key (drums left out), the key token it is trained behind."""
    pitched = piece.notes[piece.notes[:, 3] != DRUMS]
    tonic, minor = metrics.key(np.bincount(pitched[:, 2] % 12, minlength=12).astype(np.float64))
    return key_name(tonic, minor)


def read_index(dataset_dir: Path) -> list[dict[str, Any]]:
    path = dataset_dir / "pieces.jsonl"
    if not path.is_file():
        raise ConfigError(f"no data set at {str(dataset_dir)!r}; run `concertbot data build` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pieces (and how many of them are held out), notes, tokens and hours of music per style, and a total."""
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = table.setdefault(
            r["style"], {"style": r["style"], "pieces": 0, "held_out": 0, "notes": 0, "tokens": 0, "hours": 0.0}
        )
        s["pieces"] += 1
        s["held_out"] += r["split"] == "valid"
        s["notes"] += r["notes"]
        s["tokens"] += r["length"]
        s["hours"] += r["seconds"] / 3600
    out = [table[k] for k in sorted(table)]
    total = {
        "style": "total",
        **{k: sum(s[k] for s in out) for k in ("pieces", "held_out", "notes", "tokens", "hours")},
    }
    return [*out, total]
