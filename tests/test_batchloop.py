"""One batched generator for every channel (bot/concert/batchloop.py): each channel's pieces come out of the
shared batch exactly as `concertbot compose` makes them alone, a skipped piece leaves the batch without
touching the others, and a steer under batching lands as it does one piece at a time. The real model, real
FluidSynth engines and, end to end, `concertbot run` with two channels on the embedded Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from chat_rig import viewer
from test_channels import NO_COOLDOWNS, deployment

import generator.batch as batch_module
from bot.app import shares_generator
from bot.concert.batchloop import BatchLoop, SourcedWorker
from bot.concert.live import GenerationWorker, LivePiece
from bot.concert.player import LiveSession
from config import Settings, load_settings
from config.errors import ConfigError
from generator.decode import decode, midi_bytes, to_midi
from generator.model import LoadedModel, load_model
from generator.performance import planned
from generator.recipes import make_request
from generator.sampling import Composer, PieceRequest
from generator.steer import Steering

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model()


@pytest.fixture(scope="module")
def composer(loaded: LoadedModel) -> Composer:
    return Composer(loaded)


def quiet() -> Settings:
    return load_settings(outputs={"device": "off"})


@contextmanager
def channels(loaded: LoadedModel, loop: BatchLoop, *realtime: bool) -> Iterator[list[LiveSession]]:
    """One LiveSession a channel, each fed by `loop`, playing in real time or as fast as it renders."""
    with ExitStack() as stack:
        yield [stack.enter_context(LiveSession(quiet(), loaded, [], rt, source=loop)) for rt in realtime]


def composed_midi(composer: Composer, request: PieceRequest, tokens: list[int]) -> bytes:
    """The MIDI file `concertbot compose` writes for a piece of these tokens."""
    played = planned(composer.plan(request), request.tempo, request.programs())
    return midi_bytes(to_midi(decode(composer.vocab, tokens), request.tempo, played))


def wait_until(ready: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.002)


def finished(*pieces: LivePiece) -> None:
    for piece in pieces:
        assert piece.finished.wait(timeout=180), f"{piece.id} never finished"


def test_the_deployment_shares_one_generator_with_two_channels_or_when_told() -> None:
    def told(batched: str, remote: bool = False) -> Settings:
        return load_settings(generation={"batched": batched, "remote": remote})

    assert [shares_generator(told("auto"), n) for n in (1, 2, 5)] == [False, True, True]
    assert [shares_generator(told("on"), n) for n in (1, 2)] == [True, True]
    assert [shares_generator(told("off"), n) for n in (1, 2)] == [False, False]
    assert not shares_generator(told("on", remote=True), 2)  # remote workers sample every piece


def test_two_channels_in_one_batch_get_the_pieces_compose_makes_alone(
    loaded: LoadedModel, composer: Composer
) -> None:
    requests = [
        make_request(loaded, "bach", seconds=5.0, seed=61, critic=2),  # its critic's candidates: rows too
        make_request(loaded, "irish", seconds=6.0, seed=62, critic=1),
    ]
    alone = [composer.compose(r) for r in requests]
    with BatchLoop(Composer(loaded)) as loop, channels(loaded, loop, False, False) as sessions:
        assert all(isinstance(s.worker, SourcedWorker) for s in sessions)
        pieces = [s.request(f"c{i}", r) for i, (s, r) in enumerate(zip(sessions, requests, strict=True))]
        finished(*pieces)
        assert all(p.complete for p in pieces)  # before the sessions close, which cut what still plays
    for piece, comp, request in zip(pieces, alone, requests, strict=True):
        assert piece.tokens == comp.tokens
        assert composed_midi(composer, request, piece.tokens) == composed_midi(composer, request, comp.tokens)
        assert piece.feed.done and piece.music_seconds > 0  # decoded into the channel's own feed
    assert loop.rows > loop.steps  # some steps sampled both channels' pieces in one pass


def test_a_skipped_piece_leaves_the_batch_and_the_other_channel_plays_on(
    loaded: LoadedModel, composer: Composer
) -> None:
    long = make_request(loaded, "classical", seconds=120.0, seed=63, critic=1)
    short = make_request(loaded, "folk", seconds=6.0, seed=64, critic=1)
    with BatchLoop(Composer(loaded)) as loop, channels(loaded, loop, True, False) as (north, south):
        skipped = north.request("north", long)  # real time: it stays in the batch until skipped
        assert north.wait_for("north", ("start",), timeout=120) is not None
        played = south.request("south", short)
        wait_until(lambda: len(skipped.tokens) >= 40 and len(played.tokens) >= 40)
        north.engine.skip()
        finished(skipped)
        # The loop drops it at its next step: its row's cache slot is free while the other piece goes on.
        wait_until(lambda: loop.pieces <= (0 if played.finished.is_set() else 1))
        finished(played)
        assert played.complete
        wait_until(lambda: loop.pieces == 0)
        assert all(pool.idle for pool in loop.batch._pools)
    assert skipped.feed.cancelled and not skipped.complete and skipped.error is None
    heard = len(skipped.tokens)
    assert heard < 2000  # far from its end: two minutes of music
    assert skipped.tokens == list(itertools.islice(composer.stream(long), heard))
    assert played.tokens == composer.compose(short).tokens


class _Reader(threading.Thread):
    """A channel's generation thread cut down to its reads from the loop: `first` tokens of a piece (all of them
    when None), the rest once `more` is set; what ended them in `error`."""

    def __init__(
        self, loop: BatchLoop, request: PieceRequest, first: int | None = None, steering: Steering | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.loop, self.request, self.first, self.steering = loop, request, first, steering
        self.tokens: list[int] = []
        self.error: BaseException | None = None
        self.more = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            for token in self.loop(self.request, self.steering, lambda: False):
                self.tokens.append(token)
                if len(self.tokens) == self.first:
                    self.more.wait(180)
        except Exception as exc:
            self.error = exc


def _taken(loop: BatchLoop) -> int:
    """Cache slots the loop's pieces hold, over all its pools."""
    return sum(pool._slots - len(pool._free) for pool in loop.batch._pools)


def test_a_failed_step_frees_its_pieces_slots_and_a_piece_it_finished_ends_whole(
    loaded: LoadedModel, composer: Composer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.concert.batchloop")
    held = make_request(loaded, "irish", seconds=6.0, seed=62, critic=1)  # sits the failed step out
    ending = make_request(loaded, "folk", seconds=1.0, seed=70, critic=1)  # its end in the failed step
    culprit = make_request(loaded, "bach", seconds=5.0, seed=72, critic=1)  # its first draw in the failed step
    later = make_request(loaded, "folk", seconds=4.0, seed=71, critic=1)  # joins after it
    alone = {r: composer.compose(r).tokens for r in (held, ending, later)}
    n = len(alone[ending])
    assert n < 30  # never held: its channel reads every token at once
    gate_at, paused, opened = 33 + n - 1, threading.Event(), threading.Event()
    loops: list[BatchLoop] = []
    # No recipe fails a whole step since one row's draw fails only its piece, whatever it raises; what still
    # can is a fault of the batch itself (memory, a kernel), here the batch's draw failing once, in the step
    # after the gate opens: after `ending` has sampled its end, before `culprit` gets its first token.
    fault = RuntimeError("the batch's draw failed")
    armed: list[bool] = []
    draw_all = batch_module._draw_all

    def faulty(drawing: Any) -> None:
        if armed and armed.pop():
            raise fault
        draw_all(drawing)

    monkeypatch.setattr(batch_module, "_draw_all", faulty)

    def clock() -> float:
        # Read on the loop's thread after each step: it waits there once, when `ending` has all but its end,
        # for `culprit` to be queued, so that both are in the next step.
        if loops[0].steps == gate_at and not opened.is_set():
            paused.set()
            opened.wait(120)
            armed.append(True)
        return time.monotonic()

    loops.append(BatchLoop(Composer(loaded), clock=clock))
    with loops[0] as loop:
        b = _Reader(loop, held, first=1)  # one token taken: the loop steps it to 1 + 32 tokens, then holds it
        wait_until(lambda: loop.steps == 33)
        a = _Reader(loop, ending)
        assert paused.wait(120)
        x = _Reader(loop, culprit)
        wait_until(lambda: loop._inbox.qsize() == 1)
        opened.set()
        for reader in (a, x):
            reader.join(120)
        wait_until(lambda: loop.pieces == 1)
        assert _taken(loop) == 1  # only the held piece's: the finished one's and the culprit's are free
        failed = [r for r in caplog.records if "a step of the shared generator failed" in r.getMessage()]
        assert len(failed) == 1 and loop.steps == gate_at  # the step with both failed, and only that one
        assert x.error is fault and x.tokens == []
        assert a.error is None and a.tokens == alone[ending]  # its end came in the failed step: it is whole
        b.more.set()
        b.join(120)
        c = _Reader(loop, later)
        c.join(120)
        wait_until(lambda: loop.pieces == 0)
        assert _taken(loop) == 0 and all(pool.idle for pool in loop.batch._pools)
    assert not armed  # the fault fired, once
    assert b.error is None and b.tokens == alone[held]
    assert c.error is None and c.tokens == alone[later]


def test_a_piece_whose_draw_raises_fails_alone_in_its_step(
    loaded: LoadedModel, composer: Composer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.concert.batchloop")
    good = make_request(loaded, "irish", seconds=4.0, seed=73, critic=1)
    # A recipe read back with no temperature: its draw raises a TypeError (not the RuntimeError of a row with
    # nothing to draw), in the batch's draw and in its own.
    broken = PieceRequest.from_dict(
        {**make_request(loaded, "bach", seconds=4.0, seed=74).to_dict(), "temperature": None}
    )
    opened = threading.Event()

    def clock() -> float:
        opened.wait(120)  # the loop starts once both pieces are queued: they join together, step together
        return time.monotonic()

    with BatchLoop(Composer(loaded), clock=clock) as loop:
        x = _Reader(loop, broken)
        g = _Reader(loop, good)
        wait_until(lambda: loop._inbox.qsize() == 2)
        opened.set()
        for reader in (x, g):
            reader.join(120)
        wait_until(lambda: loop.pieces == 0)
        assert _taken(loop) == 0
    assert isinstance(x.error, TypeError) and x.tokens == []
    assert g.error is None and g.tokens == composer.compose(good).tokens
    assert loop.rows > loop.steps  # both pieces were in its first step
    assert not [r for r in caplog.records if "a step of the shared generator failed" in r.getMessage()]


def test_a_piece_that_cannot_join_fails_alone_and_the_loop_serves_on(
    loaded: LoadedModel, composer: Composer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.concert.batchloop")
    held = make_request(loaded, "irish", seconds=6.0, seed=75, critic=1)  # in the loop as the bad one comes
    beside = make_request(loaded, "folk", seconds=4.0, seed=76, critic=2)  # sampled around it
    later = make_request(loaded, "bach", seconds=4.0, seed=77, critic=1)  # joins after it
    # A recipe as a store or a job may carry it, whose piece cannot even be built: no such style in the model.
    bad = dataclasses.replace(later, style="no-such-style")
    with BatchLoop(Composer(loaded)) as loop:
        a = _Reader(loop, held, first=1)  # stays in the loop, held, until told to read on
        wait_until(lambda: loop.steps >= 33)
        b = _Reader(loop, beside)
        x = _Reader(loop, bad)
        x.join(120)
        assert isinstance(x.error, ConfigError) and "no-such-style" in str(x.error) and x.tokens == []
        assert loop._thread.is_alive() and loop.pieces >= 1  # the held piece is still in
        a.more.set()
        for reader in (a, b):
            reader.join(120)
        c = _Reader(loop, later)
        c.join(120)
        wait_until(lambda: loop.pieces == 0)
        assert _taken(loop) == 0  # the bad piece's slot went back as it failed
    assert a.error is None and a.tokens == composer.compose(held).tokens
    assert b.error is None and b.tokens == composer.compose(beside).tokens
    assert c.error is None and c.tokens == composer.compose(later).tokens
    said = [r for r in caplog.records if "could not join" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None  # logged once, with its traceback
    assert not [r for r in caplog.records if "a step of the shared generator failed" in r.getMessage()]


def test_a_steer_under_batching_lands_as_the_same_steer_does_one_piece_at_a_time(loaded: LoadedModel) -> None:
    request = make_request(loaded, "irish", ["flute", "harp"], tempo=168, seconds=12.0, seed=31, critic=2)
    other = make_request(loaded, "bach", seconds=6.0, seed=65, critic=1)
    with BatchLoop(Composer(loaded)) as loop, channels(loaded, loop, False, False) as (north, south):
        beside = south.request("beside", other)
        steered = north.request("steered", request)
        wait_until(lambda: len(steered.tokens) >= 30)
        steered.steering.ask("add", "violin", asked_at=1.0)  # as a vote that passed in chat does
        finished(steered, beside)
        assert steered.complete
    landed = list(steered.steering.landed)
    assert [e.kind for e in landed] == ["add"] and landed[0].step > 0
    violin = [n for n in decode(loaded.vocab, steered.tokens) if n.program == 40]
    assert violin and min(n.start for n in violin) >= landed[0].step  # it reached the piece, at its bar line
    # The same steer landing at the same step, one piece at a time in a channel's own thread.
    alone = GenerationWorker(Composer(loaded), lookahead_seconds=600.0)
    try:
        again = alone.submit("again", request, steers=landed)
        finished(again)
    finally:
        alone.close()
    assert again.tokens == steered.tokens and again.steering.landed == landed


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_concertbot_run_feeds_both_channels_from_one_batch(tmp_path: Path, composer: Composer) -> None:
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        sampling={"seconds": 5.0},
        generation={"batched": "auto"},  # the default, whatever the environment says
        concert={"autoplay": False, "http_port": 0, **NO_COOLDOWNS},
        outputs={"device": "off"},
        channels=[{"name": "north"}, {"name": "south", "sampling": {"critic": 1}}],
    )
    async with deployment(settings, "concertbot") as running:
        north, south = running["north"], running["south"]
        workers = [c.session.worker for c in (north, south)]
        assert all(isinstance(w, SourcedWorker) for w in workers)
        shared = [w.source for w in workers if isinstance(w, SourcedWorker)]
        assert isinstance(shared[0], BatchLoop) and shared[0] is shared[1]
        await north.chat(viewer("ada", "!compose bach violin cello"))
        await south.chat(viewer("bob", "!compose irish flute"))
        slots = []
        for concert in (north, south):
            async with asyncio.timeout(90):
                while concert.conductor.current is None:
                    await asyncio.sleep(0.05)
            slots.append(concert.conductor.current)
        for slot in slots:
            assert await asyncio.to_thread(slot.live.finished.wait, 120)
            assert slot.live.complete
    for slot in slots:
        assert slot.live.tokens == composer.compose(slot.record.recipe).tokens
    assert [s.record.recipe.critic for s in slots] == [settings.sampling.critic, 1]
