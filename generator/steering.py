"""Sampling that follows a piece's plan (generator.plan): phrases that close on cadences, harmony in the key,
single lines that stay single, every instrument heard, and a final chord on the tonic.

The model alone writes plausible notes with no shape: 512 tokens of context are 10-23 s of music, so it
cannot know where a phrase or the piece ends. The plan knows, and this module turns it into masks and biases
over the next token, like the grammar: pure functions of the notes so far, so a seed still gives the same
piece. What it asks of each token:

- Time never skips a plan boundary (a phrase's start or its cadence): a time shift may land on one, not pass it.
  Notes end by the next cadence, so a line is free to take it.
- At a cadence (the downbeat of a phrase's last bar) every instrument strikes a note of the cadence chord, the
  lowest one its root, held at least a beat; the last cadence is the tonic, held a bar, and ends the piece.
- Pitches lean towards the style's own pitch classes in the key (learnt from its real pieces), towards the
  plan's chord of the moment (its progression, learnt from the style's), and towards notes that make a chord
  with what already sounds.
- Where voices interleave, each voice's next note leans to the style's melodic intervals, as far as the
  piece's own intervals so far are off them.
- An instrument that plays one line in the style (a chorale voice, a wind part) plays one note at a time.
- An instrument left behind (under half its fair share of the notes) is favoured until it catches up.
- Each part leans back to the register its style's part sings in when its recent notes drift off it.
- Note lengths lean to the style's as far as the piece's lengths so far are off them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from generator import metrics
from generator.form_metrics import CHORDS, clashes, is_strong_beat
from generator.harmony import chord_pitch_classes
from generator.instruments import BY_PROGRAM
from generator.memo import Memo
from generator.plan import STEPS_PER_BEAT, Plan, key_of

CHORDAL = frozenset({0, 6, 19, 24, 46, 48})  # piano, harpsichord, organ, guitar, harp, string ensemble
# The style's pitch classes in the key pull a pitch down only as far as the piece so far plays its pitch class
# more often than the style does: KEY_GAIN times the log of the style's share over the piece's (the piece's
# shrunk towards the style's by KEY_PRIOR notes), at most KEY_CAP logits, never up. A fixed log-prior that took
# up to 2.5 logits off every pitch class outside the style's commonest seven counted the key twice (the model
# knows it from its prefix): Bach played 1.1 % of its notes outside the scale against 5.2 % in its training
# pieces' openings (5.4 % with no prior), the quartets 2.7 % against 10.4 %, Palestrina 0.2 % against 4.0 %: no
# secondary dominant, no leading note borrowed, harmony without colour. A pull up made folk tunes circle the
# tonic, so there is none.
KEY_GAIN = 1.0
KEY_PRIOR = 10.0
KEY_CAP = 2.0
KEY_FLOOR = 0.002  # a pitch class the style never uses in a key is unlikely, not impossible
# The model puts too little weight on steps (29 % of its probability on Bach's held-out voices against 59 % of
# real notes): the style's own intervals, as a second log-prior (INTERVAL_WEIGHT), pull each voice back to how
# the style moves. That prior alone counted again the steps that the rhythm steer's step lean and the chord's
# nearest tones already take, and sharpened the style's histogram: medieval voices leapt 5 % against 10 % in
# its training pieces, Bach's 10 % against 15 %, and every polyphonic style repeated notes too often (5 pieces
# of 30 s, critic 2). So the pull also answers the piece's own intervals so far: each interval gains
# INTERVAL_GAIN times the log of the style's share over the piece's (the piece's shrunk towards the style's by
# INTERVAL_PRIOR intervals, at most INTERVAL_CAP logits either way), which is nothing while the piece moves as
# the style does and takes back whatever the steers together push past it.
INTERVAL_WEIGHT = 0.5
INTERVAL_GAIN = 2.0
INTERVAL_PRIOR = 10.0
INTERVAL_CAP = 3.0
INTERVAL_FLOOR = 0.001
# Logits added to a pitch that makes a chord with the notes already sounding, while the piece's onsets are less
# often chordal than the style's real pieces' ("chordal" in its form). Always on, the pull made every onset a
# chord: quartets 93 % chordal against 73 % real, Josquin 97 % against 74 %; never on, Bach and Palestrina
# fell to 72 % and 69 % against 84 % and 82 % (5 pieces of 30 s each, seeds 0-4, critic 2).
CHORD_BONUS = 1.5
# The plan's chord (generator.harmony): its tones are favoured where the ear hears harmony, on the chord's first
# step and less on its other beats; between beats passing notes are free. The bass takes the root as it changes.
PLANNED_STRONG = 2.0
PLANNED_BEAT = 1.0
PLANNED_ROOT = 2.0
# A voice takes the chord tone nearest its last note, as a chorale voice does: a tone more than a fourth away
# keeps this share of the bonus (with the full bonus every octave of a tone pulled alike, and leaps rose).
NEAR_TONE = 5
FAR_TONE_SHARE = 0.5
# Logits taken off a pitch that would clash on a strong beat (a semitone or major seventh against a sounding
# note; in a style that hears it so, a tritone over the bass) while the piece's strong beats clash more often
# than the style's real ones ("clashes" in its form). Generated strong beats clashed 2-5 times as often as
# real ones (Bach 9 % against 3.4 %, Palestrina 15 % against 2.9 %; 10 pieces of 30 s, critic 2).
CLASH_PENALTY = 3.0
# Each part leans back towards where the style's part sings (its median pitch in the style's training
# pieces, "tessitura" in its form) as far as its recent notes sit off it. Left alone the model let a motet's
# parts huddle high in one octave and a half: Palestrina's bass sang at MIDI 57-61 against 52-54 in real
# masses, its outer parts 9-13 semitones apart against 15-19 (3 pieces of 30 s, critic 2). The lean is a tilt
# of the pitch logits, HEIGHT_GAIN per semitone for each semitone the part's recent mean (HEIGHT_RATE: about
# its last 8 notes, from its first) lies off the median, at most HEIGHT_CAP: nothing while a part sings where
# its style's part does. The first note is the model's own.
HEIGHT_RATE = 1 / 8
HEIGHT_GAIN = 0.05
HEIGHT_CAP = 0.4
HEIGHT_STEP = 0.05  # tilts are rounded to this, so that a tilt's bias is built once, not every note
# A note's length leans to the style's share of that length as far as the piece's lengths so far are off it
# (LENGTH_GAIN times the log of the style's share over the piece's, the piece's shrunk towards the style's by
# LENGTH_PRIOR notes, at most LENGTH_CAP logits either way), as the interval pull does for intervals. Left
# alone the model smoothed each style's rhythm towards its commonest length: Irish tunes played 2 % of their
# notes as sixteenths against 20 % in real tunes and 76 % as eighths against 59 %; Scottish airs the other way,
# 39 % sixteenths against 15 % (6 pieces of 30 s, critic 2, against the held-out pieces' openings).
LENGTH_GAIN = 1.0
LENGTH_PRIOR = 10.0
LENGTH_CAP = 2.0
LENGTH_FLOOR = 0.001
# A length rarer than this in the style is only ever pulled down: a piece that has not played it yet would
# otherwise be pulled towards it as towards any length it owes (Irish tunes took to one-step notes, 3 %).
LENGTH_RARE = 0.01
FAIR_BONUS = 3.5  # logits added to an instrument under half its fair share of the notes
FAIR_AFTER = 3  # notes per instrument before its share is judged
SINGLE_LINE_STYLE = 0.75  # a style whose instruments are this often single lines makes any wind or string one

_MAJOR_SCALE = frozenset({0, 2, 4, 5, 7, 9, 11})
_MINOR_SCALE = frozenset({0, 2, 3, 5, 7, 8, 11})
# The sonorities a chorale or a motet uses (triads and sevenths), the same ones eval counts as chordal.
_CHORDS = [frozenset((root + i) % 12 for i in chord) for root in range(12) for chord in CHORDS]


@dataclass(frozen=True)
class VocabTensors:
    """Per token id: what it is and its value, as tensors the masks are built from."""

    pitch_of: torch.Tensor  # MIDI pitch, or -1
    is_pitch: torch.Tensor
    is_timeshift: torch.Tensor
    shift_of: torch.Tensor  # steps, or 0
    program_of: torch.Tensor  # GM program of a Program token, or -2
    duration_of: torch.Tensor  # steps, or 0


def _answering(
    shares: np.ndarray, counts: Sequence[int], prior: float, gain: float, low: float, high: float
) -> np.ndarray:
    """The pull that answers the piece: `gain` times the log of the style's `shares` over the piece's (its
    `counts`, shrunk towards the style's by `prior` of them), clipped to [low, high]; nothing while the piece
    sounds as its style does. The interval, key and note-length pulls are all this."""
    heard = (np.asarray(counts) + prior * shares) / (sum(counts) + prior)
    return np.clip(gain * np.log(shares / heard), low, high)


@functools.lru_cache(maxsize=4096)
def consonant_with(sounding: frozenset[int]) -> frozenset[int]:
    """Pitch classes that, added to `sounding`, still fit within one triad or seventh chord."""
    return frozenset(pc for pc in range(12) if any(sounding | {pc} <= chord for chord in _CHORDS))


class PlanFollower:
    """Follows the notes of one piece as they are sampled and says what its plan asks of the next token.

    Args:
        plan: the piece's plan.
        profile: the style's learnt form profile (generator.plan.learn_form); empty for a card without one.
        key: the piece's key name, or None for a model without keys (then no harmony is steered).
        programs: the instruments asked for.
        vt: the vocabulary's tensors.
    """

    def __init__(
        self, plan: Plan, profile: dict[str, Any], key: str | None, programs: list[int], vt: VocabTensors
    ) -> None:
        self.plan = plan
        self.vt = vt
        self.programs = sorted(programs)
        self.cadences = plan.cadence_times()
        self.cadence_root = {t: p.cadence for t, p in zip(self.cadences, plan.phrases, strict=True)}
        # Where music is played again, or first played to be played again later (a rhyme's bars need not start
        # a phrase): time stops there, so the sampler finds the very step.
        replayed = {t for at, (was, _) in plan.replays().items() for t in (at, was)}
        self.boundaries = sorted({*self.cadences, *plan.phrase_starts(), *replayed, plan.end()})
        self.final = self.cadences[-1]
        self.returns = sorted(plan.replays())  # where earlier music plays again
        self.keyed = key is not None
        self.tonic, self.minor = key_of(key)
        shares = (profile.get("pitch_classes") or {}).get("minor" if self.minor else "major")
        # The style's shares of the twelve degrees above the tonic in the key's mode, and the piece's notes on
        # each so far (KEY_GAIN).
        self.key_shares: np.ndarray | None = None
        if shares is not None and self.keyed:
            floored = np.maximum(np.asarray(shares, dtype=np.float64), KEY_FLOOR)
            self.key_shares = floored / floored.sum()
        self.degrees: tuple[int, ...] = (0,) * 12
        unpitched = torch.full_like(vt.pitch_of, -1)
        self.degree_of = torch.where(vt.is_pitch, (vt.pitch_of - self.tonic) % 12, unpitched)
        # The style's shares of melodic intervals, the widest bins holding the wider ones too. Only where voices
        # interleave in one token stream, which is where the model loses a voice's line; a single line it
        # follows well (46 % steps against 50 % in real Irish tunes), and the pull would then count the style's
        # intervals twice (leaps fell to 7 % against 12 % real; interval JS 0.11 -> 0.20).
        self.interval_shares: np.ndarray | None = None
        if profile.get("intervals") and len([p for p in self.programs if p >= 0]) >= 2:
            shares = np.maximum(np.asarray(profile["intervals"], dtype=np.float64), INTERVAL_FLOOR)
            self.interval_shares = shares / shares.sum()
        # The piece's melodic intervals so far, in the same bins, as eval counts them (each voice's highest
        # note at each onset), and each voice's melody note at the onset before its latest.
        self.moves: tuple[int, ...] = (0,) * (0 if self.interval_shares is None else len(self.interval_shares))
        self.came_from: dict[int, int] = {}
        # Per planned chord: its tones (and its root), as masks over the vocabulary.
        self.chord_tones: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.keyed:
            pcs = vt.pitch_of % 12
            for chord in set(plan.chords):
                tones = chord_pitch_classes(chord, self.tonic)
                self.chord_tones[chord] = (
                    torch.isin(pcs, torch.tensor(tones)) & vt.is_pitch,
                    (pcs == tones[0]) & vt.is_pitch,
                )
        self.melody: dict[int, tuple[int, int]] = {}  # program -> (latest onset, highest pitch there)
        learnt = set(profile.get("single_line") or [])
        mostly = bool(learnt) and len(learnt) >= SINGLE_LINE_STYLE * len(profile.get("programs") or learnt)
        self.single = {p for p in self.programs if p in learnt or (mostly and p not in CHORDAL and p >= 0)}
        # A part that strikes chords but lets each note go by its next onset, as a quartet's inner parts do: it
        # waits for its note to end before a new onset (a chord at the same onset is free).
        self.legato = {p for p in self.programs if p in set(profile.get("legato") or [])} - self.single
        self.ends: dict[int, int] = {}  # program -> when its latest note ends
        self.counts = dict.fromkeys(self.programs, 0)
        self.struck_at = -1
        self.struck: set[int] = set()  # programs that struck at time `struck_at`
        self.sounding: list[tuple[int, int]] = []  # (end, pitch) of pitched notes that may still sound
        self.chordal_target: float | None = profile.get("chordal")
        self.clash_target: float | None = profile.get("clashes")
        self.clash_tritone = bool(profile.get("clash_tritone"))
        # The strong beats heard so far: (the latest strong onset, the pitches sounding there, strong onsets of
        # two or more pitch classes, those that clashed).
        self.strong: tuple[int, tuple[int, ...], int, int] = (-1, (), 0, 0)
        # The onsets heard so far, as eval counts them: (latest onset, its pitch classes sounding, onsets of
        # three or more pitch classes that make a chord, onsets of three or more).
        self.heard: tuple[int, frozenset[int], int, int] = (-1, frozenset(), 0, 0)
        # The bass: the instrument whose range lies lowest; it takes the cadence chord's root.
        ranged = [p for p in self.programs if p in BY_PROGRAM and p >= 0]
        self.bass = min(ranged, key=lambda p: (BY_PROGRAM[p].low + BY_PROGRAM[p].high, p), default=None)
        # The style's shares of note lengths (metrics.length_bin), and the piece's lengths so far.
        self.length_shares: np.ndarray | None = None
        if profile.get("lengths"):
            shares = np.maximum(np.asarray(profile["lengths"], dtype=np.float64), LENGTH_FLOOR)
            self.length_shares = shares / shares.sum()
        self.lengths: tuple[int, ...] = (0,) * (0 if self.length_shares is None else len(self.length_shares))
        lengths = torch.tensor(metrics.length_bin(vt.duration_of.numpy()))
        self.length_of = torch.where(vt.duration_of > 0, lengths, torch.full_like(lengths, -1))
        # Where each part sings in the style (its median pitch), and where its recent notes sit: an average
        # that starts at the part's first note and follows each note it plays.
        # Only where parts share the texture: a single line's register is its tune's, and leaning it to the
        # style's median made Irish and Scottish tunes leap more (15 % and 21 % against 12 % and 16 % real).
        tessitura = profile.get("tessitura") or {}
        voices = [p for p in self.programs if p >= 0]
        shared = len(voices) >= 2
        self.median = {p: float(tessitura[str(p)][1]) for p in voices if shared and str(p) in tessitura}
        self.height: dict[int, float] = {}
        self.memo = Memo()  # the masks and biases below by what they depend on: built once, not every token

    # --- what the plan asks -----------------------------------------------------------------------------

    def next_boundary(self, time: int) -> int:
        """The first plan boundary after `time`: a time shift may reach it, not pass it."""
        for b in self.boundaries:
            if b > time:
                return b
        return self.boundaries[-1]

    def next_cadence(self, time: int) -> int:
        for c in self.cadences:
            if c > time:
                return c
        return self.plan.end()

    def due(self, time: int) -> list[int]:
        """Instruments that must still strike at `time`: all of them at a cadence, none elsewhere."""
        if time not in self.cadence_root:
            return []
        struck = self.struck if self.struck_at == time else set()
        return [p for p in self.programs if p not in struck and p >= 0]

    def finished(self, time: int) -> bool:
        """True once every instrument has struck the final chord (or time is past it: drums alone)."""
        if time == self.final:
            return self.struck_at == self.final and not self.due(self.final)
        return time > self.final

    # --- masks and biases -----------------------------------------------------------------------------

    def boundary_mask(self, mask: torch.Tensor, time: int) -> torch.Tensor:
        """At a note boundary: the plan's limits on time shifts and on which instrument plays next."""
        vt = self.vt
        due = self.due(time)
        if due:
            return mask & self.memo(("due", *due), lambda: torch.isin(vt.program_of, torch.tensor(due)))
        room = self.next_boundary(time) - time
        mask = mask & self.memo(("room", room), lambda: ~(vt.is_timeshift & (vt.shift_of > room)))
        busy = [p for p in self.single if self.ends.get(p, 0) > time]
        busy += [p for p in self.legato if self.ends.get(p, 0) > time and self.melody.get(p, (time,))[0] < time]
        if busy:
            mask = mask & self.memo(("busy", *busy), lambda: ~torch.isin(vt.program_of, torch.tensor(busy)))
        return mask

    def program_bias(self, scores: torch.Tensor) -> torch.Tensor:
        total = sum(self.counts.values())
        if total < FAIR_AFTER * len(self.programs) or len(self.programs) < 2:
            return scores
        fair = total / len(self.programs)
        behind = [p for p, n in self.counts.items() if n < fair / 2]
        if not behind:
            return scores
        return scores + self.memo(
            ("behind", *behind), lambda: FAIR_BONUS * torch.isin(self.vt.program_of, torch.tensor(behind))
        )

    def pitch_mask(self, mask: torch.Tensor, program: int, time: int) -> torch.Tensor:
        """At a cadence, the cadence chord (its root for the lowest instrument); elsewhere no limit."""
        if not self.keyed or time not in self.cadence_root:
            return mask
        degree = self.cadence_root[time]
        # The chord the key builds on that root: harmonic minor in a minor key, so its dominant is major.
        scale = _MINOR_SCALE if self.minor else _MAJOR_SCALE
        third = 4 if (degree + 4) % 12 in scale else 3
        fifth = 7 if (degree + 7) % 12 in scale else 6
        root = (self.tonic + degree) % 12
        chord = [root, (root + third) % 12, (root + fifth) % 12]
        # The bass takes the root; a single line is its own bass only at the very end, on the tonic.
        is_bass = program == self.bass and (len(self.programs) > 1 or time == self.final)
        allowed = [root] if is_bass else chord
        narrowed = mask & torch.isin(self.vt.pitch_of % 12, torch.tensor(allowed)) & self.vt.is_pitch
        return narrowed if bool(narrowed.any()) else mask

    def pitch_bias(self, scores: torch.Tensor, program: int, time: int) -> torch.Tensor:
        if self.key_shares is not None:
            scores = scores + self.memo(("key", self.degrees), self._key_bias)
        onset, top = self.melody.get(program, (-1, -1))
        # The voice's next melody note (not a chord note under one it struck at this onset).
        melodic = onset >= 0 and onset != time
        if self.interval_shares is not None and melodic and program >= 0:
            scores = scores + self.memo(("interval", top, self.moves), lambda: self._interval_bias(top))
        chord = self.plan.chord_at(time)
        if chord is not None and chord in self.chord_tones and time % STEPS_PER_BEAT == 0:
            tones, root = self.chord_tones[chord]
            changes = time % self.plan.span == 0

            def weigh() -> torch.Tensor:
                weight = (PLANNED_STRONG if changes else PLANNED_BEAT) * tones.float()
                if melodic:
                    near = (self.vt.pitch_of - top).abs() <= NEAR_TONE
                    weight = torch.where(near, weight, FAR_TONE_SHARE * weight)
                return weight

            scores = scores + self.memo(("chord", chord, changes, top if melodic else None), weigh)
            if changes and program == self.bass and len(self.programs) > 1:
                scores = scores + self.memo(("root", chord), lambda: PLANNED_ROOT * root)
        if program >= 0 and self.clash_budget_spent(time):
            held = frozenset(p for end, p in self.sounding if end > time)
            if held:
                scores = scores - self._clashing(held)
        tilt = self.height_tilt(program)
        if tilt:
            scores = scores + self.memo(("height", tilt), lambda: self._tilted(tilt))
        sounding = frozenset(p % 12 for end, p in self.sounding if end > time)
        if sounding and self.chordal_below_target():
            fits = consonant_with(sounding)
            scores = scores + self.memo(("fits", fits), lambda: self._fitting(fits))
        return scores

    def height_tilt(self, program: int) -> float:
        """Logits per semitone up for `program`'s next pitch: negative while its recent notes sit high."""
        if program not in self.median or program not in self.height:
            return 0.0
        off = self.height[program] - self.median[program]
        tilt = max(-HEIGHT_CAP, min(HEIGHT_CAP, -HEIGHT_GAIN * off))
        return round(tilt / HEIGHT_STEP) * HEIGHT_STEP

    def _tilted(self, tilt: float) -> torch.Tensor:
        # Only pitches may follow a Program token, so the tilt's zero point (middle C) cancels out.
        return torch.where(self.vt.is_pitch, tilt * (self.vt.pitch_of - 60).float(), torch.zeros(()))

    def _interval_bias(self, top: int) -> torch.Tensor:
        """Per pitch, the pull on the interval it makes from `top` while the piece is off the style's."""
        shares = self.interval_shares
        assert shares is not None
        pull = _answering(shares, self.moves, INTERVAL_PRIOR, INTERVAL_GAIN, -INTERVAL_CAP, INTERVAL_CAP)
        pull = pull + INTERVAL_WEIGHT * np.log(shares / shares.max())
        widest = (len(shares) - 1) // 2
        table = torch.tensor(pull[np.clip(np.arange(-127, 128), -widest, widest) + widest], dtype=torch.float32)
        moves = (self.vt.pitch_of - top).clamp(-127, 127) + 127
        return torch.where(self.vt.is_pitch, table[moves], torch.zeros(()))

    def _tally(self, program: int, start: int, pitch: int) -> None:
        """Count the melodic interval a note makes; a higher note at its voice's onset moves the one counted."""
        onset, top = self.melody.get(program, (-1, -1))
        widest = (len(self.moves) - 1) // 2
        moves = list(self.moves)
        if onset == start:
            came = self.came_from.get(program)
            if came is None or pitch <= top:
                return
            moves[max(-widest, min(widest, top - came)) + widest] -= 1
        elif onset >= 0:
            came = self.came_from[program] = top
        else:
            return
        moves[max(-widest, min(widest, pitch - came)) + widest] += 1
        self.moves = tuple(moves)

    def _fitting(self, fits: frozenset[int]) -> torch.Tensor:
        found = torch.tensor(sorted(fits) or [-1])
        return CHORD_BONUS * (torch.isin(self.vt.pitch_of % 12, found) & self.vt.is_pitch)

    def _clashing(self, held: frozenset[int]) -> torch.Tensor:
        """CLASH_PENALTY on each pitch that would clash with the pitches `held` (form_metrics.clashes)."""
        vt = self.vt
        classes = torch.tensor(sorted({(p + d) % 12 for p in held for d in (1, 11)}))
        bad = torch.isin(vt.pitch_of % 12, classes)
        if self.clash_tritone:
            low = min(held)
            below = torch.tensor(sorted({(p - 6) % 12 for p in held}))
            bad |= (vt.pitch_of > low) & ((vt.pitch_of - low) % 12 == 6)  # a tritone over the bass
            bad |= (vt.pitch_of < low) & torch.isin(vt.pitch_of % 12, below)  # a new bass under one
        return CLASH_PENALTY * (bad & vt.is_pitch)

    def clash_budget_spent(self, time: int) -> bool:
        """Whether `time` is a strong beat and one more clash there would take the piece's strong beats past
        the style's share of clashes (never, without a learnt share)."""
        if self.clash_target is None or not is_strong_beat(time, self.plan.bar):
            return False
        _, _, judged, clashing = self._strong_heard(time)
        return clashing + 1 > self.clash_target * (judged + 1)

    def _strong_heard(self, time: int) -> tuple[int, tuple[int, ...], int, int]:
        """The strong-beat tally with the strong onset before `time` counted in."""
        onset, pitches, judged, clashing = self.strong
        if onset >= 0 and onset != time and len({p % 12 for p in pitches}) >= 2:
            judged, clashing = judged + 1, clashing + clashes(pitches, self.clash_tritone)
            pitches = ()
        return onset, pitches, judged, clashing

    def duration_bias(self, scores: torch.Tensor) -> torch.Tensor:
        """The pull of each Duration token towards the style's note lengths, as far as the piece is off them."""
        if self.length_shares is None:
            return scores
        return scores + self.memo(("lengths", self.lengths), self._length_bias)

    def _key_bias(self) -> torch.Tensor:
        shares = self.key_shares
        assert shares is not None
        pull = _answering(shares, self.degrees, KEY_PRIOR, KEY_GAIN, -KEY_CAP, 0.0)  # never up
        table = torch.tensor(pull, dtype=torch.float32)
        return torch.where(self.degree_of >= 0, table[self.degree_of.clamp(min=0)], torch.zeros(()))

    def _length_bias(self) -> torch.Tensor:
        shares = self.length_shares
        assert shares is not None
        pull = _answering(shares, self.lengths, LENGTH_PRIOR, LENGTH_GAIN, -LENGTH_CAP, LENGTH_CAP)
        table = torch.tensor(np.where(shares < LENGTH_RARE, np.minimum(pull, 0.0), pull), dtype=torch.float32)
        return torch.where(self.length_of >= 0, table[self.length_of.clamp(min=0)], torch.zeros(()))

    def duration_mask(self, mask: torch.Tensor, time: int) -> torch.Tensor:
        """Notes end by the next cadence (or return); a cadence's notes last a beat or more, up to the phrase's
        end; the final chord's a bar or so, to the piece's end, every voice letting go with the first."""
        vt = self.vt
        if time in self.cadence_root:
            if time == self.final:
                # With no ceiling the model held a final note for bars past the end (an Irish tune's last note
                # over the next piece; seen: a Bach contrabass 7 beats on alone after the others stopped).
                low = max(STEPS_PER_BEAT, min(self.plan.bar, 4 * STEPS_PER_BEAT))
                high = max(low, self.plan.end() - time)
                narrowed = mask & (vt.duration_of >= low) & (vt.duration_of <= high)
                struck = self.struck if self.struck_at == time else set()
                held = [self.ends[p] - time for p in struck if p in self.ends]
                together = narrowed & (vt.duration_of == max(held)) if held else narrowed
                narrowed = together if bool(together.any()) else narrowed
            else:
                room = self.next_boundary(time) - time  # held to the phrase's end at most
                narrowed = mask & (vt.duration_of >= STEPS_PER_BEAT) & (vt.duration_of <= room)
        else:
            narrowed = mask & (vt.duration_of <= self._free_by(time) - time)
        return narrowed if bool(narrowed.any()) else mask

    def _free_by(self, time: int) -> int:
        """When every voice must be free again: the next cadence, or a returning section's start (its notes
        come back as they were, and would otherwise sound over notes still held)."""
        returns = [r for r in self.returns if r > time]
        return min([self.next_cadence(time), *returns])

    # --- following the notes ----------------------------------------------------------------------------

    def on_note(self, start: int, pitch: int, duration: int, program: int) -> None:
        self.ends[program] = max(self.ends.get(program, 0), start + duration)
        if program in self.counts:
            self.counts[program] += 1
        if start != self.struck_at:
            self.struck_at, self.struck = start, set()
        self.struck.add(program)
        if self.interval_shares is not None and program >= 0:
            self._tally(program, start, pitch)
        onset, top = self.melody.get(program, (-1, -1))
        self.melody[program] = (start, max(top, pitch) if onset == start else pitch)
        if self.length_shares is not None and program >= 0:
            tally = list(self.lengths)
            tally[int(metrics.length_bin(np.array([duration]))[0])] += 1
            self.lengths = tuple(tally)
        if program in self.median:
            height = self.height.get(program, float(pitch))
            self.height[program] = height + HEIGHT_RATE * (pitch - height)
        if program < 0:
            return  # a drum's pitch names a kit piece: no part of the harmony
        if self.key_shares is not None:
            tally = list(self.degrees)
            tally[(pitch - self.tonic) % 12] += 1
            self.degrees = tuple(tally)
        onset, pcs, chordal, full = self.heard
        if start != onset:
            if len(pcs) >= 3:
                chordal, full = chordal + any(pcs <= chord for chord in _CHORDS), full + 1
            pcs = frozenset(p % 12 for e, p in self.sounding if e > start)
        self.heard = (start, pcs | {pitch % 12}, chordal, full)
        if self.clash_target is not None and is_strong_beat(start, self.plan.bar):
            onset, pitches, judged, clashing = self._strong_heard(start)
            if onset != start:
                pitches = tuple(p for e, p in self.sounding if e > start)
            self.strong = (start, (*pitches, pitch), judged, clashing)
        self.sounding = [(e, p) for e, p in self.sounding if e > start]
        self.sounding.append((start + duration, pitch))

    def chordal_below_target(self) -> bool:
        """Whether the piece's onsets so far are less often chordal than the style's (always, if no target)."""
        _, _, chordal, full = self.heard
        return self.chordal_target is None or full == 0 or chordal < self.chordal_target * full
