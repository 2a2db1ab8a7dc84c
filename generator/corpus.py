"""Turn source files into pieces: music21 corpus scores and users' MIDI files, one source file per call.

Each call runs in a worker process and returns plain data: the pieces found (notes and tokens) and the ones
skipped with the reason. Nothing here raises for a bad file: a broken score is a skipped piece, not a crash.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import symusic

from generator.instruments import DRUMS, canonical_program, find_instrument, stand_in
from generator.vocab import TPQ, nearest_tempo_bin, tokenizer_config

if TYPE_CHECKING:
    from music21 import stream

MIN_NOTES = 8
_ABC_TUNE = re.compile(r"^X:\s*\d")
MAX_NOTES = 20000  # longer than any corpus piece; bounds a worker's memory on a hostile MIDI file
_NAME_HINTS = (
    "violoncello",
    "cello",
    "viola",
    "violin",
    "contrabass",
    "flute",
    "oboe",
    "clarinet",
    "bassoon",
    "horn",
    "trumpet",
    "trombone",
    "tuba",
    "harpsichord",
    "organ",
    "piano",
    "harp",
    "guitar",
    "recorder",
)
# A keyboard's (or a harp's) two staves are two parts of one player: they keep one instrument.
_KEYBOARDS = {find_instrument(name).program for name in ("piano", "harpsichord", "organ", "harp", "guitar")}
Voice = list[tuple[int, int, int]]  # one part's notes: (start, duration, pitch)


@dataclass(frozen=True)
class Form:
    """What a score says of its shape, in ticks at TPQ, for the planner to learn from (generator.plan).

    A MIDI file says only its metre; a score also where its sections end (a double or final bar, a repeat
    sign), which of them it repeats, and where its phrases end on a fermata (the chorales).
    """

    bar: int = 0  # ticks per bar of the first time signature; 0 when the source names none
    pickup: int = 0  # ticks before the first downbeat (an anacrusis)
    sections: tuple[tuple[int, int, bool], ...] = ()  # (start, end, played twice) in score order
    fermatas: tuple[int, ...] = ()  # where a note under a fermata ends


@dataclass
class Piece:
    """One piece of music: notes as rows of (start tick, duration ticks, MIDI pitch, program) at TPQ."""

    id: str
    style: str
    tempo: float
    notes: np.ndarray  # int32 [N, 4]
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))  # MidiTok ids, no prefix
    form: Form = field(default_factory=lambda: Form())
    # A part whose instrument another part already played got a spare program (part_programs): here, that
    # spare -> the instrument it stands for, so a piece can sound as its score is scored.
    stand_ins: dict[int, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        if len(self.notes) == 0:
            return 0.0
        end = int((self.notes[:, 0] + self.notes[:, 1]).max())
        return end / TPQ * 60.0 / self.tempo

    @property
    def programs(self) -> list[int]:
        return sorted({int(p) for p in self.notes[:, 3]})


@dataclass
class SourceResult:
    source: str
    pieces: list[Piece]
    skipped: list[tuple[str, str]]  # (piece id, reason)


def piece_id(source: str, index: int | None = None) -> str:
    key = source if index is None else f"{source}#{index}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def to_score(piece: Piece) -> Any:  # a symusic.Score; symusic's factories defeat type checkers
    score: Any = symusic.Score(TPQ)
    for program in piece.programs:
        rows = piece.notes[piece.notes[:, 3] == program]
        track: Any = symusic.Track(program=max(program, 0), is_drum=program == DRUMS)
        for start, dur, pitch, _ in rows.tolist():
            track.notes.append(symusic.Note(int(start), int(max(dur, 1)), int(pitch), 80))
        score.tracks.append(track)
    return score


def tokenize(pieces: list[Piece]) -> None:
    """Fill in each piece's MidiTok token ids (in place)."""
    from miditok import TSD

    tokenizer = TSD(tokenizer_config())
    for piece in pieces:
        seq = tokenizer.encode(to_score(piece))
        ids = seq.ids if not isinstance(seq, list) else [i for s in seq for i in s.ids]
        piece.tokens = np.asarray(ids, dtype=np.uint16)


def abc_tunes(text: str) -> list[str]:
    """The tunes of an ABC file, each with the file's header: one `X:` block per tune.

    An ABC collection (O'Neill's 1850, an Essen file) holds hundreds of tunes. Parsing them one by one lets
    the build spread them over every core and stop at a style's cap without parsing whole books.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _ABC_TUNE.match(line)]
    if len(starts) <= 1:
        return [text]
    header = lines[: starts[0]]
    ends = [*starts[1:], len(lines)]
    return ["\n".join([*header, *lines[a:b]]) + "\n" for a, b in zip(starts, ends, strict=True)]


def extract_music21(
    path: str,
    rel: str,
    style: str,
    ensemble: tuple[str, ...],
    tempo: int,
    tune: int | None = None,
    tunes_are_voices: bool = False,
) -> SourceResult:
    """Every score in one music21 corpus file, or in its ABC tune number `tune` (counted from 0).

    `tunes_are_voices`: the file's tunes are the voices of one piece; they become one score's parts.
    """
    from music21 import converter, stream

    warnings.filterwarnings("ignore")
    try:
        if tune is None:
            parsed = converter.parse(path)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                parsed = converter.parse(abc_tunes(f.read())[tune], format="abc")
    except Exception as exc:  # music21 raises many kinds; any of them means this file is unusable
        return SourceResult(rel, [], [(piece_id(rel, tune), _reason(exc))])
    if tunes_are_voices and isinstance(parsed, stream.Opus):
        parsed = parsed.mergeScores()
    scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
    pieces, skipped = [], []
    for index, score in enumerate(scores):
        if tune is not None:
            pid = piece_id(rel, tune) if len(scores) == 1 else piece_id(f"{rel}#{tune}", index)
        else:
            pid = piece_id(rel, index if len(scores) > 1 else None)
        try:
            piece = _music21_piece(score, pid, style, ensemble, tempo)
        except Exception as exc:
            skipped.append((pid, _reason(exc)))
            continue
        if len(piece.notes) < MIN_NOTES:
            skipped.append((pid, f"only {len(piece.notes)} notes"))
            continue
        pieces.append(piece)
    tokenize(pieces)
    return SourceResult(rel, pieces, skipped)


# `score` is Any: a music21 Score, a lone Part, or an Opus's score (music21 leaves those untyped), read by
# duck typing (only a Score has `.parts`).
def _music21_piece(score: Any, pid: str, style: str, ensemble: tuple[str, ...], beat_tempo: int) -> Piece:
    from music21 import meter
    from music21 import tempo as m21tempo

    score = score.stripTies()
    parts = list(score.parts) or [score]
    marks = [m for m in score.recurse().getElementsByClass(m21tempo.MetronomeMark) if m.number]
    if marks:
        bpm = float(marks[0].getQuarterBPM())
    else:
        # No marking: the style's tempo counts the metre's beat, so a Palestrina mass in 4/2 moves in half
        # notes and a jig in 6/8 in dotted quarters, instead of crawling along in quarters.
        signature = score.recurse().getElementsByClass(meter.TimeSignature).first()
        beat = float(signature.beatDuration.quarterLength) if signature is not None else 1.0
        bpm = beat_tempo * beat
    voices: list[Voice] = []
    for part in parts:
        voice: Voice = []
        for n in part.flatten().notes:
            start = round(float(n.offset) * TPQ)
            dur = round(float(n.quarterLength) * TPQ)
            if dur <= 0:  # grace notes
                continue
            voice.extend((start, dur, p.midi) for p in n.pitches if 21 <= p.midi <= 108)
        voices.append(voice)
    programs, stand_ins = part_programs([part.partName or "" for part in parts], voices, ensemble)
    rows = [(*note, program) for voice, program in zip(voices, programs, strict=True) for note in voice]
    notes = np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)
    played = set(int(p) for p in notes[:, 3])
    stand_ins = {spare: scored for spare, scored in stand_ins.items() if spare in played}
    return Piece(pid, style, min(max(bpm, 30.0), 240.0), notes, form=_score_form(parts), stand_ins=stand_ins)


def _score_form(parts: Sequence[stream.Stream[Any]]) -> Form:
    """The metre, anacrusis, sections and fermatas of a score, read from its first part's measures."""
    from music21 import bar, expressions

    measures = list(parts[0].getElementsByClass("Measure"))
    if not measures:
        return Form()
    first = measures[0]
    signature = first.timeSignature or first.getContextByClass("TimeSignature")
    length = float(signature.barDuration.quarterLength) if signature is not None else 0.0
    pickup = float(first.duration.quarterLength) if first.paddingLeft > 0 else 0.0
    sections: list[tuple[int, int, bool]] = []
    start = repeat_from = 0
    for m in measures:
        left, right = m.leftBarline, m.rightBarline
        begin = round(float(m.offset) * TPQ)
        if isinstance(left, bar.Repeat) and left.direction == "start":
            if begin > start:
                sections.append((start, begin, False))
            start = repeat_from = begin
        end = round(float(m.offset + m.duration.quarterLength) * TPQ)
        if isinstance(right, bar.Repeat) and right.direction == "end":
            sections.append((repeat_from, end, True))
            start = repeat_from = end
        elif right is not None and right.type in ("double", "final", "light-heavy", "light-light"):
            if end > start:
                sections.append((start, end, False))
            start = repeat_from = end
    last = round(float(measures[-1].offset + measures[-1].duration.quarterLength) * TPQ)
    if last > start:
        sections.append((start, last, False))
    fermatas = sorted(
        {
            round(float(n.offset + n.quarterLength) * TPQ)
            for part in parts
            for n in part.flatten().notes
            if any(isinstance(e, expressions.Fermata) for e in n.expressions)
        }
    )
    return Form(round(length * TPQ), round(pickup * TPQ), tuple(sections), tuple(fermatas))


def part_programs(
    names: list[str], voices: list[Voice], ensemble: tuple[str, ...]
) -> tuple[list[int], dict[int, int]]:
    """An instrument for each part (named, else from the style's ensemble), no two parts the same one, and
    which of them stand in for another: {spare program: the program its part was scored for}.

    The model tells voices apart only by their Program tokens: a motet sung on one program, or a quartet's
    two violins on one, reads as a single line that leaps between voices, and a model trained on it stops
    following each part's line. A part whose instrument is already taken gets a free one that holds its range.
    """
    chosen = [_part_program(name, i, len(names), ensemble) for i, name in enumerate(names)]
    return _own_programs(chosen, [[p for _, _, p in voice] for voice in voices], set(chosen))


def _own_programs(
    chosen: list[int], pitches: list[list[int]], taken: set[int]
) -> tuple[list[int], dict[int, int]]:
    """Each part's program, a part on a program an earlier part already has taking a free one of its range
    (`stand_in`; a keyboard's staves and the drums stay one instrument), and {spare: the program it stands for}.

    `pitches` are each part's, `taken` every program the piece uses or must not be given."""
    out = list(chosen)
    taken = set(taken)
    seen: set[int] = set()
    stand_ins: dict[int, int] = {}
    for i, mine in enumerate(pitches):
        if out[i] in seen and out[i] not in _KEYBOARDS and out[i] != DRUMS and mine:
            spare = stand_in(min(mine), max(mine), taken)
            if spare is not None:
                stand_ins[spare] = out[i]
                out[i] = spare
                taken.add(spare)
        seen.add(out[i])
    return out, stand_ins


def _part_program(name: str, index: int, count: int, ensemble: tuple[str, ...]) -> int:
    lowered = name.lower()
    for hint in _NAME_HINTS:
        if hint in lowered:
            return find_instrument(hint).program
    # Spread the ensemble over the parts, top voice first, so the bass always gets the lowest instrument.
    slot = 0 if count == 1 else round(index * (len(ensemble) - 1) / (count - 1))
    return find_instrument(ensemble[slot]).program


def extract_midi(path: str, rel: str, style: str) -> SourceResult:
    """One MIDI file from a user's folder; programs fold onto our instruments, drums are kept."""
    pid = piece_id(rel)
    try:
        score = symusic.Score(path)
    except Exception as exc:
        # The library's own words ("MiniMidi: Invaild midi file! ...") say little to a user; the bytes say more.
        try:
            with open(path, "rb") as f:
                problem = midi_problem(f.read())
        except OSError as error:
            problem = f"unreadable ({error.strerror or error})"
        return SourceResult(rel, [], [(pid, problem or f"damaged MIDI data ({_reason(exc)})")])
    try:
        piece = _midi_piece(score, pid, style)
    except Exception as exc:
        return SourceResult(rel, [], [(pid, _reason(exc))])
    if len(piece.notes) < MIN_NOTES:
        return SourceResult(rel, [], [(pid, f"only {len(piece.notes)} notes")])
    tokenize([piece])
    return SourceResult(rel, [piece], [])


def midi_problem(data: bytes) -> str | None:
    """What is wrong with a MIDI file's bytes, in plain words, read from its header and chunk lengths alone;
    None when they look whole (the trouble, if any, is inside a track).

    A standard MIDI file is a 14-byte header chunk ("MThd", length 6, format, track count, division), then
    chunks of a 4-letter type and a 4-byte big-endian length: the tracks ("MTrk") and any others to skip.
    """
    if not data:
        return "empty file"
    if not data.startswith(b"MThd"):
        return "not a MIDI file (it does not start with MThd)"
    if len(data) < 14:
        return f"truncated (the file ends {14 - len(data)} bytes into its header)"
    header = int.from_bytes(data[4:8], "big")
    tracks = int.from_bytes(data[10:12], "big")
    at, found = 8 + header, 0
    while at < len(data):
        kind, length = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "big")
        if len(kind) < 4 or not kind.isalpha():
            return f"damaged (no chunk starts at byte {at}, where one should)"
        if at + 8 + length > len(data):
            missing = at + 8 + length - len(data)
            return f"truncated (track {found + 1} of {tracks} is {missing} bytes short)"
        found += kind == b"MTrk"
        at += 8 + length
    if found < tracks:
        return f"truncated (the header names {tracks} track{'s' * (tracks != 1)}, the file holds {found})"
    return None


def _midi_piece(score: Any, pid: str, style: str) -> Piece:
    bpm = float(score.tempos[0].qpm) if len(score.tempos) else 120.0
    scale = TPQ / score.ticks_per_quarter
    bar = 0
    if len(score.time_signatures):
        signature = score.time_signatures[0]
        bar = round(signature.numerator * 4 / signature.denominator * TPQ)
    taken = {canonical_program(t.program, t.is_drum) for t in score.tracks if len(t.notes)}
    tracks = []  # (program, its playable notes) of each track that has some
    count = 0
    for track in score.tracks:
        mine = [n for n in track.notes if n.duration > 0 and 21 <= n.pitch <= 108]
        if mine:
            tracks.append((canonical_program(track.program, track.is_drum), mine))
        count += len(mine)
        if count > MAX_NOTES:
            raise ValueError(f"more than {MAX_NOTES} notes")
    # A second track on a program already played (a quartet's two violins) is a part of its own, as in the
    # corpus: it takes a spare program and is remembered as the instrument it was.
    pitches = [[n.pitch for n in mine] for _, mine in tracks]
    programs, stand_ins = _own_programs([program for program, _ in tracks], pitches, taken)
    rows = [
        (round(n.time * scale), max(1, round(n.duration * scale)), n.pitch, program)
        for program, (_, mine) in zip(programs, tracks, strict=True)
        for n in mine
    ]
    notes = np.array(sorted(rows), dtype=np.int32).reshape(-1, 4)
    if len(notes):
        lead = int(notes[:, 0].min())
        notes[:, 0] -= lead  # leading silence is not music
        # The downbeats stay where the file put them: the silence cut may leave an anacrusis.
        pickup = (bar - lead % bar) % bar if bar else 0
    else:
        pickup = 0
    return Piece(pid, style, min(max(bpm, 30.0), 240.0), notes, form=Form(bar, pickup), stand_ins=stand_ins)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160]


__all__ = [
    "Form",
    "Piece",
    "SourceResult",
    "abc_tunes",
    "extract_midi",
    "extract_music21",
    "midi_problem",
    "nearest_tempo_bin",
    "to_score",
]
