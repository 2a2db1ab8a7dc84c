"""A piece's score: MusicXML built with music21 from its MIDI, engraved as SVG by Verovio, cached.

The MIDI is the piece's own download (`/p/<seed>.mid`), so the score shows exactly what was heard. Its notes
sit on the tokens' grid (1/8 beat), so they are read back onto it without loss. Each instrument is a part
named after it (two violins of a quartet, or a harp's chords under its melody, take a part a voice); clefs
by music21's `bestClef`, the key and time signature the piece's plan gives, notes spelt in that key and tied
across bar lines by music21's `makeNotation`.

Building and engraving take seconds for a long piece: `ScoreCache` runs them off the event loop
(`asyncio.to_thread`) and keeps the last few, since a complete piece never changes.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import mido

from generator.decode import MIDI_TPQ, STEPS_PER_BEAT
from generator.instruments import BY_PROGRAM, DRUMS

if TYPE_CHECKING:  # music21 is imported only where a score is drawn: it takes seconds to load
    import music21.chord
    import music21.instrument
    import music21.key
    import music21.note
    import music21.pitch

log = logging.getLogger(__name__)

MUSICXML_TYPE = "application/vnd.recordare.musicxml+xml"
CACHE_SIZE = 16  # pieces; a 4-minute piece's score and SVG are some hundreds of kB
MAX_VOICES = 4  # parts one instrument may need for its overlapping notes; more is cut short (rarely met)
_TICKS_PER_STEP = MIDI_TPQ // STEPS_PER_BEAT
# Pitch-class spellings of the degrees a key's music uses beyond its scale: a minor key's raised sixth and
# seventh (melodic and harmonic minor), as semitones above the tonic with the letter step above it.
_MINOR_RAISED = ((9, 5), (11, 6))
_LETTERS = "CDEFGAB"
_NATURAL = (0, 2, 4, 5, 7, 9, 11)


@dataclass(frozen=True, order=True)
class ScoreNote:
    """One note on the tokens' grid: times in steps of 1/8 beat."""

    start: int
    pitch: int
    duration: int
    program: int

    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class ScoreSpec:
    """What the score says beside the notes."""

    title: str
    instruments: tuple[str, ...]  # the piece's instruments, in its recipe's order (a name per part)
    tempo: float  # beats a minute
    key: str | None = None  # "F#m", "Bb"; None: C major's signature, accidentals as they come
    metre: str | None = None  # "6/8"; None: 4/4


def midi_notes(data: bytes) -> list[ScoreNote]:
    """The notes of a MIDI file, each program's, on the tokens' grid."""
    midi = mido.MidiFile(file=io.BytesIO(data))
    scale = Fraction(STEPS_PER_BEAT, midi.ticks_per_beat)
    programs = {9: DRUMS}
    sounding: dict[tuple[int, int], list[int]] = {}
    out = []
    for track in midi.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "program_change" and msg.channel != 9:
                programs[msg.channel] = msg.program
            elif msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault((msg.channel, msg.note), []).append(tick)
            elif msg.type in ("note_on", "note_off") and sounding.get((msg.channel, msg.note)):
                start = sounding[(msg.channel, msg.note)].pop(0)
                first, last = round(start * scale), round(tick * scale)
                program = programs.get(msg.channel, 0)
                out.append(ScoreNote(first, msg.note, max(1, last - first), program))
    return sorted(out)


def musicxml(notes: list[ScoreNote], spec: ScoreSpec) -> bytes:
    """The notes as a MusicXML score (what MuseScore opens), drums left out: they have no pitch to spell."""
    from music21 import clef, key, metadata, meter, stream, tempo
    from music21.musicxml.m21ToXml import GeneralObjectExporter

    score = stream.Score()
    score.insert(0, metadata.Metadata(title=spec.title, composer="concertbot"))
    signature = _key(spec.key)
    spell = _speller(spec.key)
    metre = heard_metre(notes, spec.metre or "4/4")
    bar = meter.TimeSignature(metre).barDuration.quarterLength
    last = max((Fraction(n.end(), STEPS_PER_BEAT) for n in notes), default=Fraction(0))
    length = max(1, math.ceil(last / Fraction(bar))) * Fraction(bar)  # every part to the last bar's end
    for n, (name, lane) in enumerate(_parts(notes, spec.instruments)):
        part = stream.Part()
        part.partName = name
        part.insert(0, _instrument(name))
        if n == 0:
            part.insert(0, tempo.MetronomeMark(number=round(spec.tempo)))
        part.insert(0, key.KeySignature(signature.sharps) if signature else key.KeySignature(0))
        part.insert(0, meter.TimeSignature(metre))
        for group in lane:
            part.insert(Fraction(group[0].start, STEPS_PER_BEAT), _sounding(group, spell))
        part.insert(0, clef.bestClef(part, recurse=True))
        part.makeRests(refStreamOrTimeRange=[0, length], fillGaps=True, inPlace=True)
        part.makeNotation(inPlace=True)
        score.insert(0, part)
    return GeneralObjectExporter(score).parse()


def heard_metre(notes: list[ScoreNote], metre: str) -> str:
    """`metre` as the notes move in it: a plan's 3/4 (or 6/4) bar is 6/8 (12/8) when they move in dotted
    quarters (a jig), which the plan cannot say, since it counts a bar's steps only.

    A metre's beats are where notes seldom sound through: a jig's quarter-eighth figures hold over 3/4's second
    and third beats but never over 6/8's second, a waltz's half notes the other way round.
    """
    compound = {"3/4": "6/8", "6/4": "12/8"}
    if metre not in compound:
        return metre
    bar = 3 * STEPS_PER_BEAT * (1 if metre == "3/4" else 2)
    dotted, plain = STEPS_PER_BEAT * 3 // 2, STEPS_PER_BEAT
    only_compound = [at for at in range(dotted, bar, dotted) if at % plain]
    only_simple = [at for at in range(plain, bar, plain) if at % dotted]

    def held_over(points: list[int]) -> float:
        return sum(n.start % bar < at < n.start % bar + n.duration for n in notes for at in points) / len(
            points
        )

    return compound[metre] if held_over(only_compound) < held_over(only_simple) else metre


def svg_pages(xml: bytes, width: int = 2100) -> list[str]:
    """The score engraved by Verovio, a page of SVG each; `width` in Verovio's units (tenths of a mm)."""
    from importlib.resources import files

    import verovio

    # Verovio's default path to its fonts is kept per thread: on a worker thread the toolkit would find none.
    toolkit = verovio.toolkit(False)
    toolkit.setResourcePath(str(files("verovio") / "data"))
    toolkit.setOptions(
        {
            "pageWidth": width,
            "pageHeight": 2970,
            "adjustPageHeight": True,
            "scale": 40,
            "footer": "none",
            "header": "auto",
            "breaks": "auto",
            "svgViewBox": True,  # scales with the page's CSS instead of a fixed size
            "svgRemoveXlink": True,
        }
    )
    if not toolkit.loadData(xml.decode("utf-8")):
        raise ValueError("Verovio could not read the MusicXML")
    return [toolkit.renderToSVG(page) for page in range(1, toolkit.getPageCount() + 1)]


@dataclass(frozen=True)
class Score:
    musicxml: bytes
    svg: tuple[str, ...]  # pages


class ScoreCache:
    """Scores by seed, built off the event loop, the last `size` kept; one build at a time per seed."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._scores: OrderedDict[int, Score] = OrderedDict()
        self._building: dict[int, asyncio.Future[Score | None]] = {}

    async def get(
        self, seed: int, source: Callable[[], Awaitable[tuple[bytes, ScoreSpec] | None]]
    ) -> Score | None:
        """The score of `seed`; `source` gives its MIDI and spec (None: no such complete piece)."""
        if seed in self._scores:
            self._scores.move_to_end(seed)
            return self._scores[seed]
        if seed in self._building:  # two visitors at once build it once
            return await asyncio.shield(self._building[seed])
        future: asyncio.Future[Score | None] = asyncio.get_running_loop().create_future()
        self._building[seed] = future
        try:
            found = await source()
            score = None if found is None else await asyncio.to_thread(build, *found)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # read, so that a failure nobody else waits for is not reported twice
            raise
        finally:
            del self._building[seed]
        future.set_result(score)
        if score is not None:
            self._scores[seed] = score
            while len(self._scores) > self.size:
                self._scores.popitem(last=False)
        return score


def build(midi: bytes, spec: ScoreSpec) -> Score:
    """MusicXML and its SVG pages for a piece's MIDI (seconds of work: call it off the event loop)."""
    xml = musicxml(midi_notes(midi), spec)
    return Score(xml, tuple(svg_pages(xml)))


# Parts and voices.


def _parts(notes: list[ScoreNote], instruments: tuple[str, ...]) -> list[tuple[str, list[list[ScoreNote]]]]:
    """(part name, chords in time order) for each part: an instrument's notes split into voices that never
    overlap, a chord being notes that start and end together. Parts follow the recipe's instrument order."""
    by_program: dict[int, list[ScoreNote]] = {}
    for note in notes:
        if note.program != DRUMS:
            by_program.setdefault(note.program, []).append(note)
    order = [_program(name) for name in instruments]
    programs = sorted(by_program, key=lambda p: (order.index(p) if p in order else len(order), p))
    out = []
    for program in programs:
        name = BY_PROGRAM[program].name if program in BY_PROGRAM else f"program {program}"
        lanes = _voices(by_program[program], max(order.count(program), 1))
        for i, lane in enumerate(lanes):
            label = name.capitalize() if len(lanes) == 1 else f"{name.capitalize()} {i + 1}"
            out.append((label, lane))
    return out


def _voices(notes: list[ScoreNote], at_least: int) -> list[list[list[ScoreNote]]]:
    chords: dict[tuple[int, int], list[ScoreNote]] = {}
    for note in notes:
        chords.setdefault((note.start, note.duration), []).append(note)
    # Highest first at each onset, so that the first voice carries the tune.
    groups = sorted(chords.values(), key=lambda g: (g[0].start, -max(n.pitch for n in g)))
    lanes: list[list[list[ScoreNote]]] = [[] for _ in range(at_least)]
    for group in groups:
        start = group[0].start
        free = [lane for lane in lanes if not lane or lane[-1][0].end() <= start]
        if free:
            free[0].append(group)
        elif len(lanes) < MAX_VOICES:
            lanes.append([group])
        else:  # cut the voice that ends first, so the onset and pitch still show
            lane = min(lanes, key=lambda lane: lane[-1][0].end())
            lane[-1] = [_cut(n, start) for n in lane[-1]]
            lane.append(group)
    return [lane for lane in lanes if lane] or [[]]


def _cut(note: ScoreNote, at: int) -> ScoreNote:
    return ScoreNote(note.start, note.pitch, max(1, at - note.start), note.program)


def _program(name: str) -> int:
    from generator.instruments import BY_NAME

    instrument = BY_NAME.get(name)
    return instrument.program if instrument else -2


def _instrument(name: str) -> music21.instrument.Instrument:
    from music21 import instrument
    from music21.exceptions21 import InstrumentException

    base = name.split(" ")[0]
    found: music21.instrument.Instrument
    try:
        found = instrument.fromString(base)
    except InstrumentException:
        found = instrument.Instrument()
    found.partName = name
    found.partAbbreviation = None
    return found


def _sounding(group: list[ScoreNote], spell: Callable[[int], str]) -> music21.note.Note | music21.chord.Chord:
    from music21 import chord, note

    length = Fraction(group[0].duration, STEPS_PER_BEAT)
    pitches = sorted({n.pitch for n in group})
    if len(pitches) == 1:
        return note.Note(_pitch(pitches[0], spell), quarterLength=length)
    return chord.Chord([_pitch(p, spell) for p in pitches], quarterLength=length)


def _pitch(midi: int, spell: Callable[[int], str]) -> music21.pitch.Pitch:
    from music21 import pitch

    p = pitch.Pitch(spell(midi % 12), octave=4)
    p.octave = 4 + (midi - round(p.ps)) // 12  # B#3 sounds as C4: the octave that gives the same key
    return p


# Keys and spelling.


def _tonic(name: str) -> tuple[str, bool]:
    """ "F#m" -> ("F#", True); "Bb" -> ("Bb", False)."""
    return (name[:-1], True) if name.endswith("m") else (name, False)


def _key(name: str | None) -> music21.key.Key | None:
    from music21 import key

    if not name:
        return None
    tonic, minor = _tonic(name)
    text = tonic[0] + tonic[1:].replace("b", "-")
    try:
        return key.Key(text.lower() if minor else text.upper())
    except Exception:  # a key name another model wrote: the score is still worth showing
        log.warning("no key signature for key %r", name)
        return None


def _speller(name: str | None) -> Callable[[int], str]:
    """Pitch class -> a music21 pitch name spelt in the key: its scale's letters first, then a minor key's
    raised sixth and seventh, then sharps in a sharp key (or C major) and flats in a flat one."""
    signature = _key(name)
    names: dict[int, str] = {}
    if signature is not None:
        for p in signature.getScale().getPitches()[:7]:
            names.setdefault(p.pitchClass, p.name)
        if signature.mode == "minor":
            tonic = signature.tonic
            letter = _LETTERS.index(tonic.step)
            for semitones, steps in _MINOR_RAISED:
                pc = (tonic.pitchClass + semitones) % 12
                names.setdefault(pc, _spelt(pc, _LETTERS[(letter + steps) % 7]))
    flats = signature is not None and signature.sharps < 0
    for pc in range(12):
        if pc not in names:
            names[pc] = _spelt(pc, None, flats)
    return names.__getitem__


def _spelt(pc: int, letter: str | None, flats: bool = False) -> str:
    """Pitch class `pc` written on `letter` (or on the nearest letter below, a flat's above, if None)."""
    if letter is None:
        if pc in _NATURAL:
            return _LETTERS[_NATURAL.index(pc)]
        letter = _LETTERS[_NATURAL.index((pc + 1) % 12)] if flats else _LETTERS[_NATURAL.index(pc - 1)]
    natural = _NATURAL[_LETTERS.index(letter)]
    alter = (pc - natural + 6) % 12 - 6
    return letter + ("#" * alter if alter > 0 else "-" * -alter)
