"""Piano rolls to look at: a generated piece beside a real one of its style, pitch against bars.

    python bench/pianoroll.py bach --seeds 0,1,2 --real bach/bwv66.6 --seconds 30 --out /tmp/rolls

One PNG per generated piece (`<style>-<seed>.png`) and per real piece (`<style>-real-<n>.png`): one colour per
instrument, bar lines, the plan's sections (letters over the top) and cadences (a dashed line on the downbeat
of each phrase's last bar). A generated piece is composed as `concertbot compose` composes it (the settings'
critic); a real one is read from music21's corpus, its first `--seconds` at the style's tempo.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from config import load_settings
from generator.instruments import find_instrument
from generator.model import load_model
from generator.plan import STEPS_PER_BEAT, Plan
from generator.recipes import make_request
from generator.rhythm import learn_rhythm
from generator.sampling import Composer
from generator.styles import CORPUS_BY_NAME


@dataclass(frozen=True)
class Roll:
    """What is drawn: notes as (start beat, pitch, beats, voice name), the bar in beats, a plan if any."""

    title: str
    notes: list[tuple[float, int, float, str]]
    bar_beats: float
    plan: Plan | None = None


def generated(composer: Composer, style: str, seed: int, seconds: float) -> Roll:
    settings = load_settings().sampling
    request = make_request(composer.loaded, style, None, None, seconds, seed, critic=settings.critic)
    piece = composer.compose(request)
    names = {find_instrument(name).program: name for name in request.instruments}
    notes = [
        (n.start / STEPS_PER_BEAT, n.pitch, n.duration / STEPS_PER_BEAT, names.get(n.program, str(n.program)))
        for n in piece.notes
    ]
    plan = piece.plan
    bar = plan.bar / STEPS_PER_BEAT if plan is not None else 4.0
    title = f"{style} seed {seed} ({', '.join(request.instruments)}; {request.tempo:g} bpm)"
    if plan is not None:
        title += f"\nform {plan.form}; {' | '.join(plan.progression())}"
    return Roll(title, notes, bar, plan)


def real(style: str, source: str, seconds: float) -> Roll:
    """The first `seconds` of a corpus piece at the style's tempo, a beat the metre's (as data/ reads)."""
    from music21 import corpus, meter

    path, _, number = source.partition("#")  # "oneills1850/0001-0050.abc#3": the third tune of a book
    score: Any = corpus.parse(path, number=int(number)) if number else corpus.parse(path)
    tempo = CORPUS_BY_NAME[style].tempo
    signature = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    beat = float(signature.beatDuration.quarterLength) if signature is not None else 1.0
    bar = float(signature.barDuration.quarterLength) / beat if signature is not None else 4.0
    limit = seconds * tempo / 60.0
    notes = []
    for index, part in enumerate(score.parts or [score]):
        name = part.partName or f"part {index + 1}"
        for element in part.flatten().notes:
            start = float(element.offset) / beat
            if start >= limit:
                break
            for pitch in element.pitches:
                notes.append((start, int(pitch.midi), float(element.quarterLength) / beat, name))
    return Roll(f"real {style}: {source} (first {seconds:g} s at {tempo} bpm)", notes, bar)


def measures(roll: Roll) -> dict[str, float]:
    """What a listener hears in a roll: rests inside parts, the top part on top, parts crossing, rhythm."""
    ranked = _ranked(roll)
    rank = {voice: i for i, voice in enumerate(ranked)}  # 0: the highest part
    steps = [
        (round(s * STEPS_PER_BEAT), p, max(1, round(d * STEPS_PER_BEAT)), rank[v]) for s, p, d, v in roll.notes
    ]
    array = np.array(steps, dtype=np.int64).reshape(-1, 4)
    out = {"notes": float(len(array)), "rests": float(learn_rhythm([array]).get("rests", float("nan")))}
    onsets = np.unique(array[:, 0])
    on_top = crossed = judged = 0
    for onset in onsets:
        sounding = array[(array[:, 0] <= onset) & (array[:, 0] + array[:, 2] > onset)]
        tops = {int(v): int(sounding[sounding[:, 3] == v, 1].max()) for v in np.unique(sounding[:, 3])}
        if len(tops) < 2:
            continue
        judged += 1
        on_top += min(tops) == 0 and tops[0] == max(tops.values())
        order = [tops[v] for v in sorted(tops)]
        crossed += any(a < b for a, b in pairwise(order))
    out["top on top"] = on_top / judged if judged else float("nan")
    out["crossing"] = crossed / judged if judged else float("nan")
    durations = Counter(int(d) for d in array[:, 2])
    out["commonest length"] = durations.most_common(1)[0][1] / len(array)
    ends = [
        int((array[array[:, 3] == v, 0] + array[array[:, 3] == v, 2]).max()) for v in np.unique(array[:, 3])
    ]
    out["end spread (beats)"] = (max(ends) - min(ends)) / STEPS_PER_BEAT
    return out


def _ranked(roll: Roll) -> list[str]:
    """The roll's voices by their mean pitch, the highest first."""
    heights: dict[str, list[int]] = {}
    for _, pitch, _, voice in roll.notes:
        heights.setdefault(voice, []).append(pitch)
    return sorted(heights, key=lambda v: -sum(heights[v]) / len(heights[v]))


def draw(roll: Roll, path: Path) -> None:
    end = max(s + d for s, _, d, _ in roll.notes)
    fig, ax = plt.subplots(figsize=(max(8.0, end / 3.0), 4.5), dpi=72)
    voices = _ranked(roll)  # colours by register, the top voice first, so that rolls read alike
    colours = plt.get_cmap("tab10")
    for i, voice in enumerate(voices):
        mine = [(s, p, d) for s, p, d, v in roll.notes if v == voice]
        for s, p, d in mine:
            box = (s / roll.bar_beats, p - 0.4)
            ax.add_patch(Rectangle(box, d / roll.bar_beats, 0.8, color=colours(i % 10), alpha=0.8, linewidth=0))
        ax.plot([], [], color=colours(i % 10), linewidth=6, label=f"{voice} ({len(mine)})")
    bars = int(end / roll.bar_beats) + 1
    for b in range(bars + 1):
        ax.axvline(b, color="#bbbbbb", linewidth=0.6, zorder=0)
    pitches = [p for _, p, _, _ in roll.notes]
    low, high = min(pitches) - 2, max(pitches) + 3
    if roll.plan is not None:
        for section in roll.plan.sections:
            ax.text(section.start + 0.05, high - 0.5, section.label, fontsize=12, weight="bold", va="top")
            ax.axvline(section.start, color="black", linewidth=1.4, zorder=0)
        for phrase in roll.plan.phrases:
            ax.axvline(phrase.start + phrase.bars - 1, color="red", linestyle="--", linewidth=1.0, zorder=0)
    for c in range(12 * (low // 12 + 1), high, 12):
        ax.axhline(c, color="#dddddd", linewidth=0.5, zorder=0)
    ax.set_xlim(0, end / roll.bar_beats)
    ax.set_ylim(low, high)
    ax.set_xlabel("bars")
    ax.set_ylabel("MIDI pitch (C lines)")
    ax.set_title(roll.title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7, ncol=len(voices))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("style")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--real", action="append", default=[], help="music21 corpus path[#tune]; repeatable")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/rolls"))
    parser.add_argument("--no-draw", action="store_true", help="print the measures only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def show(name: str, roll: Roll) -> None:
        if not args.no_draw:
            draw(roll, args.out / f"{name}.png")
        print(name, "  ".join(f"{k} {v:.3g}" for k, v in measures(roll).items()), flush=True)

    for n, source in enumerate(args.real):
        show(f"{args.style}-real-{n}", real(args.style, source, args.seconds))
    if args.seeds:
        composer = Composer(load_model(args.model))
        for seed in (int(s) for s in args.seeds.split(",")):
            show(f"{args.style}-{seed}", generated(composer, args.style, seed, args.seconds))


if __name__ == "__main__":
    main()
