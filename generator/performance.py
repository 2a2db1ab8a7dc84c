"""How a piece is played: loudness that follows its metre, phrases and voices, and a ritardando into its end.

The corpus carries no dynamics, so the model writes every note alike, and a synth playing them at one
velocity and one tempo sounds like a sequencer. A player shapes the same notes: strong beats weigh more than
weak ones, a phrase swells towards its middle and relaxes into its cadence, the tune sings above the inner
voices, and the last bar broadens into a held final chord. `Performance` does this as pure functions of the
piece's plan and instruments, so a piece played live, downloaded or replayed sounds the same every time.

Times are steps of 1/8 beat, as in generator.decode. The ritardando slows beat by beat (a tempo per beat,
as a MIDI file writes tempo changes), so a MIDI file of the notes says exactly what the stream plays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from generator.instruments import BY_PROGRAM, DRUMS

if TYPE_CHECKING:
    from generator.plan import Plan

STEPS_PER_BEAT = 8
DEFAULT_BAR = 4 * STEPS_PER_BEAT
BASE = 74  # a mezzo-forte; the synth's loudness control sets the overall level
DOWNBEAT, MIDBAR, OFFBEAT = 10, 5, -5  # accents, in velocity, against a plain beat
PHRASE_SWELL = 12  # a phrase's rise from its start to its peak, and its fall into the cadence
PHRASE_PEAK = 0.6  # where in the phrase the swell peaks
MELODY, BASS, INNER = 8, 2, -4  # the highest instrument sings out; inner voices make room
RITARDANDO_BEATS = 4  # the final ritardando spans the beats before the last downbeat...
RITARDANDO_TO = 0.72  # ... slowing to this share of the tempo, where the final chord is held
LOWEST, HIGHEST = 28, 118


@dataclass(frozen=True)
class Performance:
    """A piece's dynamics and tempo map.

    Args:
        tempo: beats per minute asked for.
        bar: steps per bar.
        phrases: (start, end) steps of each phrase, in order; empty for a piece without a plan.
        end: the step of the final downbeat, where the ritardando arrives; None: no ritardando.
        voices: program -> its role's velocity offset (melody, inner, bass).
    """

    tempo: float
    bar: int = DEFAULT_BAR
    phrases: tuple[tuple[int, int], ...] = ()
    end: int | None = None
    voices: dict[int, int] = field(default_factory=dict)

    # --- loudness ---------------------------------------------------------------------------------------

    def velocity(self, step: int, voice: int = 0) -> int:
        """The note-on velocity of a note struck at `step` by an instrument whose role adds `voice`."""
        velocity = BASE + self._accent(step) + self._swell(step) + voice
        return max(LOWEST, min(HIGHEST, round(velocity)))

    def by_channel(self, chans: dict[int, int]) -> dict[int, int]:
        """Each channel's role offset, for events that name channels (program -> channel in `chans`)."""
        return {chan: self.voices.get(program, 0) for program, chan in chans.items()}

    def _accent(self, step: int) -> int:
        at = step % self.bar
        if at == 0:
            return DOWNBEAT
        if self.bar % (2 * STEPS_PER_BEAT) == 0 and self.bar >= 4 * STEPS_PER_BEAT and at == self.bar // 2:
            return MIDBAR
        if self.bar % 12 == 0 and self.bar % 16 != 0 and at % 12 == 0:  # a compound beat (6/8, 9/8)
            return MIDBAR
        return 0 if at % STEPS_PER_BEAT == 0 else OFFBEAT

    def _swell(self, step: int) -> float:
        for start, end in self.phrases:
            if start <= step < end:
                x = (step - start) / max(1, end - start)
                rise = x / PHRASE_PEAK if x < PHRASE_PEAK else (1.0 - x) / (1.0 - PHRASE_PEAK)
                return PHRASE_SWELL * (math.sin(rise * math.pi / 2) - 0.5)
        return 0.0

    # --- time -----------------------------------------------------------------------------------------

    def _beat_factors(self) -> list[tuple[int, float]]:
        """(first step, share of the tempo) of each beat of the ritardando, then of the held end."""
        if self.end is None or self.end <= 0:
            return []
        beats = min(RITARDANDO_BEATS, self.end // STEPS_PER_BEAT)
        first = self.end - beats * STEPS_PER_BEAT
        out = []
        for k in range(beats):
            # Slowing evenly in time per beat, the last beat before the end the slowest but for the end itself.
            out.append((first + k * STEPS_PER_BEAT, 1.0 - (1.0 - RITARDANDO_TO) * (k + 1) / (beats + 1)))
        out.append((self.end, RITARDANDO_TO))
        return out

    def seconds(self, step: float) -> float:
        """Seconds from the piece's start to `step` under the tempo map."""
        per_step = 60.0 / self.tempo / STEPS_PER_BEAT
        elapsed, at, factor = 0.0, 0.0, 1.0
        for start, share in self._beat_factors():
            if step <= start:
                break
            elapsed += (start - at) * per_step / factor
            at, factor = start, share
        return elapsed + (step - at) * per_step / factor

    def tempo_changes(self) -> list[tuple[int, float]]:
        """(step, beats per minute) where the tempo changes, for a MIDI file's set_tempo events."""
        return [(step, self.tempo * share) for step, share in self._beat_factors()]


def flat(tempo: float) -> Performance:
    """A piece played as written: no plan to shape it, every note alike but for the metre of a 4/4 bar."""
    return Performance(tempo)


def performance(
    tempo: float,
    programs: Sequence[int],
    bar: int = DEFAULT_BAR,
    phrases: Sequence[tuple[int, int]] = (),
    end: int | None = None,
) -> Performance:
    """The performance of a piece for `programs`, shaped by its plan's bar, phrases and end."""
    ranged = sorted(
        (p for p in set(programs) if p != DRUMS and p in BY_PROGRAM),
        key=lambda p: (BY_PROGRAM[p].low + BY_PROGRAM[p].high, p),
    )
    voices: dict[int, int] = {}
    if len(ranged) >= 2:
        for rank, program in enumerate(ranged):
            role = BASS if rank == 0 else MELODY if rank == len(ranged) - 1 else INNER
            voices[program] = role
    return Performance(tempo, bar, tuple(phrases), end, voices)


def planned(plan: Plan | None, tempo: float, programs: Sequence[int]) -> Performance:
    """The performance of a piece that follows `plan` (its bar, phrases and final cadence); None: no plan."""
    if plan is None:
        return performance(tempo, programs)
    phrases = [(p.start * plan.bar, (p.start + p.bars) * plan.bar) for p in plan.phrases]
    return performance(tempo, programs, plan.bar, phrases, plan.cadence_times()[-1])


__all__ = ["Performance", "flat", "performance", "planned"]
