"""What the web side may ask of the running concert, and the plain data it gets back.

The conductor implements `ConcertView`; the web app (overlay, pages, API, metrics) only ever talks to this
protocol, so it never touches Redis, the engine or the model directly. Any method that reads the concert's
records may raise `bot.state.store.StoreUnavailable` while Redis does not answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # only named in annotations: the web side's types stay free of torch and the model
    from generator.sampling import PieceRequest

Period = Literal["stream", "week", "all"]


@dataclass(frozen=True)
class NowView:
    recipe: PieceRequest  # the piece as it was composed: its seed, style, instruments, tempo, length ...
    requester: str | None  # login; None when the bot chose the piece itself
    votes: int
    elapsed: float  # seconds of the piece played so far
    paused: bool = False
    form: str | None = None  # its sections as a listener names them, "A A B B"; None without a plan
    # `bot.concert_view.plan_summary`: its bars, sections and cadences in seconds
    plan: dict[str, Any] | None = None
    title: str | None = None  # the piece's name (generator.titles); None when it has none
    # Chat steering it (generator.steer): open votes {"steer": "!faster", "votes", "needed", "closes_at": unix
    # seconds}, and steers that passed {"steer": "!add harp", "at": seconds into the piece, None until it lands}
    steer_votes: tuple[dict[str, Any], ...] = ()
    steers: tuple[dict[str, Any], ...] = ()

    @property
    def seed(self) -> int:
        return self.recipe.seed


@dataclass(frozen=True)
class QueueView:
    position: int  # 1 plays next; 0 is the piece the conductor is composing to play next
    requester: str  # login; "" for a piece the bot chose itself (only ever at position 0)
    style: str
    instruments: tuple[str, ...]
    eta_seconds: float  # estimated wait until it starts
    replay_seed: int | None = None  # set when the request is a !replay


@dataclass(frozen=True)
class BoardView:
    rank: int
    seed: int
    votes: int
    recipe: PieceRequest | None  # as stored with the piece; None for a voted seed whose piece is gone
    requester: str | None


@dataclass(frozen=True)
class PieceView:
    recipe: PieceRequest  # as stored with the piece
    model_version: str
    requester: str | None
    created_at: float  # unix time
    votes: int
    complete: bool  # False while the piece is still being generated
    # The key it is in: the one asked for or the one its seed chose (the recipe's is None then); None for a
    # keyless model
    key: str | None = None
    form: str | None = None  # as in NowView
    plan: dict[str, Any] | None = None  # as in NowView
    title: str | None = None  # the piece's name, when its record has one
    # What chat changed while it played: {"steer": "!add harp", "bar": 5 (from 0), "at": seconds into it}
    steers: tuple[dict[str, Any], ...] = ()

    @property
    def seed(self) -> int:
        return self.recipe.seed


@dataclass(frozen=True)
class LiveNote:
    """A note as it sounds, for the overlay's piano roll."""

    pitch: int
    program: int
    start: float  # seconds into the piece
    duration: float


@dataclass(frozen=True)
class ConcertEvent:
    """Pushed to every overlay: kind is "now" (a piece started or ended), "queue", "votes" or "notes"."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsView:
    queue_length: int
    generation_rtf: float  # of the piece playing or last played
    underruns: int
    chat_messages: int
    votes: int
    requests_by_style: dict[str, int]


class ConcertView(Protocol):
    async def now(self) -> NowView | None: ...

    async def queue(self) -> list[QueueView]: ...

    async def leaderboard(self, period: Period, n: int = 10) -> list[BoardView]: ...

    async def piece(self, seed: int) -> PieceView | None: ...

    async def piece_midi(self, seed: int) -> bytes | None:
        """The piece as a standard MIDI file; None if there is no such piece (or it is not complete)."""
        ...

    async def piece_midi_so_far(self, seed: int) -> bytes | None:
        """The notes composed so far of a piece still being composed, as a MIDI file marked partial (a marker
        event); None when the piece is not being composed now."""
        ...

    async def piece_wav(self, seed: int) -> bytes | None:
        """The piece rendered to WAV (slow: the implementation renders off the event loop and caches)."""
        ...

    async def chat(self, user: str, text: str, privileged: bool = False) -> list[str]:
        """A line from the local web chat box, through the same command path as Twitch; returns the replies.

        `privileged` speaks as the broadcaster (moderator commands allowed); otherwise as a plain viewer.
        """
        ...

    async def skip(self) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def clear(self) -> int: ...

    def subscribe(self) -> asyncio.Queue[ConcertEvent]:
        """A queue that receives every ConcertEvent from now on; pass it to `unsubscribe` when done."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[ConcertEvent]) -> None: ...

    def metrics(self) -> MetricsView: ...
