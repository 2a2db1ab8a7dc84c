"""A piece's plan before its notes: its metre, sections that return, phrases and the cadences that end them.

Real composers plan before they write. Each style's plans are learnt from its real pieces (`learn_form`, kept
in the model card beside the style's keys and leaps): the metre it is written in, the shapes of its pieces
(a reel's two repeated eight-bar strains, a chorale's phrases ending at fermatas, a motet written straight
through), its phrase lengths, the notes its phrases come to rest on, and the pitch classes it uses in a key.
`draw_plan` then draws one plan for a piece from those, by the piece's seed alone: the same seed, the same plan.
The sampler (generator.sampling) follows it: phrases end on cadences, a returning section plays again, and
the piece ends on the tonic at its requested length.

Times here are steps of 1/8 beat from the start of the piece, as in generator.decode; the data set's ticks
(TPQ 96) are 12 to a step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from generator import density, form_metrics, harmony, metrics, rhythm

if TYPE_CHECKING:
    from generator.vocab import Vocab

STEPS_PER_BEAT = 8  # the generator's grid: 1/8 of a quarter note
TICKS_PER_STEP = 12  # the data set's TPQ (96) over STEPS_PER_BEAT
DEFAULT_BAR = 4 * STEPS_PER_BEAT
DEFAULT_PHRASE_BARS = 4  # a source that marks no phrases (a MIDI file, a motet) is read in four-bar phrases
MAX_FORMS = 40  # piece shapes kept per style, the most common first
MIN_SECTION_BARS = 2
MAX_INTERVAL = 12  # melodic intervals learnt up to an octave either way; wider ones count as an octave
MIN_SHARE = 0.04  # share of a style's phrases a phrase length or cadence root needs to be planned
MIN_FERMATAS = 3  # fewer in a piece are a final chord or a pause, not phrase marks (a chorale has 4-10)
MAX_STRAIN_BARS = 16
MAX_PIECES = 400  # training pieces read per style to learn its forms
# Times a tune is played through before a new one follows: a session plays a reel or a chorale its verses
# about three times, where twenty passes of one 16-bar strain pair over four minutes are heard as a loop.
TUNE_PASSES = 3
REPEAT_BARS = (8, 4, 2)  # lengths of passage looked for played twice in writing, the longest first
REPEAT_MATCH = 0.85  # share of a passage's (onset, pitch) pairs that must come back: endings may differ
MIN_REPEAT_NOTES = 6
ECHO_PHRASE_BARS = 4  # a phrase this long or longer may open as the phrase before it did (its first half)
RHYME_BARS = 2  # a strain that ends as the strain before it did ends with the same this many bars
SINGLE_LINE_OVERLAP = 0.05  # an instrument whose notes overlap its own next note less often plays one line
MIN_TESSITURA_NOTES = 200  # fewer notes of an instrument in a style say too little about where it sings
_MINOR_KEY = "m"


@dataclass(frozen=True)
class Section:
    """A stretch of the piece: new music, or the return of an earlier section."""

    label: str  # "A", "B", ...: a returning section has its source's label
    start: int  # in bars from the start of the piece
    bars: int
    returns: int | None = None  # index of the section it plays again, None for new music


@dataclass(frozen=True)
class Phrase:
    start: int  # bar
    bars: int
    cadence: int  # root of the chord it comes to rest on, in semitones above the tonic (7: the dominant)
    section: int  # index into Plan.sections
    # Index of the phrase before it whose first half it opens with again (a reel's "a a'"), None for new music.
    echo: int | None = None
    # Index of the phrase before it whose last RHYME_BARS bars it ends with again (a tune's B strain ending as
    # its A strain did), None for an ending of its own.
    rhyme: int | None = None


@dataclass(frozen=True)
class Plan:
    """Plain data, kept in a piece's record and shown on its page and the overlay."""

    bar: int  # steps per bar
    bars: int
    sections: tuple[Section, ...]
    phrases: tuple[Phrase, ...]
    # One chord per span (generator.harmony.span_steps: half a 4/4 bar, else a bar) as harmony states above
    # the tonic; empty for a model without keys or a card without learnt harmony.
    chords: tuple[int, ...] = ()
    # The share of its time a part of the style's real pieces spends silent between its notes (the card's
    # rhythm "rests": a chorale's 6 %, a quartet's 21 %), which the critic holds a bar's parts to; None: none.
    rests: float | None = None

    @property
    def span(self) -> int:
        return harmony.span_steps(self.bar)

    def chord_at(self, time: int) -> int | None:
        """The planned chord sounding at step `time`, if the plan has chords."""
        if not self.chords:
            return None
        return self.chords[min(max(0, time) // self.span, len(self.chords) - 1)]

    @property
    def form(self) -> str:
        """The sections' letters as a listener names them: "A A B B"."""
        return " ".join(s.label for s in self.sections)

    def cadence_times(self) -> list[int]:
        """Each phrase's cadence: the downbeat of its last bar."""
        return [(p.start + p.bars - 1) * self.bar for p in self.phrases]

    def phrase_starts(self) -> list[int]:
        return [p.start * self.bar for p in self.phrases]

    def end(self) -> int:
        return self.bars * self.bar

    def replays(self) -> dict[int, tuple[int, int]]:
        """Where the notes play earlier ones again: step -> (the step they were first played at, how many
        steps). A returning section replays its source but its last bar (it cadences anew, a second ending); a
        phrase that echoes another opens with the other's first half."""
        out = {}
        for section in self.sections:
            if section.returns is not None:
                source = self.sections[section.returns].start * self.bar
                out[section.start * self.bar] = (source, (section.bars - 1) * self.bar)
        for phrase in self.phrases:
            if phrase.echo is not None:
                source = self.phrases[phrase.echo].start * self.bar
                out[phrase.start * self.bar] = (source, phrase.bars // 2 * self.bar)
            if phrase.rhyme is not None:
                was = self.phrases[phrase.rhyme]
                at = (phrase.start + phrase.bars - RHYME_BARS) * self.bar
                out[at] = ((was.start + was.bars - RHYME_BARS) * self.bar, RHYME_BARS * self.bar)
        return out

    def progression(self) -> list[str]:
        """The chords bar by bar as Roman numerals, a bar's two halves joined by a space: ["I", "IV V", ...]."""
        per_bar = self.bar // self.span
        names = [harmony.roman(c) for c in self.chords]
        return [" ".join(dict.fromkeys(names[i : i + per_bar])) for i in range(0, len(names), per_bar)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"form": self.form, "progression": self.progression()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            int(data["bar"]),
            int(data["bars"]),
            tuple(Section(**s) for s in data["sections"]),
            tuple(Phrase(**p) for p in data["phrases"]),
            tuple(int(c) for c in data.get("chords") or ()),
            None if data.get("rests") is None else float(data["rests"]),
        )


def bar_steps(card: dict[str, Any], style: str) -> int:
    """Steps per bar of the style's usual metre, as learnt into the model card; a 4/4 bar when it has none."""
    return int(form_profile(card, style).get("bar", DEFAULT_BAR))


def form_profile(card: dict[str, Any], style: str) -> dict[str, Any]:
    return card.get("style_defaults", {}).get(style, {}).get("form") or {}


def draw_plan(
    profile: dict[str, Any], seconds: float, tempo: float, seed: int, minor: bool | None = None
) -> Plan:
    """The plan of a piece of about `seconds` at `tempo`, drawn by `seed` from a style's learnt profile.

    The piece lasts a whole number of bars, the nearest to the length asked for. Its shape is one of the
    style's real pieces' shapes; a shape shorter than the piece plays again from the top when its sections
    repeat (a set of dance tunes), else goes on with new sections of the same lengths (music written straight
    through). The last section is cut to fit. With the key's mode (`minor`) and a profile with learnt
    harmony, it also plans a chord per span that reaches each phrase's cadence.
    """
    rng = np.random.default_rng([seed, 0x706C616E])  # "plan": apart from the sampler's and the key's draws
    forms = profile.get("forms") or [{"bar": int(profile.get("bar", DEFAULT_BAR)), "sections": [], "count": 1}]
    form = _choose(rng, [(f, f["count"]) for f in forms])
    bar = int(form["bar"])
    bars = max(MIN_SECTION_BARS, round(seconds * tempo / 60.0 * STEPS_PER_BEAT / bar))
    shape = form["sections"] or [[bars, False]]
    sections = _sections(shape, bars)
    phrase_bars = {int(k): v for k, v in (profile.get("phrase_bars") or {DEFAULT_PHRASE_BARS: 1}).items()}
    # A key's mode has cadences of its own (a minor piece rests on its relative major, bIII, a major one never).
    by_mode = (
        (profile.get("mode_cadences") or {}).get("minor" if minor else "major") if minor is not None else None
    )
    cadences = {int(k): v for k, v in (by_mode or profile.get("cadences") or {0: 1, 7: 1}).items()}
    phrases: list[Phrase] = []
    for index, section in enumerate(sections):
        if section.returns is not None:
            # A return plays its source again, all but the last bar; its last phrase gets a new cadence.
            source = [p for p in phrases if p.section == section.returns]
            lengths = _fit([p.bars for p in source], section.bars)
            kept = [p.cadence for p in source]
        else:
            lengths = _phrase_lengths(rng, phrase_bars, section.bars)
            kept = []
        start = section.start
        for i, length in enumerate(lengths):
            last = i == len(lengths) - 1
            cadence = kept[i] if i < len(kept) and not last else int(_choose(rng, list(cadences.items())))
            phrases.append(Phrase(start, length, cadence, index))
            start += length
    final = phrases[-1]
    phrases[-1] = replace(final, cadence=0)  # a piece ends on its tonic
    if profile.get("echo"):  # its own draws: a card without echoes keeps every seed's plan as it was
        phrases = _echoes(phrases, sections, float(profile["echo"]), np.random.default_rng([seed, 0x6563686F]))
    if profile.get("rhyme"):  # the same: a card without rhymes keeps every plan as it was
        phrases = _rhymes(phrases, sections, float(profile["rhyme"]), np.random.default_rng([seed, 0x72687965]))
    rests = (profile.get("rhythm") or {}).get("rests")
    plan = Plan(bar, bars, tuple(sections), tuple(phrases), rests=None if rests is None else float(rests))
    if minor is None or not profile.get("harmony"):
        return plan
    # Its own draws: a card that learns harmony keeps every seed's form as it was.
    chords = _chords(plan, profile["harmony"], minor, np.random.default_rng([seed, 0x63686F72]))
    return replace(plan, chords=tuple(chords))


def _echoes(
    phrases: list[Phrase], sections: Sequence[Section], share: float, rng: np.random.Generator
) -> list[Phrase]:
    """Each second phrase of a pair in new music, as long as the first and ECHO_PHRASE_BARS or more, opens
    as the first did with chance `share` (the style's, learnt by `_echo_counts`)."""
    out = list(phrases)
    for index, section in enumerate(sections):
        if section.returns is not None:
            continue  # a return replays its source's echoes with its notes
        mine = [i for i, p in enumerate(out) if p.section == index]
        for first, second in zip(mine[::2], mine[1::2], strict=False):
            drawn = rng.random()  # drawn for every pair, so that one pair's length never moves another's
            if out[first].bars == out[second].bars >= ECHO_PHRASE_BARS and drawn < share:
                out[second] = replace(out[second], echo=first)
    return out


def _rhymes(
    phrases: list[Phrase], sections: Sequence[Section], share: float, rng: np.random.Generator
) -> list[Phrase]:
    """Each new section after another ends as that one ended (its last phrase's last RHYME_BARS bars, on its
    cadence) with chance `share` (the style's, learnt by `_rhyme_counts`). Never the piece's last phrase: the
    final cadence is the plan's own, held on the tonic."""
    out = list(phrases)
    for index in range(1, len(sections)):
        drawn = rng.random()  # drawn for every section, so that one section's length never moves another's
        if sections[index].returns is not None or sections[index - 1].label == sections[index].label:
            continue
        mine = [i for i, p in enumerate(out) if p.section == index]
        before = [i for i, p in enumerate(out) if p.section == index - 1]
        last, source = mine[-1], before[-1]
        if last == len(out) - 1 or min(out[last].bars, out[source].bars) < 2 * RHYME_BARS or drawn >= share:
            continue
        out[last] = replace(out[last], rhyme=source, cadence=out[source].cadence)
    return out


def _chords(plan: Plan, learnt: dict[str, Any], minor: bool, rng: np.random.Generator) -> list[int]:
    """A chord per span, section by section: the tonic first, each phrase's cadence chord from its last
    downbeat to its end, and what the notes replay (a returning section but its last bar, a phrase's echoed
    opening) on the chords they were first played on."""
    per_bar = plan.bar // plan.span
    cadences: dict[int, int] = {}  # span -> the cadence chord it holds
    for p in plan.phrases:
        chord = harmony.cadence_chord(p.cadence, minor)
        cadences.update(
            {i: chord for i in range((p.start + p.bars - 1) * per_bar, (p.start + p.bars) * per_bar)}
        )
    replays = {
        at // plan.span: (was // plan.span, steps // plan.span) for at, (was, steps) in plan.replays().items()
    }
    # Drawn up to each replay in turn, so that its source's chords are known when it is pinned to them.
    cuts = sorted({0, *(s.start * per_bar for s in plan.sections), *replays, plan.bars * per_bar})
    out: list[int] = []
    for begin, end in pairwise(cuts):
        source, spans = replays.get(begin, (begin, 0))
        pins = {i: out[source + i] for i in range(spans) if source + i < begin}
        pins.update({t - begin: c for t, c in cadences.items() if begin <= t < end})
        if not out:
            pins.setdefault(0, harmony.state(0, harmony.MINOR if minor else harmony.MAJOR))
        out += harmony.draw_chords(learnt, minor, end - begin, pins, rng, out[-1] if out else None)
    return out


def _sections(shape: Sequence[Sequence[Any]], bars: int) -> list[Section]:
    """Lay a shape's sections ([bars, repeated] each) over `bars` bars.

    A tune (a shape with repeats) plays each repeated section twice and, once through, starts again from the
    top with every section a return, up to TUNE_PASSES times; then a new tune of the same shape follows, as a
    session plays a set. Music written straight through gets new sections instead.
    """
    units = [(max(MIN_SECTION_BARS, int(b)), bool(r)) for b, r in shape]
    is_tune = any(r for _, r in units)
    sections: list[Section] = []
    first: dict[int, int] = {}  # unit -> the section that first played it
    labels = 0
    passes = 0
    while sum(s.bars for s in sections) < bars:
        if passes == TUNE_PASSES:
            first, passes = {}, 0
        passes += 1
        for unit, (length, repeated) in enumerate(units):
            for _ in range(2 if repeated else 1):
                at = sum(s.bars for s in sections)
                if at >= bars:
                    break
                here = min(length, bars - at)
                if unit in first and is_tune:
                    sections.append(Section(sections[first[unit]].label, at, here, first[unit]))
                else:
                    first.setdefault(unit, len(sections))
                    sections.append(Section(_label(labels), at, here))
                    labels += 1
    # A last section too short to say anything joins the one before it.
    if len(sections) > 1 and sections[-1].bars < MIN_SECTION_BARS:
        tail, prev = sections.pop(), sections.pop()
        sections.append(Section(prev.label, prev.start, prev.bars + tail.bars, prev.returns))
    return sections


def _label(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else f"S{index}"


def _phrase_lengths(rng: np.random.Generator, lengths: dict[int, float], bars: int) -> list[int]:
    out: list[int] = []
    while sum(out) < bars:
        out.append(int(_choose(rng, list(lengths.items()))))
    return _fit(out, bars)


def _fit(lengths: list[int], bars: int) -> list[int]:
    """Phrase lengths cut or stretched to fill `bars` exactly; none shorter than a bar."""
    out: list[int] = []
    for length in lengths:
        if sum(out) >= bars:
            break
        out.append(min(length, bars - sum(out)))
    if sum(out) < bars:
        out.append(bars - sum(out))
    if len(out) > 1 and out[-1] < MIN_SECTION_BARS and out[-1] < out[-2]:
        tail = out.pop()
        out[-1] += tail
    return out


def _choose(rng: np.random.Generator, weighted: Sequence[tuple[Any, float]]) -> Any:
    """One value of a list of [value, weight] pairs, drawn in proportion to the weights."""
    weights = np.array([float(w) for _, w in weighted])
    return weighted[int(rng.choice(len(weighted), p=weights / weights.sum()))][0]


# --- learning a style's profile from its real pieces -------------------------------------------------------


def learn_form(
    rows: Iterable[dict[str, Any]], notes_of: Iterable[np.ndarray], tritone: bool = False
) -> dict[str, Any]:
    """A style's form profile from its real pieces: index rows of the data set (with "bar", "pickup",
    "sections" and "fermatas" in ticks, and "key") and each piece's note array (steps, as
    generator.decode.notes_array), in the same order.

    Returns plain data for the model card: "bar" (steps per bar, the most common metre), "forms" (the pieces'
    shapes, most common first: {"bar": steps per bar, "sections": [[bars, repeated], ...], "count": pieces}),
    "phrase_bars" ({bars: count}, the lengths a style's phrases commonly take), "cadences" ({root
    above the tonic: count} where phrases end; "mode_cadences" the same per mode, from pieces with a key),
    "pitch_classes" ({"major"|"minor": 12 shares from the tonic up})
    "intervals" (shares of each melodic interval from -12 to +12 semitones, as metrics.interval_histogram
    measures them), "single_line" (programs whose notes rarely overlap their own next note), "legato"
    (programs whose notes rarely still sound at their own next onset, chords apart) and "harmony"
    (its chords and their moves in each mode, generator.harmony.learn_harmony, from the pieces with a key) and
    "density" (the most notes each instrument strikes at once and in a bar, generator.density.learn_density)
    and "rhythm" (how often its parts rest and its lines step, generator.rhythm.learn_rhythm), "echo" (the
    share of its strains whose second phrase opens as the first, `_echo_counts`), "rhyme" (the share of its
    strains that end as the strain before them, `_rhyme_counts`) and "clashes" (the share of
    its strong beats that clash, form_metrics.strong_beat_clash_counts; with `tritone`, the style hears a
    tritone over the bass as a clash, and "clash_tritone" says so) and "tessitura" (per program, the
    quartiles of its pitches: where each part sings, `_tessitura`) and "lengths" (shares of its notes' lengths,
    metrics.length_histogram's bins).
    """
    bars: Counter[int] = Counter()
    forms: Counter[tuple[int, tuple[tuple[int, bool], ...]]] = Counter()  # (bar, sections) -> pieces
    phrase_bars: Counter[int] = Counter()
    cadences: Counter[int] = Counter()
    mode_cadences: dict[str, Counter[int]] = {"major": Counter(), "minor": Counter()}
    pcs = {"major": np.zeros(12), "minor": np.zeros(12)}
    intervals = np.zeros(2 * MAX_INTERVAL + 1)
    lengths = np.zeros(metrics.LENGTH_BINS)
    overlaps: dict[int, list[int]] = {}  # program -> [notes chorded, notes overlapping their next onset, all]
    keyed: list[tuple[np.ndarray, int, int, int, bool]] = []  # for the style's harmony
    textures: list[tuple[np.ndarray, int, int]] = []  # for its instruments' density limits
    lines: list[np.ndarray] = []  # for its rhythm
    echoes = [0, 0]  # phrase pairs in new music, and those whose second opens as the first
    rhymes = [0, 0]  # strains followed by another, and those that end as the one before them
    strong = [0, 0]  # strong beats sounding two pitch classes or more, and those that clash
    heights: dict[int, list[np.ndarray]] = {}  # program -> its pitches, piece by piece
    for row, notes in zip(rows, notes_of, strict=True):
        pitched = notes[notes[:, 3] >= 0]
        if len(pitched) == 0:
            continue
        bar = int(row.get("bar") or 0) // TICKS_PER_STEP or DEFAULT_BAR
        bars[bar] += 1
        tonic, minor = key_of(row.get("key"))
        pickup = (int(row.get("pickup") or 0) // TICKS_PER_STEP) % bar
        if row.get("key"):
            keyed.append((pitched, bar, pickup, tonic, minor))
        textures.append((notes, bar, pickup))
        lines.append(pitched)
        for program in np.unique(pitched[:, 3]):
            heights.setdefault(int(program), []).append(pitched[pitched[:, 3] == program, 1])
        pcs["minor" if minor else "major"] += np.bincount((pitched[:, 1] - tonic) % 12, minlength=12)
        intervals += metrics.interval_counts(pitched, MAX_INTERVAL)
        lengths += metrics.length_counts(pitched)
        sections = [(s // TICKS_PER_STEP, e // TICKS_PER_STEP, r) for s, e, r in row.get("sections") or []]
        end = int((pitched[:, 0] + pitched[:, 2]).max())
        if not sections:
            sections = [(0, end, False)]
        # The shape as heard (music written out twice is a repeat); phrases and cadences as the score marks.
        heard = written_repeats(sections, pitched, bar, pickup)
        forms[(bar, tuple((max(1, round((e - s) / bar)), bool(r)) for s, e, r in heard))] += 1
        pairs, echoed = _echo_counts(heard, pitched, bar, pickup)
        echoes[0] += pairs
        echoes[1] += echoed
        pairs, rhymed = _rhyme_counts(heard, pitched, bar)
        rhymes[0] += pairs
        rhymes[1] += rhymed
        judged, clashing = form_metrics.strong_beat_clash_counts(pitched, bar, pickup, tritone)
        strong[0] += judged
        strong[1] += clashing
        fermatas = sorted({f // TICKS_PER_STEP for f in row.get("fermatas") or []})
        ends = fermatas or sorted({e for _, e, _ in sections})
        # Phrases are read where a score marks them: between fermatas (a chorale), else in its sections (a
        # tune's strains, whose eight bars are two phrases). A mark only at the very end says nothing.
        if len(fermatas) >= MIN_FERMATAS:
            starts = [0, *fermatas[:-1]]
            phrase_bars.update(max(1, round((b - a) / bar)) for a, b in zip(starts, fermatas, strict=True))
        elif len(sections) >= 2:
            for s, e, _ in sections:
                length = round((e - s) / bar)
                if (
                    MIN_SECTION_BARS <= length <= MAX_STRAIN_BARS
                ):  # a long section is a movement's, not a phrase
                    phrase_bars[length // 2 if length >= 8 and length % 2 == 0 else length] += 1
        for tick in ends:
            root = _resting_root(pitched, tick)
            if root is not None:
                cadences[(root - tonic) % 12] += 1
                if row.get("key"):
                    mode_cadences["minor" if minor else "major"][(root - tonic) % 12] += 1
        for program, counts in _overlaps(pitched).items():
            tally = overlaps.setdefault(program, [0, 0, 0])
            for i, n in enumerate(counts):
                tally[i] += n
    if not bars:
        return {}
    return {
        "bar": bars.most_common(1)[0][0],
        "forms": [
            {"bar": b, "sections": [list(u) for u in shape], "count": n}
            for (b, shape), n in forms.most_common(MAX_FORMS)
        ],
        "phrase_bars": _common(phrase_bars) or {str(DEFAULT_PHRASE_BARS): 1},
        # A root a phrase seldom rests on is more likely a misread key than a cadence the style makes.
        "cadences": _common(cadences),
        "mode_cadences": {mode: _common(c) for mode, c in mode_cadences.items() if c},
        "pitch_classes": {mode: [round(float(x), 5) for x in v / max(1.0, v.sum())] for mode, v in pcs.items()},
        "intervals": [round(float(x), 5) for x in intervals / max(1.0, intervals.sum())],
        "lengths": [round(float(x), 5) for x in lengths / max(1.0, lengths.sum())],
        "single_line": sorted(
            p for p, (chorded, over, total) in overlaps.items() if chorded + over < SINGLE_LINE_OVERLAP * total
        ),
        # Parts that may strike a chord (a quartet's double stops) but let each note go by their next onset.
        "legato": sorted(p for p, (_, over, total) in overlaps.items() if over < SINGLE_LINE_OVERLAP * total),
        "programs": sorted(overlaps),
        "harmony": harmony.learn_harmony(keyed),
        "density": density.learn_density(textures),
        "chordal": density.chordal_share(textures),
        "rhythm": rhythm.learn_rhythm(lines),
        "echo": round(echoes[1] / echoes[0], 5) if echoes[0] else 0.0,
        "rhyme": round(rhymes[1] / rhymes[0], 5) if rhymes[0] else 0.0,
        "tessitura": _tessitura(heights),
        **({"clashes": round(strong[1] / strong[0], 5), "clash_tritone": tritone} if strong[0] else {}),
    }


def _tessitura(heights: dict[int, list[np.ndarray]]) -> dict[str, list[float]]:
    """Per program (as a string), the quartiles of the pitches it plays in the style: where its part sings."""
    out = {}
    for program, found in sorted(heights.items()):
        played = np.concatenate(found)
        if len(played) >= MIN_TESSITURA_NOTES:
            out[str(program)] = [round(float(q), 2) for q in np.percentile(played, [25, 50, 75])]
    return out


def written_repeats(
    sections: list[tuple[int, int, bool]], notes: np.ndarray, bar: int, pickup: int = 0
) -> list[tuple[int, int, bool]]:
    """Sections as a listener hears them: music written out twice (A A, as most Essen songs and many tunes
    write their repeats) becomes one repeated section, as a repeat sign would have written it.

    Args:
        sections: (start, end, repeated) in steps, as the score marks them.
        notes: the piece's pitched notes (generator.decode.notes_array), in steps.
        bar: steps per bar; pickup: steps before the first bar line.
    """
    out: list[tuple[int, int, bool]] = []
    for start, end, repeated in sections:
        if repeated:
            out.append((start, end, repeated))
            continue
        plain = start  # where the stretch of music not heard twice began
        at = start + pickup if start == 0 else start
        while at + 2 * REPEAT_BARS[-1] * bar <= end + bar // 2:
            fits = (n for n in REPEAT_BARS if at + 2 * n * bar <= end + bar // 2)
            length = next((n for n in fits if _same(notes, at, n * bar)), 0)
            if not length:
                at += bar
                continue
            if at - plain >= MIN_SECTION_BARS * bar:
                out.append((plain, at, False))
            # A shorter stretch before it (a pickup, a bar of introduction) belongs to the repeated music.
            out.append((plain if at - plain < MIN_SECTION_BARS * bar else at, at + length * bar, True))
            at = plain = at + 2 * length * bar
        if end - plain >= MIN_SECTION_BARS * bar or not out:
            out.append((plain, end, False))
        elif not out[-1][2]:  # a last bar or so ends the plain stretch before it (a repeat keeps its length)
            out[-1] = (out[-1][0], end, False)
    return out


def _echo_counts(
    sections: list[tuple[int, int, bool]], notes: np.ndarray, bar: int, pickup: int
) -> tuple[int, int]:
    """(pairs, echoed): the sections that fall into two phrases of ECHO_PHRASE_BARS or more (as the plan
    draws a tune's eight-bar strain), and those whose second phrase's first half is the first's again."""
    pairs = echoed = 0
    for start, end, _ in sections:
        bars = round((end - start) / bar)
        if bars < 2 * ECHO_PHRASE_BARS or bars % 2:
            continue
        at = start + pickup if start == 0 else start
        half = bars // 2 * bar
        pairs += 1
        echoed += _same(notes, at, bars // 4 * bar, again=at + half)
    return pairs, echoed


def _rhyme_counts(sections: list[tuple[int, int, bool]], notes: np.ndarray, bar: int) -> tuple[int, int]:
    """(pairs, rhymed): strains of 2 * RHYME_BARS bars or more followed by another such strain, and those
    where the second ends as the first did (its last RHYME_BARS bars nearly note for note)."""
    strains: list[tuple[int, int]] = []
    for start, end, _ in sections:  # a strain repeated is one strain here
        if not strains or strains[-1] != (start, end):
            strains.append((start, end))
    pairs = rhymed = 0
    for (a, first), (b, second) in pairwise(strains):
        if min(first - a, second - b) < 2 * RHYME_BARS * bar or first > b:
            continue
        pairs += 1
        rhymed += _same(notes, first - RHYME_BARS * bar, RHYME_BARS * bar, again=second - RHYME_BARS * bar)
    return pairs, rhymed


def _same(notes: np.ndarray, at: int, length: int, again: int | None = None) -> bool:
    """Whether the music of [at, at + length) comes back nearly note for note at `again` (at once, by
    default): a first and second ending, or a different cadence, may change its end."""
    later = at + length if again is None else again
    first = _onsets(notes, at, at + length)
    second = _onsets(notes, later, later + length)
    if len(first) < MIN_REPEAT_NOTES or len(second) < MIN_REPEAT_NOTES:
        return False
    return len(first & second) >= REPEAT_MATCH * max(len(first), len(second))


def _onsets(notes: np.ndarray, start: int, end: int) -> set[tuple[int, int]]:
    inside = notes[(notes[:, 0] >= start) & (notes[:, 0] < end)]
    return {(int(t) - start, int(p)) for t, p in zip(inside[:, 0], inside[:, 1], strict=True)}


def _common(counts: Counter[int]) -> dict[str, int]:
    """The counts of the values that make up at least MIN_SHARE of all, as card data."""
    return {str(k): v for k, v in sorted(counts.items()) if v >= MIN_SHARE * counts.total()}


def _resting_root(notes: np.ndarray, tick: int) -> int | None:
    """The lowest pitch struck at the last onset before `tick`: where a phrase comes to rest."""
    before = notes[notes[:, 0] < tick]
    if len(before) == 0:
        return None
    last = before[before[:, 0] == before[:, 0].max()]
    return int(last[:, 1].min())


def _overlaps(notes: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """Per program: (notes struck with another of its notes, notes still sounding when the program's next
    onset comes, all its notes)."""
    out = {}
    for program in np.unique(notes[:, 3]):
        mine = notes[notes[:, 3] == program]
        starts = mine[:, 0]
        onsets = np.unique(starts)
        chorded = len(mine) - len(onsets)
        order = np.argsort(starts, kind="stable")
        ends = (mine[:, 0] + mine[:, 2])[order]
        following = np.searchsorted(onsets, starts[order], side="right")
        has_next = following < len(onsets)
        overlapping = int(np.sum(ends[has_next] > onsets[following[has_next]]))
        out[int(program)] = (chorded, overlapping, len(mine))
    return out


def key_of(name: str | None) -> tuple[int, bool]:
    """(tonic pitch class, minor) of a key name such as "F#m"; C major for None (a model without keys)."""
    from generator import vocab  # imported late: vocab brings in MidiTok, and this module stays light

    return vocab.key_of(name) if name in vocab.KEYS else (0, False)


def learn_forms(dataset_dir: Path, vocab: Vocab, per_style: int = MAX_PIECES) -> dict[str, dict[str, Any]]:
    """Each style's form profile (`learn_form`) from up to `per_style` of its training pieces."""
    from generator.data import read_index
    from generator.decode import decode, notes_array

    tokens = np.load(dataset_dir / "tokens.npy", mmap_mode="r")
    rows = [r for r in read_index(dataset_dir) if r["split"] == "train" and r["length"] > 0]
    out = {}
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        mine = mine[:: max(1, len(mine) // per_style)][:per_style]
        notes = (notes_array(decode(vocab, tokens[r["offset"] : r["offset"] + r["length"]])) for r in mine)
        out[style] = learn_form(mine, notes, tritone=style in form_metrics.TRITONE_CLASHES)
    return out


__all__ = [
    "Phrase",
    "Plan",
    "Section",
    "bar_steps",
    "draw_plan",
    "form_profile",
    "key_of",
    "learn_form",
    "learn_forms",
]
