"""bench/bench_concerts.py's core: concerts on real synths and engines, underruns counted per concert, and the
shared batch loop giving each piece the tokens `Composer.stream` gives it alone."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from config import load_settings
from generator.model import LoadedModel, load_model
from generator.recipes import make_request
from generator.sampling import Composer, PieceRequest
from generator.steer import Steering

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).parent.parent / "bench" / "bench_concerts.py"
    spec = importlib.util.spec_from_file_location("bench_concerts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_concerts"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(load_settings().paths.model_dir)


def test_a_concert_whose_generation_stalls_counts_its_underrun(
    bench: ModuleType, loaded: LoadedModel, tmp_path: Path
) -> None:
    settings = load_settings()
    request = make_request(loaded, "bach", seconds=4.0, seed=5)
    tokens = list(Composer(loaded).stream(request))
    concerts: list[Any] = []  # bench_concerts.Concert: the module is loaded from its file
    gated = threading.Event()

    def replay(request: PieceRequest, steering: Steering | None, skipped: Callable[[], bool]) -> Iterator[int]:
        return iter(tokens)  # every token at once: this concert never waits for its generator

    def stalling(
        request: PieceRequest, steering: Steering | None, skipped: Callable[[], bool]
    ) -> Iterator[int]:
        # The first piece's tokens stop once a second of it is in its feed, until its engine has played past
        # them by a few blocks (a stall, however slow the machine); then the rest come at once.
        concert = concerts[1]
        while not concert._pieces:  # queued in the main thread just after this thread was handed the piece
            time.sleep(0.001)
        piece = concert._pieces[0]
        for token in tokens:
            if not gated.is_set() and piece.feed.until >= 1.0:
                gated.set()
                engine = concert.session.engine
                start = concert.session.wait_for(piece.id, ("start",), timeout=30)
                assert start is not None
                stall_at = start.frame + round(piece.feed.until * engine.rate) + 4 * engine.block
                while engine.stats.frames < stall_at:
                    time.sleep(0.005)
            yield token

    for number, source in enumerate((replay, stalling)):
        requests = iter([request] * 10)
        path = tmp_path / f"c{number}.wav"
        concerts.append(bench.Concert(number, settings, loaded, path, requests, source))
    played = bench.play_concerts(concerts, seconds=7.0)

    steady, stalled = played.tallies
    assert gated.is_set()
    assert (steady.underruns, stalled.underruns) == (0, 1)
    assert stalled.underrun_seconds > 0
    assert steady.pieces_started >= 1 and stalled.pieces_started >= 1
    assert steady.pieces_failed == stalled.pieces_failed == 0
    for tally in played.tallies:  # each concert really rendered into its own file
        with wave.open(str(tmp_path / f"c{tally.concert}.wav")) as wav:
            audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert len(audio) // 2 == round(tally.seconds_written * settings.synth.sample_rate)
        assert np.abs(audio).max() > 1000  # music, not silence
    assert played.rss_mib > 0 and played.cpu["render"] > 0


def test_the_shared_loop_gives_each_piece_its_own_tokens_while_some_are_held(
    bench: ModuleType, loaded: LoadedModel
) -> None:
    composer = Composer(loaded)
    requests = [make_request(loaded, s, seconds=3.0, seed=40 + i) for i, s in enumerate(("irish", "folk"))]
    alone = [list(composer.stream(r)) for r in requests]
    got: list[list[int]] = [[], []]
    with bench.BatchLoop(Composer(loaded)) as loop:

        def read(i: int, pause: float) -> None:
            for token in loop(requests[i], None):
                got[i].append(token)
                time.sleep(pause)  # a slow reader: its piece sits out steps once HOLD_TOKENS wait for it

        readers = [threading.Thread(target=read, args=(i, p)) for i, p in enumerate((0.0, 0.002))]
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout=60)
    assert got == alone
    assert loop.rows < loop.steps * 2  # the slow reader's piece was held out of some steps


def test_concerts_played_by_a_worker_process_over_the_pools_own_redis(
    bench: ModuleType, loaded: LoadedModel, tmp_path: Path
) -> None:
    settings = load_settings()
    with bench.WorkerPool(1, 4, tmp_path) as pool:
        remote = pool.settings(settings)
        assert remote.generation.remote and remote.concert.redis_url is not None
        concerts = [
            bench.Concert(n, remote, loaded, tmp_path / f"c{n}.wav", bench.concert_requests(loaded, n, 3.0, 1))
            for n in range(2)
        ]
        assert all(type(c.session.worker).__name__ == "RemoteGenerationWorker" for c in concerts)
        played = bench.play_concerts(concerts, seconds=5.0, elsewhere=pool.cpu)
    for tally in played.tallies:
        assert tally.pieces_started >= 1 and tally.pieces_failed == 0
        with wave.open(str(tmp_path / f"c{tally.concert}.wav")) as wav:
            audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert np.abs(audio).max() > 1000  # the worker's notes, rendered here
    assert played.cpu["workers"] > 0  # the sampling happened in the worker process, and was counted
    assert pool.steps > 0 and pool.steps <= pool.rows <= 4 * pool.steps  # read from its log as it stopped
    assert all(proc.poll() is not None for proc in pool.procs) and pool.server.poll() is not None


def test_concerts_split_over_two_processes_all_play_and_are_counted(bench: ModuleType, tmp_path: Path) -> None:
    args = argparse.Namespace(seconds=4.0, spread=0.0, piece_seconds=3.0, procs=2)
    with bench.WorkerPool(1, 4, tmp_path) as pool:
        played = bench.play_in_processes(pool, 1, 3, tmp_path, args)
    assert [t.concert for t in played.tallies] == [0, 1, 2]  # every concert once, from both processes
    for tally in played.tallies:
        assert tally.pieces_started >= 1 and tally.pieces_failed == 0
        with wave.open(str(tmp_path / f"concert-{tally.concert}.wav")) as wav:
            audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert np.abs(audio).max() > 1000
    assert played.cpu["render"] > 0 and played.cpu["workers"] > 0 and played.cpu["process"] > 0
