"""The running concert as the web side sees it: `ConcertView` over the conductor, the store and the engine.

A small publisher task turns changes into `ConcertEvent`s (what plays, the queue, votes, the notes about to
sound) for every open overlay, checking twice a second so that a change shows within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import mido

from bot.chat.message import ChatMessage
from bot.concert.conductor import Slot
from bot.state.outage import FailureLog, stop_if_cancelled
from bot.web.data import now_fields
from bot.web.view import BoardView, ConcertEvent, LiveNote, MetricsView, NowView, Period, PieceView, QueueView
from generator.decode import STEPS_PER_BEAT, NoteDecoder, decode, midi_bytes, timed_messages, to_midi
from generator.plan import Plan
from synth.loudness import leveler_for
from synth.render import FluidSynthRenderer, write_wav

if TYPE_CHECKING:
    from bot.app import Concert
    from bot.concert.conductor import Slot
    from bot.state.store import PieceRecord
    from generator.decode import Note

log = logging.getLogger(__name__)

PUBLISH_EVERY = 0.5  # seconds
RETRY_MAX = 5.0  # seconds between tries at most while updates fail: back within that long of Redis
ROLL_AHEAD = 1.0  # seconds of notes sent ahead of the sound, so the roll draws them as they start
WAV_CACHE = 8


def plan_summary(plan: Plan, tempo: float) -> dict[str, Any]:
    """What the piece page and the overlay show of a plan at `tempo`: bars, sections, each phrase's cadence.

    Sections and phrases start and last whole bars; `cadence` is the root a phrase comes to rest on, in
    semitones above the tonic, and `cadence_at` the seconds from the piece's start to its downbeat.
    """
    step = 60.0 / tempo / STEPS_PER_BEAT
    return {
        "form": plan.form,
        "bars": plan.bars,
        "metre": metre(plan.bar),
        "bar_seconds": round(plan.bar * step, 6),
        "sections": [{"label": s.label, "start": s.start, "bars": s.bars} for s in plan.sections],
        "phrases": [
            {"start": p.start, "bars": p.bars, "cadence": p.cadence, "cadence_at": round(at * step, 3)}
            for p, at in zip(plan.phrases, plan.cadence_times(), strict=True)
        ],
    }


def metre(bar: int) -> str:
    """A bar of `bar` steps as a time signature in the longest note value that divides it: 16 -> "2/4"."""
    for value, steps in ((4, STEPS_PER_BEAT), (8, STEPS_PER_BEAT // 2), (16, STEPS_PER_BEAT // 4)):
        if bar % steps == 0:
            return f"{bar // steps}/{value}"
    return f"{bar}/32"


class LiveConcertView:
    """Implements `bot.web.view.ConcertView` for a running `Concert`."""

    def __init__(self, concert: Concert) -> None:
        self.concert = concert
        self._subscribers: set[asyncio.Queue[ConcertEvent]] = set()
        self._wavs: dict[int, bytes] = {}
        self._roll: tuple[int, NoteDecoder, int, float] | None = None  # seed, decoder, tokens read, sent until
        self._chat_count = 0
        self._queue_length = 0

    # Reading.

    async def now(self) -> NowView | None:
        slot = self.concert.conductor.current
        if slot is None:
            return None
        r = slot.record
        plan = self.concert.conductor.plan_of(r)
        return NowView(
            recipe=r.recipe,
            requester=slot.request.login if slot.request else None,
            votes=await self.concert.store.votes(r.seed),
            elapsed=round(self.concert.conductor.elapsed(), 1),
            paused=self.concert.session.engine.paused,
            form=plan.form if plan else None,
            plan=plan_summary(plan, r.recipe.tempo) if plan else None,
            title=self.concert.conductor.title_of(r),
            **self._steering(slot),
        )

    def _steering(self, slot: Slot) -> dict[str, Any]:
        """The open steering votes (closing at unix times, stable from one update to the next) and the steers
        that passed: when each landed, in seconds of the piece, or None while it is on its way."""
        conductor = self.concert.conductor
        mono, wall = conductor.clock(), conductor.wall()
        votes = tuple(
            {
                "steer": v.said(),
                "votes": v.votes,
                "needed": v.needed,
                "closes_at": round(wall + v.closes_at - mono, 1),
            }
            for v in conductor.open_steer_votes(mono)
        )
        played = conductor.performance_of(slot.record)
        steering = slot.live.steering
        landed = [{"steer": e.said(), "at": round(played.seconds(e.step), 2)} for e in list(steering.landed)]
        coming = [{"steer": said, "at": None} for said in steering.coming()]
        return {"steer_votes": votes, "steers": tuple(landed + coming)}

    async def queue(self) -> list[QueueView]:
        entries = await self.concert.store.queue()
        etas = self.concert.conductor.queue_eta(len(entries))
        # Read after the store, with no wait in between: a request the conductor takes meanwhile is in `next`.
        return self._next_up() + [
            QueueView(
                position=e.position,
                requester=e.request.login,
                style=e.request.style,
                instruments=tuple(e.request.instruments),
                eta_seconds=round(eta),
                replay_seed=e.request.seed,
            )
            for e, eta in zip(entries, etas, strict=True)
        ]

    def _next_up(self) -> list[QueueView]:
        """The piece the conductor has taken from the queue but not yet started, as position 0 (or nothing).

        A request leaves the store's queue when the conductor takes it, seconds before it plays: read from the
        store alone, the overlay said "Nothing queued" meanwhile, and "The stage is quiet" between two pieces.
        """
        c = self.concert.conductor
        slot = c.upcoming
        if slot is not None and slot.started is None:
            e = self.concert.settings.engine
            now = c.current.record.recipe if c.current else None
            left = now.seconds - c.elapsed() + e.tail_seconds + e.gap_seconds if now else 0.0
            request = slot.request
            return [
                QueueView(
                    position=0,
                    requester=request.login if request else "",  # "" when the bot chose it
                    style=slot.record.recipe.style,
                    instruments=tuple(slot.record.recipe.instruments),
                    eta_seconds=round(max(0.0, left)),
                    replay_seed=request.seed if request else None,
                )
            ]
        if c.preparing is not None:
            r = c.preparing
            return [QueueView(0, r.login, r.style, tuple(r.instruments), 0, r.seed)]
        return []

    async def leaderboard(self, period: Period, n: int = 10) -> list[BoardView]:
        c = self.concert
        rows = await c.store.top(period, c.conductor.stream_id, c.conductor.wall(), n)
        out = []
        for rank, entry in enumerate(rows, 1):
            record = await c.store.load_piece(entry.seed)
            out.append(
                BoardView(
                    rank,
                    entry.seed,
                    entry.votes,
                    record.recipe if record else None,
                    (record.requester or None) if record else None,
                )
            )
        return out

    async def piece(self, seed: int) -> PieceView | None:
        record = await self.concert.store.load_piece(seed)
        if record is None:
            return None
        plan = self.concert.conductor.plan_of(record)
        played = self.concert.conductor.performance_of(record)
        return PieceView(
            recipe=record.recipe,
            model_version=record.model_version,
            requester=record.requester or None,
            created_at=record.created_at,
            votes=await self.concert.store.votes(seed),
            complete=bool(record.tokens),
            key=self.concert.conductor.key_of(record),
            form=plan.form if plan else None,
            plan=plan_summary(plan, record.recipe.tempo) if plan else None,
            title=self.concert.conductor.title_of(record),  # one made before titles: the one its seed draws
            steers=tuple(
                {"steer": e.said(), "bar": e.bar, "at": round(played.seconds(e.step), 2)} for e in record.steers
            ),
        )

    async def piece_midi(self, seed: int) -> bytes | None:
        record = await self.concert.store.load_piece(seed)
        if record is None or not record.tokens:
            return None
        performance = self.concert.conductor.performance_of(record)
        recipe = record.recipe
        return midi_bytes(to_midi(self._notes(record), recipe.tempo, performance, recipe.sound_programs()))

    async def piece_midi_so_far(self, seed: int) -> bytes | None:
        conductor = self.concert.conductor
        slot = next((s for s in (conductor.current, conductor.upcoming) if s and s.record.seed == seed), None)
        if slot is None:
            return None
        # A copy: the generation thread appends to the list while this decodes it.
        notes = decode(conductor.loaded.vocab, list(slot.live.tokens))
        recipe = slot.record.recipe
        midi = to_midi(notes, recipe.tempo, conductor.performance_of(slot.record), recipe.sound_programs())
        # Marked inside the file too, so a saved copy still says it is not the whole piece.
        text = f"partial: the first {len(notes)} notes of piece {seed}, composed so far"
        midi.tracks[0].insert(0, mido.MetaMessage("marker", text=text, time=0))
        return midi_bytes(midi)

    async def piece_wav(self, seed: int) -> bytes | None:
        if seed in self._wavs:
            return self._wavs[seed]
        record = await self.concert.store.load_piece(seed)
        if record is None or not record.tokens:
            return None
        wav = await asyncio.to_thread(self._render, record)  # seconds of synth work: never on the loop
        self._wavs[seed] = wav
        while len(self._wavs) > WAV_CACHE:
            self._wavs.pop(next(iter(self._wavs)))
        return wav

    def _notes(self, record: PieceRecord) -> list[Note]:
        return decode(self.concert.conductor.loaded.vocab, record.tokens)

    def _render(self, record: PieceRecord) -> bytes:
        settings = self.concert.settings
        with FluidSynthRenderer.from_settings(settings.synth) as renderer:
            programs = record.recipe.programs()
            played = self.concert.conductor.performance_of(record)
            # Levelled as the stream is: the download sounds as loud as the piece did live.
            leveler = leveler_for(settings.loudness, settings.synth.sample_rate)
            audio = renderer.render(
                timed_messages(
                    self._notes(record), record.recipe.tempo, programs, played, record.recipe.sound_programs()
                ),
                leveler=leveler,
            )
        out = io.BytesIO()
        write_wav(out, audio, settings.synth.sample_rate)
        return out.getvalue()

    # Steering.

    async def chat(self, user: str, text: str, privileged: bool = False) -> list[str]:
        self._chat_count += 1
        msg = ChatMessage(
            user_id=f"local:{user.lower()}",
            login=user.lower(),
            display_name=user,
            text=text,
            message_id=f"web-{self._chat_count}",
            is_broadcaster=privileged,  # the web checked the admin token; a name alone proves nothing
        )
        replies = await self.concert.chat(msg)
        return [f"@{r.mention} {r.text}" if r.mention else r.text for r in replies]

    async def skip(self) -> None:
        self.concert.conductor.skip()

    async def pause(self) -> None:
        await self.concert.conductor.pause()

    async def resume(self) -> None:
        await self.concert.conductor.resume()

    async def clear(self) -> int:
        return await self.concert.store.clear_queue()

    def metrics(self) -> MetricsView:
        c = self.concert
        slot = c.conductor.current or c.conductor.last
        return MetricsView(
            queue_length=self._queue_length,
            generation_rtf=round(slot.live.generation_rtf, 2) if slot else 0.0,
            underruns=c.session.engine.stats.underruns,
            chat_messages=c.commands.messages,
            votes=c.commands.votes,
            requests_by_style=dict(c.commands.requests_by_style),
        )

    # Pushing.

    def subscribe(self) -> asyncio.Queue[ConcertEvent]:
        q: asyncio.Queue[ConcertEvent] = asyncio.Queue(maxsize=256)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, queue: asyncio.Queue[ConcertEvent]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page misses updates, nobody else does
                q.put_nowait(ConcertEvent(kind, data))

    async def publish_forever(self) -> None:
        """Push what changed to the overlays; runs as one task for the whole concert.

        A Redis outage pauses the updates (one warning when it starts, one line when it ends) and they retry
        with a growing wait, up to `RETRY_MAX`; any other failure is logged with its traceback, once per run
        of failures, and the updates go on.
        """
        last: dict[str, object] = {}
        said = FailureLog(log, "overlay updates")
        wait = PUBLISH_EVERY
        while True:
            stop_if_cancelled()  # a cancel that a Redis read swallowed still stops the updates
            try:
                await self._publish_changes(last)
            except Exception as exc:
                said.failed(exc)
                wait = min(wait * 2, RETRY_MAX)
            else:
                said.worked()
                wait = PUBLISH_EVERY
            await asyncio.sleep(wait)

    async def _publish_changes(self, last: dict[str, object]) -> None:
        """One round of `publish_forever`: publish what differs from `last` (and update it)."""
        now = await self.now()
        queue = await self.queue()
        self._queue_length = sum(1 for q in queue if q.position > 0)  # waiting, not the one being composed
        # Elapsed time and waits tick on their own in the page; a change of anything else is news.
        steady: dict[str, object] = {
            "now": None if now is None else now_fields(now) | {"elapsed": None},
            "queue": [asdict(q) | {"eta_seconds": None} for q in queue],
            "votes": None if now is None else (now.seed, now.votes),
        }
        news: dict[str, dict[str, Any]] = {
            "now": {"now": None if now is None else now_fields(now)},
            "queue": {"queue": [asdict(q) for q in queue]},
            "votes": {} if now is None else {"seed": now.seed, "votes": now.votes},
        }
        for kind, value in steady.items():
            if value != last.get(kind):
                self._publish(kind, news[kind])
                last[kind] = value
        if self.concert.conductor.current is not None:
            notes = self._upcoming_notes(self.concert.conductor.current)
            if notes:
                seed = self.concert.conductor.current.record.seed
                self._publish("notes", {"seed": seed, "notes": [asdict(n) for n in notes]})

    def _upcoming_notes(self, slot: Slot) -> list[LiveNote]:
        """Notes of the playing piece that start before `elapsed + ROLL_AHEAD` and were not sent yet."""
        seed = slot.record.seed
        if self._roll is None or self._roll[0] != seed:
            self._roll = (seed, NoteDecoder(self.concert.conductor.loaded.vocab), 0, 0.0)
        _, decoder, read, _ = self._roll
        tokens = slot.live.tokens
        seconds_per_step = 60.0 / slot.record.recipe.tempo / STEPS_PER_BEAT
        horizon = self.concert.conductor.elapsed() + ROLL_AHEAD
        out = []
        while read < len(tokens) and decoder.time * seconds_per_step < horizon:
            note = decoder.feed(tokens[read])
            read += 1
            if note is not None:
                out.append(
                    LiveNote(
                        note.pitch,
                        note.program,
                        note.start * seconds_per_step,
                        note.duration * seconds_per_step,
                    )
                )
        self._roll = (seed, decoder, read, horizon)
        return out
