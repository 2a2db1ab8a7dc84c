"""Token ids -> timed MIDI events, incrementally, for a piece that is played while it is being sampled.

Each batch carries a watermark: every event earlier than `until` has been handed over, so the player may
render up to that time and no further. Events come out in exactly the order and at exactly the times of
`decode.timed_messages` for the same notes, which is what makes a live piece equal its offline render.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import mido

from generator.decode import (
    NoteDecoder,
    NoteEvent,
    channels,
    program_changes,
    timed_message,
)
from generator.instruments import DRUMS
from generator.performance import Performance, flat
from generator.vocab import Vocab

TimedMessage = tuple[float, mido.Message]


class EventBatch(NamedTuple):
    """Events in time order, all earlier than `until` (seconds); `done` marks the piece's last batch."""

    until: float
    events: list[TimedMessage]
    done: bool


def piece_events(
    vocab: Vocab,
    tokens: Iterable[int],
    tempo: float,
    programs: Sequence[int],
    performance: Performance | None = None,
    sounds: Mapping[int, int] | None = None,
) -> Iterator[EventBatch]:
    """Batches of timed events as tokens arrive; the last has `done` set and ends at the last note-off.

    Args:
        vocab: the vocabulary the tokens come from.
        tokens: music tokens (no prefix), typically straight from `Composer.stream`.
        tempo: beats per minute.
        programs: the instruments the piece may use, each given its channel up front as the offline render
            does; a program outside them still plays, on the next free channel.
        performance: its dynamics and tempo map (generator.performance); None plays the notes as written.
        sounds: the program each part is heard as, where it is not its own (`PieceRequest.sound_programs`).
    """
    chans = channels(programs)
    played = performance or flat(tempo)
    yield EventBatch(0.0, program_changes(chans, sounds), False)
    decoder = NoteDecoder(vocab)
    pending: list[NoteEvent] = []  # a heap: it pops in the order the offline render sorts into
    committed = 0
    for token in tokens:
        note = decoder.feed(int(token))
        if note is not None:
            late: list[TimedMessage] = []
            if note.program not in chans:
                chans[note.program] = _free_channel(chans, note.program)
                if note.program != DRUMS:
                    late = [(played.seconds(note.start), _program_change(chans, note.program))]
            chan = chans[note.program]
            heapq.heappush(pending, (note.start, 1, chan, note.pitch))
            heapq.heappush(pending, (note.end(), 0, chan, note.pitch))
            if late:
                yield EventBatch(played.seconds(note.start), late, False)
        if decoder.time > committed:
            # A note still to come starts at decoder.time or later, so everything before it is final.
            committed = decoder.time
            yield EventBatch(played.seconds(committed), _pop_before(pending, committed, played, chans), False)
    end = max((step for step, *_ in pending), default=committed)
    yield EventBatch(played.seconds(end), _pop_before(pending, end + 1, played, chans), True)


def _pop_before(
    pending: list[NoteEvent], step: int, played: Performance, chans: dict[int, int]
) -> list[TimedMessage]:
    out = []
    while pending and pending[0][0] < step:
        out.append(timed_message(heapq.heappop(pending), played, played.by_channel(chans)))
    return out


def _free_channel(chans: dict[int, int], program: int) -> int:
    # Channels already given keep their programs; a newcomer takes the first unused one (or shares, past 15).
    if program == DRUMS:
        return 9
    used = set(chans.values())
    free = [c for c in range(16) if c != 9 and c not in used]
    return free[0] if free else [c for c in range(16) if c != 9][len(chans) % 15]


def _program_change(chans: dict[int, int], program: int) -> mido.Message:
    return mido.Message("program_change", channel=chans[program], program=program)
