"""Seeded, grammar-constrained sampling of a piece, token by token, with a sliding window.

The same model, request and seed give the same tokens on the same kind of device: the only randomness is
one `torch.Generator` seeded from the request, and every other choice is a pure function of the tokens so far.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from config.errors import ConcertbotError
from generator import critic
from generator.decode import STEPS_PER_BEAT, Note, NoteDecoder, decode
from generator.density import DensityLimits
from generator.fastgpt import FastGPT2
from generator.grammar import AFTER_PITCH, AFTER_PROGRAM, AT_BOUNDARY, Grammar, GrammarState
from generator.instruments import DRUMS, PROGRAMS, find_instrument
from generator.memo import Memo
from generator.model import LoadedModel
from generator.plan import Plan, bar_steps, draw_plan, form_profile, key_of
from generator.rhythm import RhythmFollower
from generator.steer import Steering
from generator.steering import PlanFollower, VocabTensors
from generator.vocab import KIND_DURATION, KIND_PITCH, KIND_PROGRAM, KIND_TIMESHIFT, Vocab
from generator.voice_leading import VoiceLeading

BAR_STEPS = 4 * STEPS_PER_BEAT
BAR_REPEAT_LIMIT = 3  # identical bars in a row before the guard steers away (metrics calls 8 degenerate)
PITCH_RUN_LIMIT = 6  # same pitch in one voice before that pitch is banned for a note (16 is degenerate)
MAX_NOTES_PER_ONSET = 12  # more than this at one instant is a runaway chord: force time to move on
LOOP_PENALTY = 4.0  # logits taken off the pitches of a repeating bar
MAX_REST = 8 * STEPS_PER_BEAT  # longest silence before a note is forced: a concert never goes quiet
MAX_PLANS = 256  # plans a composer keeps, for the pieces now starting
_T = TypeVar("_T")


@dataclass(frozen=True)
class PieceRequest:
    """Everything that decides a piece's notes, so that it can be made again exactly."""

    style: str
    instruments: tuple[str, ...]
    tempo: float
    seconds: float
    seed: int
    temperature: float = 1.0
    top_p: float = 0.95
    # False lets the model play any instrument; the prefix then only asks. Used to measure how well it listens.
    strict_instruments: bool = True
    # A key name (generator.vocab.KEYS); None: the seed picks one of the style's keys, as often as its
    # training pieces use it. Models trained before keys existed ignore it.
    key: str | None = None
    # Keep each voice to the leaps and register the style's real voices keep (generator.voice_leading). False
    # is for measuring what the rule does; a model whose card has none plays without it either way.
    voice_leading: bool = True
    # Follow a plan drawn by the seed from the style's real pieces (generator.plan): phrases, returning
    # sections, cadences and a final chord. False is for measuring what the plan does.
    plan: bool = True
    # Candidates written per bar, the critic (generator.critic) keeping the best; 1 samples each bar once,
    # exactly as pieces were sampled before the critic.
    critic: int = 1
    # (part, heard as) for the parts that sound as another instrument than their own: a quartet's second
    # violin is a part of its own to the model, so it has a spare program (generator.instruments.stand_in,
    # the clarinet's, as the data set gave it), and it is heard as a violin. The notes are the part's.
    sounds: tuple[tuple[str, str], ...] = ()

    def programs(self) -> list[int]:
        return sorted({find_instrument(name).program for name in self.instruments})

    def sound_programs(self) -> dict[int, int]:
        """{a part's program: the program it is heard as}, for the parts in `sounds`."""
        return {find_instrument(part).program: find_instrument(heard).program for part, heard in self.sounds}

    def heard(self) -> tuple[str, ...]:
        """The instruments as a listener hears them, a name a part, a doubled one named twice side by side."""
        as_heard = dict(self.sounds)
        names = [as_heard.get(name, name) for name in self.instruments]
        first = {name: names.index(name) for name in names}
        return tuple(sorted(names, key=lambda name: first[name]))

    # The one serialised form of a recipe (a worker's job, a stored piece): plain JSON values, every field.
    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "instruments": list(self.instruments), "sounds": dict(self.sounds)}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> PieceRequest:
        """The inverse of `to_dict`; a missing field takes its default (a recipe written before it existed).

        Raises:
            KeyError: no style, instruments, tempo, seconds or seed; TypeError: a name that is not a field,
                or `sounds` that is not an object of names.
        """
        sounds = fields.get("sounds", {})
        if not isinstance(sounds, Mapping):
            raise TypeError(f"sounds must map a part to an instrument, not {sounds!r}")
        instruments = tuple(fields["instruments"])
        return cls(**{**fields, "instruments": instruments, "sounds": tuple(sorted(sounds.items()))})


@dataclass
class Composition:
    request: PieceRequest
    prefix: list[int]
    tokens: list[int]  # music tokens, ending with EOS
    notes: list[Note] = field(default_factory=list)
    steered: int = 0  # how many times the loop guard stepped in
    plan: Plan | None = None


class LoopGuard:
    """Watches decoded notes for the classic small-model failures and says what to discourage next."""

    def __init__(self) -> None:
        self.bar_index = 0
        self.bar_notes: list[tuple[int, int, int, int]] = []
        self.last_signature: tuple[tuple[int, int, int, int], ...] | None = None
        self.repeats = 0
        self.penalized: frozenset[int] = frozenset()
        self.runs: dict[int, tuple[int, int]] = {}  # program -> (pitch, run length)
        self.onset_time = 0
        self.onset_notes = 0
        self.steered = 0

    def on_time(self, time: int) -> None:
        """Close every bar that `time` has moved past."""
        while time >= (self.bar_index + 1) * BAR_STEPS:
            signature = tuple(sorted(self.bar_notes))
            if signature and signature == self.last_signature:
                self.repeats += 1
            else:
                self.repeats = 1 if signature else 0
            self.last_signature = signature
            if self.repeats >= BAR_REPEAT_LIMIT:
                self.penalized = frozenset(n[1] for n in signature)
                self.steered += 1
            else:
                self.penalized = frozenset()
            self.bar_notes = []
            self.bar_index += 1

    def on_note(self, note: Note) -> None:
        self.on_time(note.start)
        self.bar_notes.append((note.start % BAR_STEPS, note.pitch, note.duration, note.program))
        pitch, run = self.runs.get(note.program, (-1, 0))
        self.runs[note.program] = (note.pitch, run + 1 if pitch == note.pitch else 1)
        if note.start != self.onset_time:
            self.onset_time, self.onset_notes = note.start, 0
        self.onset_notes += 1

    def banned_pitch(self, program: int) -> int | None:
        pitch, run = self.runs.get(program, (-1, 0))
        if program != DRUMS and run >= PITCH_RUN_LIMIT:
            self.steered += 1
            return pitch
        return None


class Composer:
    """Samples pieces from a loaded model on the CPU or one GPU."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu") -> None:
        self.loaded = loaded
        self.vocab = loaded.vocab
        self.device = device
        self.fast = FastGPT2(loaded.shape, {name: w.to(device) for name, w in loaded.weights.items()})
        self.pitch_of = torch.from_numpy(np.where(self.vocab.kind == KIND_PITCH, self.vocab.value, -1))
        self.is_pitch = self.pitch_of >= 0
        self.is_timeshift = torch.from_numpy(self.vocab.kind == KIND_TIMESHIFT)
        self.shift_of = torch.from_numpy(np.where(self.vocab.kind == KIND_TIMESHIFT, self.vocab.value, 0))
        kind, value = self.vocab.kind, self.vocab.value
        self.tensors = VocabTensors(
            pitch_of=self.pitch_of,
            is_pitch=self.is_pitch,
            is_timeshift=self.is_timeshift,
            shift_of=self.shift_of,
            program_of=torch.from_numpy(np.where(kind == KIND_PROGRAM, value, -2)),
            duration_of=torch.from_numpy(np.where(kind == KIND_DURATION, value, 0)),
        )
        self.memo = Memo()  # the masks `_scores` builds, by what they depend on (shared by a batch's rows)
        self._plans: dict[PieceRequest, Plan | None] = {}  # frozen plans, by request

    def plan(self, request: PieceRequest) -> Plan | None:
        # Asked for three times as a piece starts (its report, its run, its voice leading): drawn once (1 ms).
        if request not in self._plans:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[request] = piece_plan(self.loaded, request)
        return self._plans[request]

    def compose(self, request: PieceRequest) -> Composition:
        comp = Composition(request, self.prefix(request), [], plan=self.plan(request))
        comp.tokens = list(self.stream(request, comp))
        comp.notes = decode(self.vocab, comp.tokens)
        return comp

    @torch.inference_mode()
    def stream(
        self, request: PieceRequest, report: Composition | None = None, steering: Steering | None = None
    ) -> Iterator[int]:
        """Yield music tokens one by one as they are sampled; the last one is EOS.

        With `request.critic` above 1, each bar is written that many times from the same state and the one
        the critic (generator.critic) scores best is yielded, a bar at a time. `steering` (generator.steer)
        lands chat's steers at bar lines, or recorded ones where they landed before.
        """
        run = self._begin(request)
        run.steering = steering
        if request.critic > 1:
            run = yield from self._criticised(run, request)  # the candidates' chosen state, for the report
        else:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            while True:
                token = self._next(run, request, generator)
                yield token
                if token == self.vocab.eos:
                    break
                self._feed(run, token)
        if report is not None:
            report.steered = run.guard.steered

    def _begin(self, request: PieceRequest) -> _Run:
        """A piece's sampling state before its first token, the model fed its prefix."""
        vocab = self.vocab
        prefix = self.prefix(request)
        plan = self.plan(request)
        follow: PlanFollower | None = None
        rhythm: RhythmFollower | None = None
        if plan is not None:
            key = chosen_key(self.loaded, request.style, request.seed, request.key)
            profile = form_profile(self.loaded.card, request.style)
            follow = PlanFollower(plan, profile, key, request.programs(), self.tensors)
            if profile.get("rhythm"):  # how the style's lines move in time (generator.rhythm)
                rhythm = RhythmFollower(profile["rhythm"], request.programs(), self.tensors)
        run = _Run(
            grammar=Grammar(vocab, request.programs() if request.strict_instruments else PROGRAMS),
            decoder=NoteDecoder(vocab),
            guard=LoopGuard(),
            voices=self.voice_leading(request),
            plan=plan,
            follow=follow,
            target=request.seconds * request.tempo / 60.0 * STEPS_PER_BEAT,
            prefix=prefix,
            window=list(prefix),
            starts=replay_points(plan) if plan is not None else set(),
            rhythm=rhythm,
        )
        run.logits, run.cache = self._forward(run.window, None)
        return run

    def _next(self, run: _Run, request: PieceRequest, generator: torch.Generator) -> int:
        """The next token (EOS at the end), with every follower told of it; the model not yet fed it."""
        chosen = self._prepare(run, request)
        if not isinstance(chosen, torch.Tensor):
            return chosen
        return self._commit(run, _sample(chosen, request.temperature, request.top_p, generator), drawn=True)

    def _prepare(self, run: _Run, request: PieceRequest) -> int | torch.Tensor:
        """`_next` up to its draw: the masked scores to draw the next token from, or the token itself where
        nothing is drawn (EOS, or a returning section's next, its followers already told). A batch draws many
        rows' tokens together between this and `_commit` (generator.batch)."""
        vocab, decoder, plan, follow = self.vocab, run.decoder, run.plan, run.follow
        at_end = follow is None and decoder.time >= run.target and run.state.notes > 0
        if run.state.phase == AT_BOUNDARY and (
            at_end or (follow is not None and follow.finished(decoder.time))
        ):
            return vocab.eos
        fresh = decoder.time in run.starts and decoder.time not in run.section_at  # a section or phrase begins
        if plan is not None and fresh and run.state.phase == AT_BOUNDARY:
            run.section_at[decoder.time] = len(run.music)
            if not run.replay:
                run.replay = self._returning(plan, decoder.time, run.section_at, run.music, vocab)
        if run.steering is not None and run.state.phase == AT_BOUNDARY:
            run.steering.turn(self, run, request, decoder.time)  # steers land at a bar line, re-conditioned
            follow = run.follow
        steer = run.steering
        logits = run.logits if steer is None else steer.bias(run.logits, run.state, vocab, decoder.time)
        if run.replay:
            return self._commit(run, run.replay.pop(0))
        return self._scores(
            logits, run.state, run.grammar, decoder, run.guard, run.voices, follow, at_end, run.rhythm
        )

    def _commit(self, run: _Run, token: int, drawn: bool = False) -> int:
        """Every follower told of `token`, drawn from a generator or not; returns it."""
        decoder, follow = run.decoder, run.follow
        run.sampled += drawn
        run.state = run.grammar.advance(run.state, token)
        note = decoder.feed(token)
        run.guard.on_time(decoder.time)
        if note is not None:
            if not run.replay:
                run.guard.on_note(note)
            run.voices.on_note(note)
            if follow is not None:
                follow.on_note(note.start, note.pitch, note.duration, note.program)
            if run.rhythm is not None:
                run.rhythm.on_note(note.start, note.pitch, note.duration, note.program)
            run.notes.append(note)
        run.music.append(token)
        return token

    def _feed(self, run: _Run, token: int) -> None:
        """Feed the model a token, sliding the window back to half the context when it is full."""
        run.window.append(token)
        context, prefix = self.loaded.context, run.prefix
        if len(run.window) >= context:
            keep = (context - len(prefix)) // 2
            run.window = prefix + _tail(self.vocab.kind, run.window[len(prefix) :], keep)
            run.logits, run.cache = self._forward(run.window, None)
        else:
            run.logits, run.cache = self._forward([token], run.cache)

    def _criticised(self, run: _Run, request: PieceRequest) -> Generator[int, None, _Run]:
        """Each bar sampled `request.critic` times from the same state; the critic's favourite is kept.

        Candidate k of bar b draws from its own generator, seeded by (seed, b, k) alone, so a bar's choice
        never depends on how many tokens an earlier candidate drew: the same request, the same bytes.
        """
        eos = self.vocab.eos
        key = chosen_key(self.loaded, request.style, request.seed, request.key)
        profile = form_profile(self.loaded.card, request.style)
        bar = run.plan.bar if run.plan is not None else BAR_STEPS
        programs = tuple(request.programs())
        setup = critic.Setup(
            run.plan,
            key,
            programs,
            critic.leap_share(profile),
            bar,
            critic.pitch_classes(profile),
            critic.interval_shares(profile),
        )
        while True:
            start = run.decoder.time
            if run.steering is not None:  # before the candidates fork: each bar starts as the steers left it
                run.steering.turn(self, run, request, start, bar_start=True)
            index = start // bar
            end = (index + 1) * bar
            before = critic.context(run.notes, start, bar)
            saved = _CacheState.of(run.cache)
            best: tuple[critic.Score, _Run, list[int], _CacheState | None] | None = None
            for k in range(request.critic):
                if k:
                    saved.restore(run.cache)
                candidate = run.fork()
                generator = torch.Generator(device="cpu").manual_seed(candidate_seed(request.seed, index, k))
                tokens = []
                while True:
                    token = self._next(candidate, request, generator)
                    tokens.append(token)
                    if token == eos:
                        break
                    self._feed(candidate, token)
                    if candidate.state.phase == AT_BOUNDARY and candidate.decoder.time >= end:
                        break
                judged = critic.score(setup, before, candidate.notes[len(run.notes) :], start)
                if best is None or judged.total > best[0].total:
                    last = k == request.critic - 1
                    best = (judged, candidate, tokens, None if last else _CacheState.of(candidate.cache))
                if candidate.sampled == run.sampled:
                    break  # only a returning section's tokens: every candidate would be this one
            assert best is not None
            _, run, tokens, state = best
            if state is not None:
                state.restore(run.cache)
            yield from tokens
            if tokens[-1] == eos:
                return run

    def _choose(
        self,
        logits: torch.Tensor,
        state: GrammarState,
        grammar: Grammar,
        decoder: NoteDecoder,
        guard: LoopGuard,
        voices: VoiceLeading,
        follow: PlanFollower | None,
        request: PieceRequest,
        at_end: bool,
        generator: torch.Generator,
        rhythm: RhythmFollower | None = None,
    ) -> int:
        """Sample the next token under the grammar, the guards, voice leading and the plan."""
        scores = self._scores(logits, state, grammar, decoder, guard, voices, follow, at_end, rhythm)
        return _sample(scores, request.temperature, request.top_p, generator)

    def _scores(
        self,
        logits: torch.Tensor,
        state: GrammarState,
        grammar: Grammar,
        decoder: NoteDecoder,
        guard: LoopGuard,
        voices: VoiceLeading,
        follow: PlanFollower | None,
        at_end: bool,
        rhythm: RhythmFollower | None,
    ) -> torch.Tensor:
        """The model's scores for the next token, -inf where the grammar, the guards, voice leading or the
        plan rule a token out, and biased as the plan and the rhythm lean."""
        time = decoder.time
        mask = torch.from_numpy(grammar.allowed(state, may_end=False))
        scores = logits.float()
        if state.phase == AT_BOUNDARY and (at_end or guard.onset_notes >= MAX_NOTES_PER_ONSET):
            if guard.onset_time == time:
                mask = mask & self.is_timeshift  # finish the chord by moving time on
        elif state.phase == AT_BOUNDARY:
            # No rest longer than MAX_REST: time shifts that would overshoot it are off the table.
            # Before the first note, at most a beat: a piece starts at once, and never ends empty.
            room = (MAX_REST if state.notes else STEPS_PER_BEAT) - (time - guard.onset_time)
            mask = mask & self.memo(("room", room), lambda: ~(self.is_timeshift & (self.shift_of > room)))
        if follow is not None and state.phase == AT_BOUNDARY:
            planned = follow.boundary_mask(mask, time)
            mask = planned if bool(planned.any()) else mask
            scores = follow.program_bias(scores)
        if rhythm is not None and state.phase == AT_BOUNDARY:
            mask, scores = rhythm.boundary(mask, scores, time)
        if state.phase == AT_BOUNDARY:
            # An instrument that has struck its share at this onset or in this bar waits (generator.density).
            full = voices.spent(time)
            limited = mask & self.memo(("waits", *full), lambda: ~self.plays(full)) if full else mask
            mask = limited if bool(limited.any()) else mask
        if state.phase == AFTER_PROGRAM and state.program is not None:
            banned = guard.banned_pitch(state.program)
            if banned is not None:
                mask = mask & self.memo(("banned", banned), lambda: self.pitch_of != banned)
            if follow is not None:
                mask = follow.pitch_mask(mask, state.program, time)
                scores = follow.pitch_bias(scores, state.program, time)
            if rhythm is not None:
                scores = rhythm.pitch_bias(scores, state.program, time)
            leading = voices.allowed(state.program, time)
            # Only while it leaves a pitch to play: an instrument's range may hold no allowed leap.
            if leading is not None and bool((mask & leading & self.is_pitch).any()):
                mask = mask & leading
        if follow is not None and state.phase == AFTER_PITCH:
            mask = follow.duration_mask(mask, time)
            scores = follow.duration_bias(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
        if guard.penalized and state.phase == AFTER_PROGRAM:
            penalty = self.memo(
                ("penalized", guard.penalized), lambda: LOOP_PENALTY * self._pitches(guard.penalized)
            )
            scores = scores - penalty
        return scores

    def plays(self, programs: Sequence[int]) -> torch.Tensor:
        """Mask of the Program tokens of `programs`."""
        return torch.isin(self.tensors.program_of, torch.tensor(programs))

    def _pitches(self, pitches: frozenset[int]) -> torch.Tensor:
        return torch.isin(self.pitch_of, torch.tensor(sorted(pitches)))

    @staticmethod
    def _returning(
        plan: Plan, time: int, section_at: dict[int, int], music: list[int], vocab: Vocab
    ) -> list[int]:
        """The tokens played again from `time` (Plan.replays): a returning section's source's up to its own
        last cadence, or the opening of the phrase an echoing phrase opens with."""
        replay = plan.replays().get(time)
        if replay is None:
            return []
        source, steps = replay
        begin = section_at.get(source)
        if begin is None:
            return []
        # An echo's phrase goes on after the opening it replays, so a note held past it rings on as it first
        # did, up to its phrase's cadence or the next replay (a rhyme); a return or a rhyme ends where a cadence
        # or the next section comes, and its notes are cut there.
        limit = steps
        echo = next((p for p in plan.phrases if p.echo is not None and p.start * plan.bar == time), None)
        if echo is not None:
            later = [at for at in plan.replays() if at > time]
            limit = min([(echo.start + echo.bars - 1) * plan.bar, *later]) - time
        durations = sorted((int(vocab.value[t]), int(t)) for t in np.flatnonzero(vocab.kind == KIND_DURATION))
        out: list[int] = []
        moved = 0
        for token in music[begin:]:
            if vocab.kind[token] == KIND_TIMESHIFT:
                if moved + int(vocab.value[token]) > steps:
                    break
                moved += int(vocab.value[token])
                if moved == steps:
                    out.append(token)
                    break
            elif vocab.kind[token] == KIND_DURATION and int(vocab.value[token]) > limit - moved:
                # A note held past the cut would sound over the cadence (or strike with it).
                token = max((d for d in durations if d[0] <= limit - moved), default=durations[0])[1]
            out.append(int(token))
        # Never stop between a note's tokens: end on a note boundary.
        while out and vocab.kind[out[-1]] not in (KIND_TIMESHIFT, KIND_DURATION):
            out.pop()
        return out

    def voice_leading(self, request: PieceRequest) -> VoiceLeading:
        """The style's leaps and registers from the card (none for a card without them or a request without),
        and its instruments' density limits, in the bars of the piece's plan."""
        card = self.loaded.card
        learnt = card.get("style_defaults", {}).get(request.style, {}) if request.voice_leading else {}
        registers = {int(p): (low, high) for p, (low, high) in learnt.get("registers", {}).items()}
        plan = self.plan(request)
        bar = plan.bar if plan is not None else bar_steps(card, request.style)
        density = DensityLimits.of(form_profile(card, request.style).get("density"), bar)
        return VoiceLeading(learnt.get("leaps"), registers, self.pitch_of, density)

    def prefix(self, request: PieceRequest) -> list[int]:
        key = chosen_key(self.loaded, request.style, request.seed, request.key)
        return self.vocab.prefix(request.style, list(request.instruments), request.tempo, key)

    def _forward(self, ids: list[int], cache: FastGPT2 | None) -> tuple[torch.Tensor, FastGPT2]:
        """Logits after `ids`, continuing `cache` or, when it is None, starting a fresh sequence."""
        if cache is None:
            cache = self.fast
            cache.reset()
        return cache.forward(ids).to("cpu"), cache


def replay_points(plan: Plan) -> set[int]:
    """The steps where music starts that is played again, or that plays earlier music again."""
    replays = plan.replays()
    return {s.start * plan.bar for s in plan.sections} | set(replays) | {was for was, _ in replays.values()}


def piece_plan(loaded: LoadedModel, request: PieceRequest) -> Plan | None:
    """The piece's plan, drawn by its seed from its style's form (None when the request plays without one)."""
    if not request.plan:
        return None
    profile = form_profile(loaded.card, request.style)
    key = chosen_key(loaded, request.style, request.seed, request.key)
    minor = None if key is None else key_of(key)[1]  # a model without keys plans no chords
    return draw_plan(profile, request.seconds, request.tempo, request.seed, minor)


def chosen_key(loaded: LoadedModel, style: str, seed: int, asked: str | None) -> str | None:
    """The key a piece is played in: the one asked for, else the seed's pick; None for a model without keys."""
    if asked or not loaded.vocab.keyed:
        return asked
    return style_key(loaded.card, style, seed)


def style_key(card: dict[str, Any], style: str, seed: int) -> str:
    """A key for a piece that names none: drawn by the seed, each key as often as the style's pieces use it.

    Its own generator, apart from the sampler's, so choosing a key never shifts the notes' random stream.
    """
    shares = card.get("style_defaults", {}).get(style, {}).get("keys") or {"C": 1.0}
    names: list[str] = sorted(shares)
    weights = np.array([shares[n] for n in names], dtype=np.float64)
    rng = np.random.default_rng([seed, 0x6B6579])  # "key"
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _tail(kinds: np.ndarray, music: list[int], keep: int) -> list[int]:
    """The last `keep` music tokens or fewer, cut so that they start on a note boundary."""
    start = len(music) - keep
    while start < len(music) and kinds[music[start]] not in (KIND_PROGRAM, KIND_TIMESHIFT):
        start += 1
    return music[start:]


def sample_rows(
    scores: torch.Tensor, requests: Sequence[PieceRequest], generators: Sequence[torch.Generator]
) -> list[int]:
    """A token for each row of `scores` [B, vocab], drawn at its request's temperature and top-p from its own
    generator: the very tokens `_sample` draws for each row alone (generator.batch's draw).

    Softmax, sort and cumsum go row by row in torch's CPU kernels, so a row's bits do not depend on the batch.
    One sample is what `torch.multinomial` draws as argmax(p / q), q ~ Exp(1) from the generator (its fast path
    for one sample): the exponentials are drawn row by row from each row's generator, the rest for the batch
    at once. (For one row alone `_sample` is a little cheaper: 65 against 72 us.)

    Raises:
        RuntimeError: a row with no token left to draw (as multinomial raises).
    """
    # One value for the batch (the usual case) as a Python float: the same float32 arithmetic, fewer ops.
    temperature = _per_row([r.temperature for r in requests])
    top_p = _per_row([r.top_p for r in requests])
    probs = torch.softmax(scores / temperature, dim=-1)
    # A row left with nothing to draw is NaN throughout; checked before any generator draws, so that a batch
    # refused can be drawn again row by row.
    if bool(probs.isnan().any()):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if any(r.top_p < 1.0 for r in requests):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        if isinstance(top_p, torch.Tensor):
            keep |= top_p >= 1.0
        keep[:, 0] = True
        probs = torch.zeros_like(probs).scatter(1, order, torch.where(keep, sorted_probs, 0.0))
    exponential = torch.empty_like(probs)
    for row, generator in zip(exponential, generators, strict=True):
        row.exponential_(generator=generator)
    return [int(t) for t in (probs / exponential).argmax(dim=-1).tolist()]


def _sample(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _per_row(values: list[float]) -> float | torch.Tensor:
    """The rows' value: one Python float when they share it, else a float32 column [B, 1] (as the scores)."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=torch.float32)[:, None]


def candidate_seed(seed: int, bar: int, k: int) -> int:
    """The seed of candidate k of bar `bar`: a pure function of the three, apart from every other stream."""
    words = np.random.SeedSequence([seed, 0x637269746963, bar, k]).generate_state(2, np.uint32)  # "critic"
    return int(words[0]) << 32 | int(words[1])


@dataclass
class _Run:
    """Everything a piece's sampling has accumulated: what a candidate bar forks and the chosen one keeps."""

    grammar: Grammar
    decoder: NoteDecoder
    guard: LoopGuard
    voices: VoiceLeading
    plan: Plan | None
    follow: PlanFollower | None
    target: float  # steps; without a plan the piece ends at the first boundary past it
    prefix: list[int]
    window: list[int]
    starts: set[int]  # steps where a section of the plan starts, or music that is played again (replay_points)
    state: GrammarState = field(default_factory=GrammarState)
    music: list[int] = field(default_factory=list)  # the music tokens so far, for a returning section
    notes: list[Note] = field(default_factory=list)
    section_at: dict[int, int] = field(default_factory=dict)  # a section's start step -> index in `music`
    replay: list[int] = field(default_factory=list)  # tokens of a returning section still to play
    sampled: int = 0  # tokens drawn from a generator (not replayed)
    logits: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # after the last token fed
    cache: Any = None  # the decoder holding the window's keys and values (FastGPT2, or a bench's own)
    steering: Steering | None = None  # shared by forks: steers land only where a bar starts, before forking
    rhythm: RhythmFollower | None = None  # generator.rhythm's steer, for a card that learnt the style's rhythm

    def fork(self) -> _Run:
        """A copy whose followers and lists can move on without touching this one's (the model's cache is
        shared: `_CacheState` puts it back)."""
        return dataclasses.replace(
            self,
            decoder=_forked(self.decoder),
            guard=_forked(self.guard),
            voices=_forked(self.voices),
            follow=_forked(self.follow) if self.follow is not None else None,
            rhythm=_forked(self.rhythm) if self.rhythm is not None else None,
            window=list(self.window),
            music=list(self.music),
            notes=list(self.notes),
            section_at=dict(self.section_at),
            replay=list(self.replay),
        )


def _forked(follower: _T) -> _T:
    """A copy of a follower whose containers are its own: their items are immutable (ints, tuples, tensors)."""
    copied = copy.copy(follower)
    for name, value in vars(follower).items():
        if isinstance(value, list | dict | set):
            setattr(copied, name, type(value)(value))
    return copied


@dataclass(frozen=True)
class _CacheState:
    """The model's key/value cache as it stood, to put back before another candidate."""

    length: int
    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, cache: Any) -> _CacheState:
        if not isinstance(cache, FastGPT2):
            raise ConcertbotError("the critic needs the FastGPT2 decoder's cache")
        n = cache.length
        return cls(n, cache.keys[:, :, :n].clone(), cache.values[:, :, :n].clone())

    def restore(self, cache: FastGPT2) -> None:
        cache.keys[:, :, : self.length] = self.keys
        cache.values[:, :, : self.length] = self.values
        cache.length = self.length
