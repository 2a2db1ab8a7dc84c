"""Chat steers a piece while it plays: faster, slower, louder, softer, major, minor, add or drop an instrument,
calmer, wilder, and again (the last section back).

A steer lands at a bar line, at the first note boundary the sampler reaches on or after the first bar line
past where it was when the steer arrived, so nothing already sampled (or heard) changes. There the model is
re-conditioned: a new prefix (instruments, tempo, key) over the recent window of the piece's own tokens, so the
music goes on from what has sounded; the grammar and the plan follower take the new instruments and key.
Tempo and loudness are the performance's (`SteeredPerformance`): they ramp over one bar from the step where
the steer landed. Every landing is kept as a `SteerEvent` (what, at which step); the same events given back
land at the same steps, so a steered piece regenerates, replays and renders exactly as it played live.

Pure but for `Steering`'s inbox, which two threads share: the chat's event loop asks, the sampler takes.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from config.errors import ConcertbotError
from generator.grammar import AFTER_PITCH, AT_BOUNDARY, Grammar, GrammarState
from generator.instruments import BY_PROGRAM, DRUMS, find_instrument
from generator.performance import STEPS_PER_BEAT, Performance, planned
from generator.plan import Plan, form_profile, key_of
from generator.steering import PlanFollower
from generator.vocab import KEYS, KIND_DURATION, KIND_PITCH, KIND_PROGRAM, KIND_TIMESHIFT, Vocab

if TYPE_CHECKING:
    from generator.sampling import Composer, PieceRequest, _Run

KINDS = ("faster", "slower", "louder", "softer", "major", "minor", "add", "drop", "calmer", "wilder", "again")
TEMPO_STEP = 1.15  # !faster: 15 % quicker, a change a listener notices within a bar
MIN_TEMPO, MAX_TEMPO = 30.0, 240.0  # generator.recipes' bounds on any request
LOUD_STEP = 8  # velocity added by !louder (taken by !softer): about 3 dB on a General MIDI synth
MAX_LOUD = 24
MAX_DENSITY = 2  # !wilder / !calmer levels either way
DENSITY_WEIGHT = 0.8  # logits per level per doubling of a time shift or duration
MAX_INSTRUMENTS = 6  # generator.recipes.MAX_INSTRUMENTS (recipes imports sampling, which imports this)
DEFAULT_BAR = 4 * STEPS_PER_BEAT
# Parallel modes: a copied passage (a return, !again) from before a !minor is played in the new mode.
_TO_MINOR = {4: 3, 9: 8}
_TO_MAJOR = {3: 4, 8: 9, 10: 11}


class SteerError(ConcertbotError):
    """A steer the piece cannot follow; the message is the viewer's short reply."""


@dataclass(frozen=True)
class SteerEvent:
    """A steer as it landed: what (`kind`, and an instrument name for add/drop) and at which step."""

    kind: str
    arg: str = ""
    step: int = 0  # 1/8 beats from the piece's start: the note boundary where it took effect
    bar: int = 0  # the bar that step is in
    asked_at: float = 0.0  # seconds of the piece heard when the vote closed; not musical, for latency
    # How many music tokens the sampler had written when it first saw the steer: from there on no time shift
    # passes the bar line it lands on, so the same index gives the same notes on the way there.
    seen: int = 0

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SteerEvent:
        kind, arg, bar = str(data["kind"]), str(data.get("arg", "")), int(data.get("bar", 0))
        asked_at, seen = float(data.get("asked_at", 0.0)), int(data.get("seen", 0))
        return SteerEvent(kind, arg, int(data["step"]), bar, asked_at, seen)

    def said(self) -> str:
        """ "!add harp", as chat typed it."""
        return f"!{self.kind} {self.arg}".strip()


@dataclass(frozen=True)
class SteerState:
    """What a piece sounds like after the steers so far; `after` says what one more would make of it."""

    instruments: tuple[str, ...]
    tempo: float  # beats per minute asked for at the start
    share: float = 1.0  # of that tempo
    key: str | None = None
    loudness: int = 0  # velocity added
    density: int = 0
    sounds: tuple[tuple[str, str], ...] = ()  # (part, heard as): PieceRequest.sounds

    @staticmethod
    def of(
        instruments: Sequence[str], tempo: float, key: str | None, sounds: Sequence[tuple[str, str]] = ()
    ) -> SteerState:
        return SteerState(tuple(instruments), float(tempo), 1.0, key, sounds=tuple(sounds))

    def after(self, kind: str, arg: str = "") -> SteerState:
        """The state once `kind` has landed; SteerError (the reply) when the piece cannot follow it."""
        replace = dataclasses.replace
        if kind in ("faster", "slower"):
            share = self.share * (TEMPO_STEP if kind == "faster" else 1 / TEMPO_STEP)
            if not MIN_TEMPO <= self.tempo * share <= MAX_TEMPO:
                bound = MAX_TEMPO if kind == "faster" else MIN_TEMPO
                speed = "fast" if kind == "faster" else "slow"
                now = self.tempo * self.share
                most = "at most" if kind == "faster" else "at least"
                raise SteerError(f"it is already as {speed} as it goes ({now:.0f} BPM; {most} {bound:.0f})")
            return replace(self, share=share)
        if kind in ("louder", "softer"):
            loudness = self.loudness + (LOUD_STEP if kind == "louder" else -LOUD_STEP)
            if abs(loudness) > MAX_LOUD:
                raise SteerError(f"it is already as {'loud' if kind == 'louder' else 'soft'} as it goes")
            return replace(self, loudness=loudness)
        if kind in ("calmer", "wilder"):
            density = self.density + (1 if kind == "wilder" else -1)
            if abs(density) > MAX_DENSITY:
                raise SteerError(f"it is already as {'wild' if kind == 'wilder' else 'calm'} as it goes")
            return replace(self, density=density)
        if kind in ("major", "minor"):
            if self.key is None:
                raise SteerError("this model plays without keys, so it cannot change mode")
            tonic, minor = key_of(self.key)
            if minor == (kind == "minor"):
                raise SteerError(f"it is already in {_key_said(self.key)}")
            return replace(self, key=KEYS[tonic + 12 * (kind == "minor")])
        if kind in ("add", "drop"):
            if not arg:
                raise SteerError(f"say which instrument, e.g. !{kind} harp (see !instruments)")
            name = find_instrument(arg).name  # UnknownNameError names the closest ones
            if kind == "add":
                stands_for = dict(self.sounds).get(name)
                if stands_for is not None:  # its program is a doubled part's: a second violin's, say
                    raise SteerError(f"the {name}'s part plays a {stands_for} here; ask for it in !compose")
                if name in self.instruments:
                    raise SteerError(f"the {name} is already playing")
                if name == "drums":
                    raise SteerError("drums cannot join a piece that is playing; ask for them in !compose")
                if len(self.instruments) >= MAX_INSTRUMENTS:
                    raise SteerError(f"{MAX_INSTRUMENTS} instruments play already; !drop one first")
                return replace(self, instruments=(*self.instruments, name))
            heard = dict(self.sounds)
            # A part heard as the instrument named goes too: "!drop violin" can take a quartet's second violin.
            doubles = (p for p in self.instruments if heard.get(p) == name)
            part = name if name in self.instruments else next(doubles, None)
            if part is None:
                playing = ", ".join(heard.get(i, i) for i in self.instruments)
                raise SteerError(f"the {name} is not playing (now: {playing})")
            if len(self.instruments) == 1:
                raise SteerError(f"the {name} is the last instrument playing; !add another first")
            kept = tuple(i for i in self.instruments if i != part)
            return replace(self, instruments=kept, sounds=tuple((p, h) for p, h in self.sounds if p in kept))
        if kind == "again":
            return self
        raise SteerError(f"!{kind} is not a steer; try !faster, !slower, !louder, !softer, !major, !minor")

    def programs(self) -> list[int]:
        return sorted({find_instrument(name).program for name in self.instruments})


def replayed(state: SteerState, events: Sequence[SteerEvent]) -> SteerState:
    """The state after `events`, each of which landed once, so each still applies."""
    for event in events:
        state = state.after(event.kind, event.arg)
    return state


# --- the performance: tempo and loudness ramp over a bar ---------------------------------------------------


@dataclass(frozen=True, eq=False)
class SteeredPerformance(Performance):
    """A performance (generator.performance) with the steers' tempo and loudness on top, each ramping over
    one bar from the step where it landed.

    `steers` may be a list that grows while the piece is sampled: a steer landing at step s changes nothing
    before s, so what was already played keeps its times and velocities.
    """

    steers: Sequence[SteerEvent] = field(default_factory=list)

    def velocity(self, step: int, voice: int = 0) -> int:
        return super().velocity(step, voice + round(self._loudness(step)))

    def _loudness(self, step: int) -> float:
        level = 0.0
        for event in self.steers:
            if event.kind in ("louder", "softer") and event.step <= step:
                ramp = min(1.0, (step - event.step) / self.bar)
                level += ramp * (LOUD_STEP if event.kind == "louder" else -LOUD_STEP)
        return level

    def _tempo_marks(self) -> list[tuple[int, float]]:
        """(step, share of the tempo) from each beat of the steers' ramps on, in order of step."""
        marks: list[tuple[int, float]] = []
        share = 1.0
        for event in sorted(self.steers, key=lambda e: e.step):  # stable: two at one step in landing order
            if event.kind not in ("faster", "slower"):
                continue
            new = share * (TEMPO_STEP if event.kind == "faster" else 1 / TEMPO_STEP)
            beats = max(1, self.bar // STEPS_PER_BEAT)
            for k in range(beats):
                marks.append((event.step + k * STEPS_PER_BEAT, share + (new - share) * (k + 1) / beats))
            share = new
        # A later steer's ramp overrides what is left of an earlier one's.
        out: dict[int, float] = {}
        for step, value in marks:
            out = {s: v for s, v in out.items() if s < step}
            out[step] = value
        return sorted(out.items())

    def _beat_factors(self) -> list[tuple[int, float]]:
        ritardando = super()._beat_factors()
        marks = self._tempo_marks()
        if not marks:
            return ritardando
        steps = sorted({s for s, _ in ritardando} | {s for s, _ in marks})
        return [(s, _share_at(marks, s) * _share_at(ritardando, s)) for s in steps]


def _share_at(marks: list[tuple[int, float]], step: int) -> float:
    share = 1.0
    for at, value in marks:
        if at > step:
            break
        share = value
    return share


def steered_performance(
    plan: Plan | None, tempo: float, programs: Sequence[int], steers: Sequence[SteerEvent]
) -> Performance:
    """How a steered piece plays: its plan's performance with its steers' tempo and loudness (a list that
    grows live is followed as it grows). Voices keep the roles the piece began with, as they had live."""
    base = planned(plan, tempo, programs)
    return SteeredPerformance(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, steers=steers
    )


# --- the sampler's side ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A steer asked for and not yet landed."""

    kind: str
    arg: str
    asked_at: float
    seen: int = -1  # music tokens written when the sampler first saw it
    line: int = 0  # the bar line (step) it lands on


class Steering:
    """The steers of one piece: live ones waiting to land, or recorded ones to land again where they did.

    Args:
        events: recorded events (a replay, a regeneration); they land at their own steps.
    """

    def __init__(self, events: Sequence[SteerEvent] = ()) -> None:
        self._lock = threading.Lock()
        self._waiting: list[_Pending] = []  # asked, not yet seen by the sampler; guarded by the lock
        self.given = tuple(events)
        self._recorded = sorted(events, key=lambda e: e.seen)
        self.pending: list[_Pending] = []  # seen, on their way to their bar line: the sampler's thread only
        self.landed: list[SteerEvent] = []  # grows as steers land; the performance follows this list
        self._step = -1  # the step of the latest boundary seen
        self.bar_wise = False  # the critic writes whole bars: steers are seen and land only where bars start
        self._bias: dict[tuple[int, int], torch.Tensor] = {}
        self.request: PieceRequest | None = None  # the piece as steered so far; None: as it was asked
        self._made: list[int] | None = None  # the copy this made (a return already fitted, !again)

    def ask(self, kind: str, arg: str = "", asked_at: float = 0.0) -> None:
        """From any thread: land this steer at the next bar line the sampler reaches."""
        with self._lock:
            self._waiting.append(_Pending(kind, arg, asked_at))

    def coming(self) -> list[str]:
        """From any thread: the steers asked for that have not landed yet ("!add harp"), in order."""
        with self._lock:
            waiting = list(self._waiting)
        return [f"!{p.kind} {p.arg}".strip() for p in [*list(self.pending), *waiting]]

    def _due(self, time: int, bar: int, index: int) -> list[SteerEvent]:
        """At a note boundary, `index` music tokens in: see what was asked; land what is due at `time`."""
        first = time != self._step  # the step's first boundary: no note struck at `time` yet
        self._step = time
        with self._lock:
            arrived, self._waiting = self._waiting, []
        while self._recorded and self._recorded[0].seen <= index:
            event = self._recorded.pop(0)
            arrived.append(_Pending(event.kind, event.arg, event.asked_at))
        for pending in arrived:
            pending.seen = index
            # The bar line it lands on: this one if nothing has been struck on it yet, else the next.
            pending.line = time if first and time % bar == 0 else (time // bar + 1) * bar
            self.pending.append(pending)
        if not first:
            return []
        due = [p for p in self.pending if time >= p.line]
        self.pending = [p for p in self.pending if time < p.line]
        return [SteerEvent(p.kind, p.arg, time, time // bar, p.asked_at, p.seen) for p in due]

    def turn(
        self, composer: Composer, run: _Run, request: PieceRequest, time: int, bar_start: bool = False
    ) -> None:
        """At a note boundary of `run` (generator.sampling): land what is due at `time`, re-conditioning the
        model on the piece as it is now; a returning section that begins plays as the piece is now.

        `bar_start`: the critic's call where a bar begins, before it forks; from then on only those land steers.
        """
        plan = run.plan
        bar = plan.bar if plan is not None else DEFAULT_BAR
        self.bar_wise = self.bar_wise or bar_start
        events = self._due(time, bar, len(run.music)) if bar_start or not self.bar_wise else []
        now = self.request or request
        if not events:
            if run.replay and run.replay is not self._made and self.landed:  # a return the sampler began
                run.replay = self._made = self.kept(composer.vocab, run.replay, now, plan, time)
            return
        from generator.sampling import chosen_key  # sampling imports this module

        key = chosen_key(composer.loaded, now.style, now.seed, now.key)
        state = SteerState.of(now.instruments, now.tempo, key, now.sounds)
        again = False
        for event in events:
            try:
                state = state.after(event.kind, event.arg)
            except ConcertbotError:
                continue  # checked when asked; a second vote for a bound already reached changes nothing
            self.landed.append(event)
            again = again or event.kind == "again"
        # The key named from now on (the seed's choice too): the prefix and the plan follower say it.
        now = dataclasses.replace(
            now,
            instruments=state.instruments,
            tempo=state.tempo * state.share,
            key=state.key,
            sounds=state.sounds,
        )
        self.request = now
        programs = now.programs()
        run.grammar = Grammar(composer.vocab, programs)
        if run.follow is not None and plan is not None:
            profile = form_profile(composer.loaded.card, now.style)
            run.follow = refollow(run.follow, PlanFollower(plan, profile, now.key, programs, composer.tensors))
        if again and plan is not None:
            run.replay = self._again(composer.vocab, plan, time, run.music, run.section_at, programs, now.key)
        elif run.replay and run.replay is not self._made and time in run.section_at:
            run.replay = self.kept(composer.vocab, run.replay, now, plan, time)  # a return begins here
        else:
            run.replay = []  # a copy under way stops: the model goes on from it, as the piece now is
        self._made = run.replay
        # Re-conditioned: the new prefix over the recent half-context of the piece's own tokens.
        run.prefix = composer.prefix(now)
        keep = (composer.loaded.context - len(run.prefix)) // 2
        run.window = run.prefix + tail(composer.vocab, run.music, keep)
        run.logits, run.cache = composer._forward(run.window, None)

    def kept(
        self, vocab: Vocab, tokens: list[int], now: PieceRequest, plan: Plan | None, time: int
    ) -> list[int]:
        """A returning section's tokens as the piece is now: only the instruments still playing, in the mode
        it is now in."""
        source = _source_step(plan, time)
        return copied(vocab, tokens, now.programs(), self._mode_at(source, now.key), now.key)

    def _mode_at(self, step: int, key: str | None) -> str | None:
        """The key the piece was in at `step`, given the key it is in now."""
        if key is None:
            return None
        tonic, minor = key_of(key)
        for event in reversed(self.landed):
            if event.step <= step:
                break
            if event.kind in ("major", "minor"):
                minor = event.kind == "major"  # before a !major landed it was minor, and the other way
        return KEYS[tonic + 12 * minor]

    def _again(
        self,
        vocab: Vocab,
        plan: Plan,
        time: int,
        music: list[int],
        section_at: dict[int, int],
        programs: Sequence[int],
        key: str | None,
    ) -> list[int]:
        """The last section again: the one before the section playing (in the first, what it played so far),
        cut to whole bars that end a bar before the final cadence."""
        sections = {s.start * plan.bar for s in plan.sections}  # not the phrases echoed (Plan.replays)
        starts = sorted(s for s in section_at if s < time and s in sections)
        if not starts:
            return []
        current = starts[-1]
        earlier = [s for s in starts if s < current]
        begin, until = (earlier[-1], current) if earlier else (current, time)
        steps = (until - begin) // plan.bar * plan.bar
        room = (plan.cadence_times()[-1] - time) // plan.bar * plan.bar - plan.bar
        steps = min(steps, room)
        if steps <= 0:
            return []
        tokens = cut(vocab, music[section_at[begin] :], steps)
        return copied(vocab, tokens, programs, self._mode_at(begin, key), key)

    def bias(self, logits: torch.Tensor, state: GrammarState, vocab: Vocab, time: int) -> torch.Tensor:
        """!calmer / !wilder: longer or shorter time shifts and notes, fewer or more notes struck together;
        and while a steer is on its way, no time shift past its bar line, so it lands right on it."""
        if self.pending and not self.bar_wise and state.phase == AT_BOUNDARY:
            line = min(p.line for p in self.pending)
            # A one-step shift always remains, so some token always does: every other limit is a ceiling.
            past = torch.from_numpy((vocab.kind == KIND_TIMESHIFT) & (time + vocab.value > line))
            logits = logits.masked_fill(past.to(logits.device), float("-inf"))
        level = sum(1 if e.kind == "wilder" else -1 for e in self.landed if e.kind in ("calmer", "wilder"))
        if level == 0 or state.phase not in (AT_BOUNDARY, AFTER_PITCH):
            return logits
        cache = (level, state.phase)
        if cache not in self._bias:
            self._bias[cache] = density_bias(vocab, level, state.phase)
        return logits + self._bias[cache].to(logits.device, logits.dtype)


def density_bias(vocab: Vocab, level: int, phase: int) -> torch.Tensor:
    """Logits added for a density `level`: per doubling of a time shift (at a boundary) or of a duration
    (after a pitch), DENSITY_WEIGHT * level against it; at a boundary a new note of a chord gains too."""
    values = np.maximum(vocab.value.astype(np.float64), 1.0)
    kind = vocab.kind
    wanted = KIND_TIMESHIFT if phase == AT_BOUNDARY else KIND_DURATION
    bias = np.where(kind == wanted, -DENSITY_WEIGHT * level * np.log2(values / (STEPS_PER_BEAT / 2)), 0.0)
    if phase == AT_BOUNDARY:
        bias = bias + np.where(kind == KIND_PROGRAM, 0.5 * DENSITY_WEIGHT * level, 0.0)
    return torch.tensor(bias, dtype=torch.float32)


def refollow(old: PlanFollower, new: PlanFollower) -> PlanFollower:
    """`new` (the new key or instruments) knowing what `old` followed: the notes so far still sound."""
    new.ends = dict(old.ends)
    new.counts = {p: old.counts.get(p, 0) for p in new.programs}
    new.struck_at, new.struck = old.struck_at, set(old.struck)
    new.sounding = list(old.sounding)
    new.melody = dict(old.melody)
    # The tallies of what the piece has sounded so far (strong-beat clashes, chordal onsets, melodic intervals)
    # go on too: started again, the clash and chord targets and the interval pull would steer the rest of the
    # piece as though it had just begun.
    new.strong, new.heard = old.strong, old.heard
    if new.tonic == old.tonic:  # a mode steer keeps the tonic: the piece's degrees so far still count
        new.degrees = old.degrees
    if len(new.moves) == len(old.moves):
        new.moves = old.moves
    new.came_from = {p: pitch for p, pitch in old.came_from.items() if p in new.programs}
    new.height = {p: h for p, h in old.height.items() if p in new.median}
    if len(new.lengths) == len(old.lengths):
        new.lengths = old.lengths
    return new


def cut(vocab: Vocab, tokens: Sequence[int], steps: int) -> list[int]:
    """The first `steps` of a passage, ending on the time shift reaching it; notes held past it cut short."""
    durations = sorted((int(vocab.value[t]), int(t)) for t in np.flatnonzero(vocab.kind == KIND_DURATION))
    out: list[int] = []
    moved = 0
    for token in tokens:
        kind = vocab.kind[token]
        if kind == KIND_TIMESHIFT:
            if moved + int(vocab.value[token]) > steps:
                break
            moved += int(vocab.value[token])
            out.append(int(token))
            if moved == steps:
                break
            continue
        if kind == KIND_DURATION and int(vocab.value[token]) > steps - moved:
            token = max((d for d in durations if d[0] <= steps - moved), default=durations[0])[1]
        elif kind not in (KIND_PROGRAM, KIND_PITCH, KIND_DURATION):
            break  # EOS: the passage ends there
        out.append(int(token))
    while out and vocab.kind[out[-1]] not in (KIND_TIMESHIFT, KIND_DURATION):
        out.pop()  # never stop between a note's tokens
    if moved < steps and out:  # the passage ran out early: wait out its length as the bars it stands for
        out += _shifts(vocab, steps - moved)
    return out


def _shifts(vocab: Vocab, steps: int) -> list[int]:
    found = np.flatnonzero(vocab.kind == KIND_TIMESHIFT)
    shifts = sorted(((int(vocab.value[t]), int(t)) for t in found), reverse=True)
    out = []
    for value, token in shifts:
        while value > 0 and steps >= value:
            out.append(token)
            steps -= value
    return out


def copied(
    vocab: Vocab, tokens: Sequence[int], programs: Sequence[int], was: str | None, now: str | None
) -> list[int]:
    """A passage's tokens for the instruments in `programs` only, moved from mode `was` into `now`'s."""
    keep = set(programs)
    shift: dict[int, int] = {}
    if was is not None and now is not None and was != now:
        tonic, minor = key_of(now)
        shift = {(tonic + a) % 12: b - a for a, b in (_TO_MINOR if minor else _TO_MAJOR).items()}
    out: list[int] = []
    skipping = False
    program = DRUMS
    for token in tokens:
        kind = vocab.kind[token]
        if kind == KIND_PROGRAM:
            program = int(vocab.value[token])
            skipping = program not in keep
        elif kind == KIND_TIMESHIFT:
            skipping = False
        if skipping:
            continue
        if kind == KIND_PITCH and program != DRUMS and shift:
            pitch = int(vocab.value[token])
            moved = pitch + shift.get(pitch % 12, 0)
            inst = BY_PROGRAM.get(program)
            if inst is not None and inst.low <= moved <= inst.high and f"Pitch_{moved}" in vocab.index:
                token = vocab.index[f"Pitch_{moved}"]
        out.append(int(token))
    return out


def tail(vocab: Vocab, music: list[int], keep: int) -> list[int]:
    """The last `keep` music tokens or fewer, from a note boundary (generator.sampling's window does so)."""
    start = max(0, len(music) - keep)
    while start < len(music) and vocab.kind[music[start]] not in (KIND_PROGRAM, KIND_TIMESHIFT):
        start += 1
    return music[start:]


def _source_step(plan: Plan | None, time: int) -> int:
    """Where the section returning at `time` was first played."""
    if plan is None:
        return time
    for section in plan.sections:
        if section.start * plan.bar == time and section.returns is not None:
            return plan.sections[section.returns].start * plan.bar
    return time


def _key_said(key: str) -> str:
    tonic, minor = key_of(key)
    return f"{KEYS[tonic]} {'minor' if minor else 'major'}"


def landing_latency(performance: Performance, event: SteerEvent) -> float:
    """Seconds from the vote closing (`asked_at`, as heard) to the step where the steer landed."""
    return performance.seconds(event.step) - event.asked_at


def bar_seconds(plan: Plan | None, tempo: float) -> float:
    bar = plan.bar if plan is not None else DEFAULT_BAR
    return bar / STEPS_PER_BEAT * 60.0 / tempo


__all__ = [
    "KINDS",
    "SteerError",
    "SteerEvent",
    "SteerState",
    "SteeredPerformance",
    "Steering",
    "copied",
    "cut",
    "landing_latency",
    "replayed",
    "steered_performance",
]
