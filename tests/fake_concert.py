"""An honest in-memory `ConcertView` for the web side's tests: its state changes only when told, and every
change is pushed to subscribers as the conductor would push it.

    concert = FakeConcert()
    concert.request("ann", "irish", ("flute",))
    concert.start_next(seed=42)          # pops the queue head: "now" and "queue" events
    concert.vote("bob")                  # "votes"
    concert.play_notes([LiveNote(60, 73, 0.0, 0.5)])   # "notes"
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import wave
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import mido
import numpy as np

from bot.web.view import BoardView, ConcertEvent, LiveNote, MetricsView, NowView, Period, PieceView, QueueView
from generator.sampling import PieceRequest

WAV_RATE = 22050
DRUM_CHANNEL = 9


@dataclass
class Request:
    requester: str
    style: str
    instruments: tuple[str, ...]
    seconds: float = 60.0  # the length the queue expects, for ETAs
    replay_seed: int | None = None


@dataclass
class Playing:
    seed: int
    started: float  # clock time the piece started, moved forward by pauses
    paused_at: float | None = None


@dataclass
class FakeConcert:
    clock: Callable[[], float] = time.monotonic
    pieces: dict[int, PieceView] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    playing: Playing | None = None
    notes: dict[int, list[LiveNote]] = field(default_factory=dict)
    voters: dict[int, set[str]] = field(default_factory=dict)
    earlier_votes: dict[Period, Counter[int]] = field(
        default_factory=lambda: {"stream": Counter(), "week": Counter(), "all": Counter()}
    )
    requests_by_style: Counter[str] = field(default_factory=Counter)
    chat_lines: list[tuple[str, str]] = field(default_factory=list)
    lookups: list[int] = field(default_factory=list)  # every seed the web side asked about
    underruns: int = 0
    generation_rtf: float = 0.0
    _subscribers: set[asyncio.Queue[ConcertEvent]] = field(default_factory=set)

    # Driving the concert (what chat and the engine would do)

    def request(
        self,
        requester: str,
        style: str,
        instruments: tuple[str, ...] = ("piano",),
        seconds: float = 60.0,
        replay_seed: int | None = None,
    ) -> None:
        self.requests.append(Request(requester, style, instruments, seconds, replay_seed))
        self.requests_by_style[style] += 1
        self._push("queue")

    def start(
        self,
        seed: int,
        style: str,
        instruments: tuple[str, ...],
        requester: str | None = None,
        tempo: float = 96.0,
        seconds: float = 90.0,
        elapsed: float = 0.0,
        key: str | None = None,
        plan: dict | None = None,
    ) -> PieceView:
        """A piece starts sounding (already `elapsed` seconds in); the one before it is over.

        `plan` is what `bot.concert_view.plan_summary` makes of the piece's plan.
        """
        piece = recipe(seed, style, instruments, requester, tempo, seconds)
        piece = replace(piece, key=key, form=plan["form"] if plan else None, plan=plan)
        self.pieces[seed] = piece
        self.notes[seed] = []
        self.voters[seed] = set()
        self.playing = Playing(seed, self.clock() - elapsed)
        self._push("now")
        return piece

    def start_next(self, seed: int, tempo: float = 96.0) -> PieceView:
        """The queue's head starts playing."""
        head = self.requests.pop(0)
        piece = self.start(seed, head.style, head.instruments, head.requester, tempo, head.seconds)
        self._push("queue")
        return piece

    def finish(self) -> None:
        """The piece playing reaches its end: it is complete, and the concert falls silent."""
        if self.playing is not None:
            seed = self.playing.seed
            self.pieces[seed] = replace(self.pieces[seed], complete=True)
            self.playing = None
            self._push("now")

    def vote(self, user: str) -> bool:
        """`user` votes for the piece playing; False when nothing plays or they already voted."""
        if self.playing is None or user in self.voters[self.playing.seed]:
            return False
        seed = self.playing.seed
        self.voters[seed].add(user)
        self.pieces[seed] = replace(self.pieces[seed], votes=len(self.voters[seed]))
        self._push("votes", {"seed": seed, "votes": len(self.voters[seed])})
        return True

    def play_notes(self, notes: list[LiveNote]) -> None:
        """Notes of the piece playing start to sound."""
        assert self.playing is not None, "no piece is playing"
        self.notes[self.playing.seed].extend(notes)
        self._push("notes", {"seed": self.playing.seed, "notes": list(notes)})

    def add_past_piece(
        self,
        seed: int,
        style: str,
        instruments: tuple[str, ...],
        requester: str | None,
        votes: int,
        period: Period,
    ) -> None:
        """A complete piece from earlier, with `votes` counted in `period` (and the longer periods)."""
        self.pieces[seed] = recipe(seed, style, instruments, requester, created_at=time.time() - 3600)
        self.pieces[seed] = replace(self.pieces[seed], votes=votes, complete=True)
        self.notes[seed] = [LiveNote(60 + i % 12, 0, i * 0.25, 0.25) for i in range(8)]
        periods: tuple[Period, ...] = ("stream", "week", "all")
        for longer in periods[periods.index(period) :]:
            self.earlier_votes[longer][seed] += votes

    # ConcertView

    async def now(self) -> NowView | None:
        if self.playing is None:
            return None
        piece = self.pieces[self.playing.seed]
        elapsed = (self.playing.paused_at or self.clock()) - self.playing.started
        return NowView(
            piece.recipe,
            piece.requester,
            piece.votes,
            elapsed,
            form=piece.form,
            plan=piece.plan,
            title=piece.title,
        )

    async def queue(self) -> list[QueueView]:
        now = await self.now()
        wait = max(0.0, now.recipe.seconds - now.elapsed) if now else 0.0
        views = []
        for position, r in enumerate(self.requests, start=1):
            views.append(QueueView(position, r.requester, r.style, r.instruments, wait, r.replay_seed))
            wait += r.seconds
        return views

    async def leaderboard(self, period: Period, n: int = 10) -> list[BoardView]:
        votes = Counter(self.earlier_votes[period])
        for seed, users in self.voters.items():
            votes[seed] += len(users)
        ranked = sorted((item for item in votes.items() if item[1] > 0), key=lambda item: (-item[1], -item[0]))
        board = []
        for rank, (seed, count) in enumerate(ranked[:n], start=1):
            piece = self.pieces[seed]
            recipe = piece.recipe
            board.append(BoardView(rank, seed, count, recipe, piece.requester))
        return board

    async def piece(self, seed: int) -> PieceView | None:
        self.lookups.append(seed)
        return self.pieces.get(seed)

    async def piece_midi(self, seed: int) -> bytes | None:
        self.lookups.append(seed)
        piece = self.pieces.get(seed)
        if piece is None or not piece.complete:
            return None
        return midi_bytes(self.notes[seed], piece.recipe.tempo)

    async def piece_midi_so_far(self, seed: int) -> bytes | None:
        """The notes played so far of the piece playing, as the real view gives those composed so far."""
        self.lookups.append(seed)
        piece = self.pieces.get(seed)
        if piece is None or piece.complete or self.playing is None or self.playing.seed != seed:
            return None
        return midi_bytes(self.notes[seed], piece.recipe.tempo)

    async def piece_wav(self, seed: int) -> bytes | None:
        self.lookups.append(seed)
        piece = self.pieces.get(seed)
        if piece is None or not piece.complete:
            return None
        return await asyncio.to_thread(wav_bytes, self.notes[seed])

    async def chat(self, user: str, text: str, privileged: bool = False) -> list[str]:
        """A small part of the real command set: !compose <style> [instrument ...], !vote, !np and !skip."""
        self.chat_lines.append((user, text))
        words = text.split()
        if not words:
            return []
        if words[0] == "!skip":
            if not privileged:
                return [f"@{user} !skip is for moderators"]
            await self.skip()
            return [f"@{user} skipped"]
        if words[0] == "!compose" and len(words) >= 2:
            self.request(user, words[1], tuple(words[2:]) or ("piano",))
            return [f"@{user} {words[1]} is number {len(self.requests)} in the queue"]
        if words[0] == "!vote":
            return [f"@{user} thanks for voting" if self.vote(user) else f"@{user} nothing to vote for"]
        if words[0] == "!np":
            now = await self.now()
            return [f"now playing: {now.recipe.style} (seed {now.seed})" if now else "nothing is playing"]
        return []

    async def skip(self) -> None:
        if self.playing is not None:
            self.playing = None
            self._push("now")

    async def pause(self) -> None:
        if self.playing is not None and self.playing.paused_at is None:
            self.playing.paused_at = self.clock()

    async def resume(self) -> None:
        if self.playing is not None and self.playing.paused_at is not None:
            self.playing.started += self.clock() - self.playing.paused_at
            self.playing.paused_at = None

    async def clear(self) -> int:
        removed = len(self.requests)
        self.requests.clear()
        self._push("queue")
        return removed

    def subscribe(self) -> asyncio.Queue[ConcertEvent]:
        queue: asyncio.Queue[ConcertEvent] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ConcertEvent]) -> None:
        self._subscribers.discard(queue)

    def metrics(self) -> MetricsView:
        return MetricsView(
            queue_length=len(self.requests),
            generation_rtf=self.generation_rtf,
            underruns=self.underruns,
            chat_messages=len(self.chat_lines),
            votes=sum(len(users) for users in self.voters.values()),
            requests_by_style=dict(self.requests_by_style),
        )

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _push(self, kind: str, data: dict | None = None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(ConcertEvent(kind, data or {}))


def recipe(
    seed: int,
    style: str,
    instruments: tuple[str, ...],
    requester: str | None,
    tempo: float = 100.0,
    seconds: float = 60.0,
    created_at: float | None = None,
) -> PieceView:
    """A piece just started: no votes, not complete."""
    return PieceView(
        recipe=PieceRequest(style, instruments, tempo, seconds, seed),
        model_version="fake-1",
        requester=requester,
        created_at=time.time() if created_at is None else created_at,
        votes=0,
        complete=False,
    )


def midi_bytes(notes: list[LiveNote], tempo: float) -> bytes:
    """`notes` as a standard MIDI file, one channel per program."""
    ticks_per_beat = 480
    per_second = ticks_per_beat * tempo / 60
    channels: dict[int, int] = {}
    events: list[tuple[int, int, mido.Message]] = []
    for note in notes:
        if note.program not in channels:
            free = [c for c in range(16) if c != DRUM_CHANNEL and c not in channels.values()]
            channels[note.program] = DRUM_CHANNEL if note.program < 0 else free[0]
        channel = channels[note.program]
        start, end = round(note.start * per_second), round((note.start + note.duration) * per_second)
        events.append((start, 1, mido.Message("note_on", channel=channel, note=note.pitch, velocity=80)))
        events.append((end, 0, mido.Message("note_off", channel=channel, note=note.pitch, velocity=0)))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo))])
    for program, channel in channels.items():
        if program >= 0:
            track.append(mido.Message("program_change", channel=channel, program=program))
    last = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(message.copy(time=tick - last))
        last = tick
    out = io.BytesIO()
    mido.MidiFile(ticks_per_beat=ticks_per_beat, tracks=[track]).save(file=out)
    return out.getvalue()


def wav_bytes(notes: list[LiveNote]) -> bytes:
    """`notes` as sine tones in a mono 16-bit WAV, the way a very plain synth would play them."""
    length = max((n.start + n.duration for n in notes), default=0.0) + 0.2
    audio = np.zeros(int(length * WAV_RATE))
    for note in notes:
        first = int(note.start * WAV_RATE)
        t = np.arange(int(note.duration * WAV_RATE)) / WAV_RATE
        hz = 440.0 * 2 ** ((note.pitch - 69) / 12)
        audio[first : first + len(t)] += np.sin(2 * math.pi * hz * t) * np.exp(-3 * t)
    peak = float(np.abs(audio).max()) or 1.0
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(WAV_RATE)
        wav.writeframes((audio / peak * 20000).astype("<i2").tobytes())
    return out.getvalue()
