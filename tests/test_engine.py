"""The live engine against real FluidSynth: exact offsets, live equals offline, skip, pause, failing outputs,
a slow generator, and flat memory through the look-ahead."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile

from bot.concert.live import GenerationWorker
from generator.decode import timed_messages
from generator.events import piece_events
from generator.model import load_model
from generator.performance import planned
from generator.sampling import Composer, PieceRequest
from synth.engine import EngineEvent, LiveEngine
from synth.feed import EventFeed, FeedCancelled
from synth.outputs import FileSink, wait_until
from synth.render import FluidSynthRenderer
from synth.soundfonts import find_soundfont

RATE = 44100
BLOCK = 512
DITHER = 50  # |sample| of FluidSynth's dither stays below this; any sounding note goes far above it


class MemorySink:
    """An output that keeps every block it is given, with the time it arrived."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.blocks: list[np.ndarray] = []

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, block: np.ndarray) -> None:
        self.blocks.append(block.copy())

    def close(self) -> None:
        pass

    def audio(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 2), np.int16)


class BrokenSink(MemorySink):
    """Fails to open `fail_opens` times, then works."""

    def __init__(self, fail_opens: int) -> None:
        super().__init__("broken")
        self.fail_opens = fail_opens
        self.opens = 0

    def open(self, sample_rate: int) -> None:
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise OSError("device unplugged")


@pytest.fixture(scope="module")
def composer(tiny_model) -> Composer:
    return Composer(load_model(tiny_model / "best"))


@pytest.fixture
def renderer() -> Iterator[FluidSynthRenderer]:
    with FluidSynthRenderer(find_soundfont(None), sample_rate=RATE) as r:
        yield r


def note_feed(notes: list[tuple[float, float, int]], lookahead: float = 60.0) -> EventFeed:
    """A whole piece put at once: (start s, end s, pitch) on a piano."""
    feed = EventFeed(lookahead)
    events = [(0.0, mido.Message("program_change", channel=0, program=0))]
    for start, end, pitch in notes:
        events.append((start, mido.Message("note_on", channel=0, note=pitch, velocity=80)))
        events.append((end, mido.Message("note_off", channel=0, note=pitch, velocity=0)))
    events.sort(key=lambda e: e[0])
    feed.put(max(e for _, e, _ in notes), events, done=True)
    return feed


def engine(renderer, sinks, events: list[EngineEvent], **kw) -> LiveEngine:
    kw.setdefault("block_frames", BLOCK)
    kw.setdefault("tail_seconds", 0.5)
    kw.setdefault("gap_seconds", 0.1)
    return LiveEngine(renderer, sinks, on_event=events.append, **kw)


def first(events: list[EngineEvent], kind: str) -> EngineEvent:
    return next(e for e in events if e.kind == kind)


def test_live_events_equal_the_offline_timing_of_the_same_seed(composer):
    request = PieceRequest("bach", ("violin", "cello"), 100.0, 15.0, seed=11)
    offline = composer.compose(request)
    # Played as its plan shapes it (accents, swells, the final ritardando), live and offline alike.
    played = planned(offline.plan, request.tempo, request.programs())
    stream = composer.stream(request)
    batches = list(piece_events(composer.vocab, stream, request.tempo, request.programs(), played))
    live = [e for b in batches for e in b.events]
    expected = list(timed_messages(offline.notes, request.tempo, request.programs(), played))
    assert [(t, m.bytes()) for t, m in live] == [(t, m.bytes()) for t, m in expected]
    # Watermarks only move forward, and every event lands before its own batch's watermark.
    previous = 0.0
    for batch in batches:
        assert batch.until >= previous
        assert all(previous <= t <= batch.until for t, _ in batch.events)
        previous = batch.until
    assert batches[-1].done and not any(b.done for b in batches[:-1])


def test_live_playback_equals_the_offline_render_sample_for_sample(renderer):
    # Onsets that fall inside blocks, on a block's edge and across the start: the real-time path splits
    # each block at every event, and the result must still be the offline render, frame for frame.
    notes = [(0.0, 0.4, 60), (BLOCK / RATE, 0.5, 64), (0.7, 0.71, 67), (1.2345, 1.5, 72), (1.2345, 2.0, 48)]
    with FluidSynthRenderer(find_soundfont(None), sample_rate=RATE) as other:
        feed = note_feed(notes)
        offline = other.render(list(feed._events), tail_seconds=0.5)
    sink, events = MemorySink(), []
    with engine(renderer, [sink], events, realtime=True) as eng:
        eng.play("p", note_feed(notes))
        assert wait_until(lambda: any(e.kind == "end" for e in events), 10)
        assert eng.wait_idle(5)
    start = first(events, "start").frame
    assert first(events, "start").at == eng.due(start)
    assert start % BLOCK == 0
    audio = sink.audio()
    assert np.abs(audio[:start]).max() < DITHER
    assert np.array_equal(audio[start : start + len(offline)], offline)
    end = first(events, "end")
    assert end.frame == start + round(2.0 * RATE)


def test_a_piece_through_the_engine_into_a_file_equals_its_offline_render(composer, renderer, tmp_path: Path):
    request = PieceRequest("irish", ("flute", "harp"), 120.0, 8.0, seed=3)
    offline_piece = composer.compose(request)
    offline_notes = offline_piece.notes
    played = planned(offline_piece.plan, request.tempo, request.programs())  # as the live worker plays it
    with FluidSynthRenderer(find_soundfont(None), sample_rate=RATE) as other:
        offline = other.render(
            timed_messages(offline_notes, request.tempo, request.programs(), played), tail_seconds=0.5
        )
    events: list[EngineEvent] = []
    worker = GenerationWorker(composer, lookahead_seconds=2.0)
    path = tmp_path / "concert.wav"
    with engine(renderer, [FileSink(path)], events, realtime=False) as eng:
        piece = worker.submit("p", request)
        eng.play("p", piece.feed)
        assert wait_until(lambda: any(e.kind == "end" for e in events), 60)
        assert eng.wait_idle(10)
    worker.close()
    recorded, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE
    starts = [s for s in range(0, 20 * BLOCK, BLOCK) if np.array_equal(recorded[s : s + 256], offline[:256])]
    assert starts, "the piece's first frames are nowhere in the recording"
    assert np.array_equal(recorded[starts[0] : starts[0] + len(offline)], offline)
    assert piece.tokens == composer.compose(request).tokens


def test_skip_is_silent_within_one_block_and_leaves_no_voice(renderer):
    sink, events = MemorySink(), []
    with engine(renderer, [sink], events, realtime=True) as eng:
        # Long held chords: without a skip they would sound for 20 s.
        eng.play("long", note_feed([(0.0, 20.0, p) for p in (48, 55, 64, 67)]))
        assert wait_until(lambda: any(e.kind == "start" for e in events), 5)
        time.sleep(0.3)
        eng.skip()
        assert wait_until(lambda: any(e.kind == "skip" for e in events), 2)
        time.sleep(0.3)
        voices = renderer.active_voices()
    skip_frame = first(events, "skip").frame
    audio = np.abs(sink.audio()).max(axis=1)
    assert audio[skip_frame - BLOCK : skip_frame].max() > 10 * DITHER  # it was playing
    after = audio[skip_frame + BLOCK : skip_frame + BLOCK + RATE // 4]
    assert len(after) > 0 and after.max() < DITHER  # one block later: silence
    assert voices == 0


def test_pause_silences_at_once_and_resume_finishes_the_piece(renderer):
    sink, events = MemorySink(), []
    with engine(renderer, [sink], events, realtime=True) as eng:
        eng.play("p", note_feed([(t * 0.2, t * 0.2 + 0.15, 60 + t) for t in range(6)]))
        assert wait_until(lambda: any(e.kind == "start" for e in events), 5)
        time.sleep(0.2)
        eng.pause()
        time.sleep(0.1)
        paused_at = len(sink.blocks)
        time.sleep(0.5)
        during = np.abs(np.concatenate(sink.blocks[paused_at:])).max()
        eng.resume()
        assert wait_until(lambda: any(e.kind == "end" for e in events), 5)
    assert during < DITHER
    assert not any(e.kind == "skip" for e in events)


def test_a_failing_output_does_not_stop_the_others(renderer):
    good, flaky, events = MemorySink(), BrokenSink(fail_opens=1), []
    dead = BrokenSink(fail_opens=10**6)
    with engine(renderer, [dead, flaky, good], events, realtime=True, sink_backoff=(0.05, 0.1)) as eng:
        eng.play("p", note_feed([(0.1 * i, 0.1 * i + 0.3, 60 + i) for i in range(8)]))
        assert wait_until(lambda: any(e.kind == "end" for e in events), 5)
        time.sleep(0.3)
        runners = {r.sink.name: r for r in eng.runners}
        assert wait_until(lambda: runners["memory"].stats.written_frames > 0, 2)
    assert runners["broken"].stats.failures >= 1
    assert dead.opens >= 2 and not dead.blocks  # reported and retried, never written to
    assert flaky.opens == 2 and flaky.blocks  # came back after one failure
    assert np.abs(good.audio()).max() > 10 * DITHER
    assert runners["memory"].stats.failures == 0


def test_a_slow_generator_gives_counted_underruns_and_no_crash(renderer):
    sink, events = MemorySink(), []
    feed = EventFeed(lookahead_seconds=4.0)

    def slow_producer() -> None:
        # 0.1 s of music every 0.2 s: half real time, so playback must wait again and again.
        try:
            feed.put(0.0, [(0.0, mido.Message("program_change", channel=0, program=0))])
            for i in range(10):
                t = i * 0.1
                notes = [
                    (t, mido.Message("note_on", channel=0, note=60 + i, velocity=80)),
                    (t + 0.09, mido.Message("note_off", channel=0, note=60 + i, velocity=0)),
                ]
                time.sleep(0.2)
                feed.put(t + 0.1, notes, done=i == 9)
        except FeedCancelled:
            pass

    producer = threading.Thread(target=slow_producer)
    with engine(renderer, [sink], events, realtime=True, prebuffer_seconds=0.05) as eng:
        producer.start()
        eng.play("slow", feed)
        assert wait_until(lambda: any(e.kind == "end" for e in events), 10)
        assert eng.stats.underruns >= 3
        assert eng.stats.underrun_seconds > 0.3
    producer.join()
    underruns = [e for e in events if e.kind == "underrun"]
    assert len(underruns) == eng.stats.underruns
    assert all(e.length > 0 for e in underruns)


def test_generation_waits_for_playback_so_memory_stays_flat(renderer):
    sink, events = MemorySink(), []
    feed = EventFeed(lookahead_seconds=0.5)
    ahead: list[float] = []

    def fast_producer() -> None:
        # A minute of music that could be produced at once; the feed must hold it back to the look-ahead.
        try:
            for i in range(600):
                t = i * 0.1
                msg_on = mido.Message("note_on", channel=0, note=60 + i % 12, velocity=80)
                msg_off = mido.Message("note_off", channel=0, note=60 + i % 12, velocity=0)
                feed.put(t + 0.1, [(t, msg_on), (t + 0.05, msg_off)])
                ahead.append(feed.until - feed.position)
        except FeedCancelled:
            pass

    producer = threading.Thread(target=fast_producer)
    with engine(renderer, [sink], events, realtime=True) as eng:
        producer.start()
        eng.play("long", feed)
        time.sleep(1.0)
        eng.skip()
        producer.join(5)
    assert not producer.is_alive()  # cancelled by the skip instead of waiting forever
    assert len(ahead) < 40  # about 1 s played + 0.5 s look-ahead, not the whole minute
    assert max(ahead) <= 0.5 + 0.1 + BLOCK / RATE


class StuckClockSink(MemorySink):
    """A sound card whose clock has stopped: it takes one block, then never returns until released."""

    max_queue_seconds = 0.1

    def __init__(self) -> None:
        super().__init__("slow card")
        self.release = threading.Event()

    def write(self, block: np.ndarray) -> None:
        super().write(block)
        self.release.wait()


def test_a_sink_with_its_own_clock_keeps_a_short_queue_instead_of_growing_latency(renderer):
    card, other, events = StuckClockSink(), MemorySink(), []
    with engine(renderer, [card, other], events, realtime=True) as eng:
        time.sleep(1.0)
        runners = {r.sink.name: r for r in eng.runners}
        queued = runners["slow card"]._queue.qsize()
        dropped = runners["slow card"].stats.dropped_blocks
        card.release.set()
    assert queued <= -(-0.1 * RATE // BLOCK)  # 0.1 s of blocks, rounded up: the latency stays bounded
    assert dropped > 0.5 * RATE / BLOCK  # most of the second was dropped, not queued
    assert runners["memory"].stats.dropped_blocks == 0  # the other output lost nothing
    assert len(other.blocks) > 10
