"""`concertbot eval`: how close the model's pieces come to each style's real held-out pieces.

Per style: held-out loss (from the model card), then over N generated pieces: Jensen-Shannon distance of the
pitch-class and interval histograms to the real held-out pieces (next to the same distance between the real
training and held-out pieces, the floor a perfect model would reach), notes per second, share of degenerate
pieces, share of notes on the requested instruments when the prefix alone asks for them, and how often a
classifier trained on real pieces (generator.style_classifier) recognises the requested style (and which style
it most often takes the others for, to say where a model falls short), next to how often it recognises the real
held-out pieces: whole, cut to the generated pieces' length, and played by other styles' ensembles, each part
moved by octaves into its new instrument's range. The classifier hears pitch classes from the tonic, melodic
moves, rhythm against the beat and texture, never instruments, register or tempo; the last figure shows it.

Then form and texture (generator.form_metrics), generated next to real: how pieces end (on a strong beat, held,
on the tonic), how chordal and leapy they are, how often their strong beats clash, whether passages recur,
whether the asked key is kept, how evenly the instruments share the notes and how thick the texture gets.
Texture is measured on the real pieces' openings as played (a section the score repeats heard twice), as long
as the generated pieces; endings on the whole real pieces, since an opening is cut off rather than ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import ConcertbotError
from generator import form_metrics, metrics, plan
from generator.data import read_index
from generator.decode import decode, notes_array
from generator.disguises import reorchestrated
from generator.instruments import DRUMS, find_instrument
from generator.model import LoadedModel
from generator.plan import bar_steps  # by name: evaluate's `plan` argument hides the module
from generator.recipes import style_defaults
from generator.sampling import Composer, PieceRequest, chosen_key
from generator.style_classifier import StyleClassifier, features
from generator.vocab import Vocab, key_of

MAX_REAL_PER_STYLE = 150  # enough for stable histograms and a classifier; keeps eval quick


@dataclass
class StyleReport:
    style: str
    valid_loss: float | None
    real_pieces: int  # held-out pieces the "(real)" figures come from: with one or two, they are anecdotes
    pitch_class_js: float
    pitch_class_js_real: float
    interval_js: float
    interval_js_real: float
    length_js: float  # note lengths (metrics.length_histogram): the rhythm a style's lines move in
    length_js_real: float
    notes_per_second: float
    notes_per_second_real: float
    degenerate_share: float
    on_instruments_share: float
    recognised: float
    recognised_real: float
    mistaken_for: str  # what the classifier most often takes the unrecognised generated pieces for, or "-"
    # The held-out pieces cut to their first `seconds`, as long as the generated ones: the like-for-like
    # control, since a whole piece shows the classifier more than a generated opening can.
    recognised_real_openings: float
    # The held-out pieces played by the other styles' default ensembles in turn, each part moved by octaves
    # into its new instrument's range: near recognised_real when the classifier hears music, not instruments.
    recognised_real_reorchestrated: float
    # The pitch-class distance with each piece's key rotated to its tonic, since training transposes on purpose.
    key_free_pitch_class_js: float
    key_free_pitch_class_js_real: float
    # The classifier is key-free itself now, so these equal recognised and recognised_real; kept while the
    # eval table still has its "key-free recognised" column.
    key_free_recognised: float
    key_free_recognised_real: float
    # Form and texture, from `form_summary`: generated pieces, then the real held-out ones.
    ends_on_downbeat: float
    ends_on_downbeat_real: float
    ends_long: float
    ends_long_real: float
    ends_on_tonic: float
    ends_on_tonic_real: float
    chordal_onset_share: float
    chordal_onset_share_real: float
    leap_share: float
    leap_share_real: float
    recurring_share: float
    recurring_share_real: float
    longest_recurring_bars: float
    longest_recurring_bars_real: float
    key_kept: float
    key_kept_real: float
    smallest_instrument_share: float
    smallest_instrument_share_real: float
    most_simultaneous: float  # a count of notes, typed as the other figures are: the most in any piece
    most_simultaneous_real: float
    self_overlap_share: float
    self_overlap_share_real: float
    outer_span: float
    outer_span_real: float
    fifth_moves: float
    fifth_moves_real: float
    diatonic_share: float
    diatonic_share_real: float
    chord_changes_per_bar: float
    chord_changes_per_bar_real: float
    strong_beat_clashes: float
    strong_beat_clashes_real: float
    # The real openings as written, repeat signs not played: the data set's notes play a repeated strain once.
    recurring_share_written_real: float


@dataclass(frozen=True)
class RealPiece:
    """A real piece of the data set, decoded, with the metre and key its index row gives."""

    notes: np.ndarray  # [N, 4] as metrics expects
    tempo: float
    bar: int  # steps per bar
    pickup: int  # steps before the first downbeat
    # (tonic pitch class, minor): the row's, else estimated from the notes as the data set estimates it.
    key: tuple[int, bool]
    sections: tuple[tuple[int, int, bool], ...] = ()  # (start, end, repeated) in steps, as the score marks them


def row_form(row: dict[str, Any]) -> tuple[int, int, tuple[int, bool] | None]:
    """(bar steps, pickup steps, key) of a data set index row.

    Rows give the metre in ticks at the data set's TPQ. Data sets built before it was kept, and sources that
    name no metre (bar 0), fall back to a 4/4 bar starting on its downbeat; a row without a key gives None.
    """
    bar = round((row.get("bar") or 0) / plan.TICKS_PER_STEP)
    pickup = round((row.get("pickup") or 0) / plan.TICKS_PER_STEP)
    tonality = key_of(row["key"]) if row.get("key") else None
    return (bar, pickup % bar, tonality) if bar > 0 else (plan.DEFAULT_BAR, 0, tonality)


def real_pieces(
    dataset: Path, vocab: Vocab, split: str, per_style: int = MAX_REAL_PER_STYLE
) -> dict[str, list[RealPiece]]:
    """The first `per_style` pieces of each of the vocabulary's styles in one split ("train" or "valid")."""
    tokens = np.load(dataset / "tokens.npy", mmap_mode="r")
    out: dict[str, list[RealPiece]] = {}
    for row in read_index(dataset):
        if row["split"] != split or row["style"] not in vocab.styles:
            continue
        mine = out.setdefault(row["style"], [])
        if len(mine) < per_style:
            ids = tokens[row["offset"] : row["offset"] + row["length"]].tolist()
            notes = notes_array(decode(vocab, ids))
            bar, pickup, tonality = row_form(row)
            tonality = tonality or metrics.key(metrics.pitch_class_histogram(notes))
            sections = tuple(
                (s // plan.TICKS_PER_STEP, e // plan.TICKS_PER_STEP, bool(r))
                for s, e, r in row.get("sections") or ()
            )
            mine.append(RealPiece(notes, row["tempo"], bar, pickup, tonality, sections))
    return out


def _timed(pieces: list[RealPiece]) -> list[tuple[np.ndarray, float]]:
    return [(p.notes, p.tempo) for p in pieces]


def _programs(notes: np.ndarray) -> list[int]:
    """The instruments a real piece is written for: every program it plays anywhere in it."""
    return sorted(set(notes[:, metrics.PROGRAM].tolist()))


def opening(notes: np.ndarray, tempo: float, seconds: float) -> np.ndarray:
    """The notes that start in a piece's first `seconds`."""
    return notes[notes[:, metrics.START] < seconds * tempo / 60.0 * metrics.STEPS_PER_BEAT]


def played_opening(piece: RealPiece, seconds: float) -> np.ndarray:
    """A real piece's first `seconds` as a listener hears it played, its repeated sections twice, as a
    generated piece plays its returning ones (the data set writes a repeated strain once)."""
    return opening(form_metrics.as_played(piece.notes, piece.sections, piece.bar), piece.tempo, seconds)


def _default_programs(loaded: LoadedModel, style: str) -> list[int]:
    return [find_instrument(name).program for name in style_defaults(loaded, style)[0]]


def other_ensembles(
    pieces: Sequence[np.ndarray], style: str, ensembles: Mapping[str, Sequence[int]]
) -> list[np.ndarray]:
    """Each piece of `style` re-orchestrated for another style's ensemble (programs), taking them in turn.

    The ensembles of the styles after `style` in `ensembles`' order come first, wrapping round, so piece i
    is played by the (i mod n)-th other ensemble; with no other style, each piece keeps its own notes.
    """
    names = list(ensembles)
    others = names[names.index(style) + 1 :] + names[: names.index(style)] if style in names else names
    if not others:
        return list(pieces)
    return [reorchestrated(notes, ensembles[others[i % len(others)]]) for i, notes in enumerate(pieces)]


def _pooled(
    pieces: list[tuple[np.ndarray, float]], histogram: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    pooled: np.ndarray = np.sum([histogram(n) * max(1, len(n)) for n, _ in pieces], axis=0)
    return pooled


def _distances(
    histogram: Callable[[np.ndarray], np.ndarray],
    made: list[tuple[np.ndarray, float]],
    train: list[tuple[np.ndarray, float]],
    valid: list[tuple[np.ndarray, float]],
) -> tuple[float, float]:
    """JS distance of generated, and of real training, pieces to the real held-out ones."""
    target = _pooled(valid, histogram)
    return metrics.js_distance(_pooled(made, histogram), target), metrics.js_distance(
        _pooled(train, histogram), target
    )


@dataclass(frozen=True)
class PieceForm:
    """The form and texture measures of one piece (generator.form_metrics)."""

    ending: form_metrics.Ending
    chordal_onset_share: float  # nan: no onset sounds three pitch classes
    leap_share: float  # nan: no melodic interval
    recurrence: form_metrics.Recurrence
    key_kept: float  # 1.0 or 0.0; nan when no key was asked (a model without keys)
    smallest_instrument_share: float
    most_simultaneous: int
    self_overlap_share: float  # nan: no note followed by another of its program
    outer_span: float  # nan: one part
    harmony: form_metrics.Harmony
    strong_beat_clashes: float  # nan: no strong beat sounds two pitch classes


def piece_form(
    texture: np.ndarray,
    whole: np.ndarray,
    bar: int,
    pickup: int,
    asked_key: tuple[int, bool] | None,
    programs: Iterable[int],
    tritone: bool = False,
) -> PieceForm:
    """Measure a piece's texture on `texture` and its ending on `whole` (the same notes for a generated one).

    Without an asked key the ending is heard against the piece's own estimated key, and `key_kept` is nan.
    `tritone`: a tritone over the bass on a strong beat is a clash (form_metrics.TRITONE_CLASHES).
    """
    tonic, minor = asked_key or metrics.key(metrics.pitch_class_histogram(whole))
    return PieceForm(
        ending=form_metrics.ending(whole, bar, pickup, tonic, minor),
        chordal_onset_share=form_metrics.chordal_onset_share(texture),
        leap_share=form_metrics.leap_share(texture),
        recurrence=form_metrics.recurrence(texture, bar, pickup),
        key_kept=float(form_metrics.key_kept(texture, tonic, minor)) if asked_key else float("nan"),
        smallest_instrument_share=form_metrics.smallest_instrument_share(texture, programs),
        most_simultaneous=form_metrics.most_simultaneous(texture),
        self_overlap_share=form_metrics.self_overlap_share(texture),
        outer_span=form_metrics.outer_span(texture),
        harmony=form_metrics.harmony_of(texture, bar, pickup, tonic, minor),
        strong_beat_clashes=form_metrics.strong_beat_clash_share(texture, bar, pickup, tritone),
    )


def _nanmean(values: Iterable[float]) -> float:
    """The mean of the values that are not nan; nan when none is (numpy would warn)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def form_summary(forms: list[PieceForm]) -> dict[str, float]:
    """A style's form figures over its pieces, named as StyleReport's fields: shares, means and the maximum.

    Pieces with nothing to measure (nan) are left out of each mean; with no piece at all every figure is nan
    but `most_simultaneous`, 0.
    """
    return {
        "ends_on_downbeat": _nanmean(f.ending.on_downbeat for f in forms),
        "ends_long": _nanmean(f.ending.long for f in forms),
        "ends_on_tonic": _nanmean(f.ending.on_tonic for f in forms),
        "chordal_onset_share": _nanmean(f.chordal_onset_share for f in forms),
        "leap_share": _nanmean(f.leap_share for f in forms),
        "recurring_share": _nanmean(f.recurrence.recurs for f in forms),
        "longest_recurring_bars": _nanmean(f.recurrence.longest_bars for f in forms),
        "key_kept": _nanmean(f.key_kept for f in forms),
        "smallest_instrument_share": _nanmean(f.smallest_instrument_share for f in forms),
        "most_simultaneous": max((f.most_simultaneous for f in forms), default=0),
        "self_overlap_share": _nanmean(f.self_overlap_share for f in forms),
        "outer_span": _nanmean(f.outer_span for f in forms),
        "fifth_moves": _nanmean(f.harmony.fifth_moves for f in forms),
        "diatonic_share": _nanmean(f.harmony.diatonic for f in forms),
        "chord_changes_per_bar": _nanmean(f.harmony.changes_per_bar for f in forms),
        "strong_beat_clashes": _nanmean(f.strong_beat_clashes for f in forms),
    }


FORM_FIELDS = tuple(form_summary([]))
"""The form figures' names; each has a `_real` twin in StyleReport."""


def _paired(made: dict[str, float], real: dict[str, float]) -> dict[str, float]:
    return {**made, **{f"{name}_real": value for name, value in real.items()}}


def evaluate(
    loaded: LoadedModel,
    dataset: Path,
    pieces_per_style: int,
    seconds: float,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    only: Sequence[str] = (),
    voice_leading: bool = True,
    plan: bool = True,
    critic: int = 1,
) -> list[StyleReport]:
    """Report on each style with real training and held-out pieces, or on the styles in `only`.

    The classifier always learns every style, so leaving styles out changes no figure of those kept.
    """
    train = {s: _timed(pieces) for s, pieces in real_pieces(dataset, loaded.vocab, "train").items()}
    valid_pieces = real_pieces(dataset, loaded.vocab, "valid")
    valid = {s: _timed(pieces) for s, pieces in valid_pieces.items()}
    styles = [s for s in loaded.vocab.styles if s in train and s in valid]
    unknown = sorted(set(only) - set(styles))
    if unknown:
        raise ConcertbotError(f"no real training and held-out pieces to compare with for {', '.join(unknown)}")
    labels = [s for s in styles for _ in train[s]]
    classifier = StyleClassifier().fit(np.array([features(n) for s in styles for n, _ in train[s]]), labels)
    # A style of drums alone (a user's MIDI folder) lends its pieces to a piano instead.
    ensembles = {s: [p for p in _default_programs(loaded, s) if p != DRUMS] or [0] for s in styles}

    def guesses(pieces: Sequence[np.ndarray]) -> list[str]:
        return classifier.predict(np.array([features(n) for n in pieces])) if pieces else []

    def share(found: list[str], style: str) -> float:
        return sum(g == style for g in found) / len(found) if found else 0.0

    def recognised(pieces: Sequence[np.ndarray], style: str) -> float:
        return share(guesses(pieces), style)

    composer = Composer(loaded)
    reports = []
    for style in [s for s in styles if s in only] if only else styles:
        instruments, tempo = style_defaults(loaded, style)
        bar = bar_steps(loaded.card, style)
        tritone = style in form_metrics.TRITONE_CLASHES
        made, made_forms, on_instruments, total_notes = [], [], 0, 0
        for i in range(pieces_per_style):
            request = PieceRequest(
                style,
                instruments,
                tempo,
                seconds,
                seed + i,
                temperature,
                top_p,
                voice_leading=voice_leading,
                plan=plan,
                critic=critic,
            )
            piece = composer.compose(request)
            notes = notes_array(piece.notes)
            made.append((notes, tempo))
            asked = chosen_key(loaded, style, request.seed, request.key)
            # A generated piece starts on a downbeat, and its opening is all of it.
            made_forms.append(
                piece_form(
                    notes,
                    notes,
                    piece.plan.bar if piece.plan else bar,  # a plan draws its metre from the style's
                    0,
                    key_of(asked) if asked else None,
                    request.programs(),
                    tritone,
                )
            )
            loose = composer.compose(replace(request, strict_instruments=False))
            wanted = set(request.programs())
            on_instruments += sum(n.program in wanted for n in loose.notes)
            total_notes += len(loose.notes)
        progress(style)
        real_valid, real_train = valid[style], train[style]
        real_forms = [
            piece_form(played_opening(p, seconds), p.notes, p.bar, p.pickup, p.key, _programs(p.notes), tritone)
            for p in valid_pieces[style]
        ]
        written = [
            form_metrics.recurrence(opening(p.notes, p.tempo, seconds), p.bar, p.pickup).recurs
            for p in valid_pieces[style]
        ]

        pc = _distances(metrics.pitch_class_histogram, made, real_train, real_valid)
        iv = _distances(metrics.interval_histogram, made, real_train, real_valid)
        ln = _distances(metrics.length_histogram, made, real_train, real_valid)
        kf = _distances(metrics.key_free_pitch_class_histogram, made, real_train, real_valid)
        card_loss = loaded.card.get("valid_per_style", {}).get(style, {}).get("loss")
        made_guesses = guesses([n for n, _ in made])
        made_recognised = share(made_guesses, style)
        real_recognised = recognised([n for n, _ in real_valid], style)
        wrong = Counter(g for g in made_guesses if g != style).most_common(1)
        reports.append(
            StyleReport(
                style=style,
                valid_loss=card_loss,
                real_pieces=len(real_valid),
                pitch_class_js=pc[0],
                pitch_class_js_real=pc[1],
                interval_js=iv[0],
                interval_js_real=iv[1],
                length_js=ln[0],
                length_js_real=ln[1],
                notes_per_second=float(np.mean([metrics.notes_per_second(n, t) for n, t in made])),
                notes_per_second_real=float(np.mean([metrics.notes_per_second(n, t) for n, t in real_valid])),
                degenerate_share=float(np.mean([metrics.loop_report(n).degenerate for n, _ in made])),
                on_instruments_share=on_instruments / max(1, total_notes),
                recognised=made_recognised,
                recognised_real=real_recognised,
                mistaken_for=wrong[0][0] if wrong else "-",
                recognised_real_openings=recognised([opening(n, t, seconds) for n, t in real_valid], style),
                recognised_real_reorchestrated=recognised(
                    other_ensembles([n for n, _ in real_valid], style, ensembles), style
                ),
                key_free_pitch_class_js=kf[0],
                key_free_pitch_class_js_real=kf[1],
                key_free_recognised=made_recognised,
                key_free_recognised_real=real_recognised,
                **_paired(form_summary(made_forms), form_summary(real_forms)),
                recurring_share_written_real=_nanmean(written),
            )
        )
    return reports
