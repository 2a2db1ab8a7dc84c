"""Batched decoding: many pieces sampled together, one forward pass per step, pieces joining and leaving at any
step (continuous batching, as text-generation servers do).

A piece's tokens are exactly those `Composer.stream` samples for its request, whatever else is in the batch:
each piece is sampled by the sampler's own steps (`Composer._begin`, `_next`, `_feed`, the loop `stream` runs:
grammar, guards, voice leading, the plan and the piece's own seeded `torch.Generator`, all untouched), and only
its forward passes are taken out of its hands: a step notes the tokens each piece wants logits for, one batched
pass (`fastgpt.forward_rows`, bit for bit batch-1's arithmetic per row) answers them all, then each piece
samples its next token (a steer that lands re-conditions the model on a new prefix in the middle of choosing:
that one pass runs at once, batch-1's own, on the piece's cache). A piece with a critic (`request.critic` > 1)
writes each bar several times inside `stream`; it runs `stream` itself on a thread of its own that parks at
every forward pass and only ever runs while the scheduler waits for it (one piece at a time, in a fixed order,
as deterministic as a loop). Not every piece so: under a busy CPU each hand-over between threads lets other
programs in, which cost 0.5-3 ms a token (measured at a load of 9 on 2 cores; at a load of 3-4 they did not
show), more than the forward pass saves.

The masks stay per piece (`Composer._choose`, tensors over the vocabulary): batching them as [B, vocab] tensors
needs a sampler written for rows, which this module leaves for a later change.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import torch

from generator.fastgpt import CachePool, FastGPT2, forward_rows
from generator.sampling import Composer, Composition, PieceRequest
from generator.steer import Steering

POOL_SLOTS = 16  # pieces' caches allocated together (3 MB each for the shipped model)


class _Cancelled(BaseException):
    """Raised inside a piece's own thread to unwind its `stream` when the piece leaves the batch early."""


class BatchPiece:
    """One piece in the batch: its request, the tokens sampled so far, and whether it is finished."""

    def __init__(
        self, request: PieceRequest, composer: Composer, cache: FastGPT2, steering: Steering | None = None
    ) -> None:
        self.request = request
        self.steering = steering
        self.tokens: list[int] = []  # music tokens so far; the last one is EOS once it is done
        self.report = Composition(request, composer.prefix(request), [], plan=composer.plan(request))
        self.error: BaseException | None = None  # what stopped its sampler, other than finishing
        self.done = False
        self.cancelled = False
        self.cache = cache
        self.pending: list[int] | None = None  # tokens waiting for a forward pass
        self.fresh = False  # the pending tokens start a new sequence (the prefix, or a slid window)
        self.logits: torch.Tensor | None = None
        self._row = _RowComposer(composer, self)
        self._eos = composer.vocab.eos
        # A piece that samples token by token is stepped in this thread, through the sampler's own steps
        # (`_begin`, `_next`, `_feed`: what `stream` runs). A critic's piece writes each bar several times
        # inside `stream`, so it runs `stream` itself on a thread of its own, parked at each forward pass.
        self._thread: threading.Thread | None = None
        if request.critic > 1:
            self._go = threading.Semaphore(0)  # scheduler -> piece: run until you next park
            self._back = threading.Semaphore(0)  # piece -> scheduler: parked (or finished)
            self._thread = threading.Thread(target=self._stream, daemon=True, name=f"piece-{request.seed}")
        self._run: Any = None
        self._sampling = False  # inside the sampler's `_next`, where logits must come at once
        self._generator = torch.Generator(device="cpu").manual_seed(request.seed)

    @property
    def finished(self) -> bool:
        """True once it has sampled its EOS."""
        return self.done and self.error is None and not self.cancelled

    def _start(self) -> None:
        """Run up to the first forward pass (its prefix)."""
        if self._thread is not None:
            self._thread.start()
            self._resume()
            return
        try:
            self._run = self._row._begin(self.request)
            self._run.steering = self.steering  # as `stream` sets it
        except Exception as exc:
            self._fail(exc)

    def _advance(self) -> None:
        """With the logits in, sample one token and run up to the next forward pass (or the end)."""
        if self._thread is not None:
            self._resume()
            return
        run = self._run
        run.logits = self.logits
        try:
            self._sampling = True
            try:
                token = self._row._next(run, self.request, self._generator)
            finally:
                self._sampling = False
            self.tokens.append(token)
            if token == self._eos:
                self.report.steered = run.guard.steered
                self.done = True
            else:
                self._row._feed(run, token)
        except Exception as exc:
            self._fail(exc)

    def _cancel(self) -> None:
        self.cancelled = True
        if self._thread is not None:
            self._resume()
        self.done = True

    def _fail(self, exc: Exception) -> None:
        self.error = exc  # handed to whoever owns the piece: one piece's fault must not stop the rest
        self.done = True

    def _ask(self, ids: list[int], fresh: bool) -> tuple[torch.Tensor, FastGPT2]:
        """The sampler wants logits after `ids`: note them for the next batched pass."""
        if self._thread is None and self._sampling:
            # Wanted before the sampler can choose (a steer landing re-conditions the model on a new prefix):
            # batch-1's pass at once, on the piece's own cache. Rare: once per steer.
            if fresh:
                self.cache.reset()
            return self.cache.forward(ids).to("cpu"), self.cache
        self.pending, self.fresh = ids, fresh
        if self._thread is None:
            return _LATER, self.cache  # `_advance` puts the real logits in before `_next` reads them
        self._back.release()  # parked: the scheduler's `_resume` returns
        self._go.acquire()
        if self.cancelled:
            raise _Cancelled
        assert self.logits is not None
        return self.logits, self.cache

    def _stream(self) -> None:
        """A threaded piece's whole life: `Composer.stream`, parking at every forward pass."""
        self._go.acquire()
        try:
            for token in self._row.stream(self.request, self.report, self.steering):
                self.tokens.append(token)
        except _Cancelled:
            pass
        except Exception as exc:
            self._fail(exc)
        finally:
            self.done = True
            self._back.release()

    def _resume(self) -> None:
        """In the scheduler: let a threaded piece run until it parks again or finishes."""
        self._go.release()
        self._back.acquire()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()


_LATER = torch.empty(0)  # stands for logits not computed yet


class _RowComposer(Composer):
    """The shared composer as one piece sees it: the same everything, but forward passes go to the batch."""

    def __init__(self, base: Composer, piece: BatchPiece) -> None:  # no super(): shares base's state as is
        self.__dict__.update(base.__dict__)
        self._piece = piece

    def _forward(self, ids: list[int], cache: FastGPT2 | None) -> tuple[torch.Tensor, FastGPT2]:
        # The sampler only ever continues the cache it was given back (or starts afresh with None).
        assert cache is None or cache is self._piece.cache
        return self._piece._ask(list(ids), fresh=cache is None)


class BatchComposer:
    """Steps every live piece together: `add` pieces at any time, `step` samples one token for each.

    One thread drives it (add, cancel, step): it is the generation loop, not a service to share between threads.

    Args:
        composer: the model, vocabulary and device to sample with (its own batch-1 cache is left alone).
    """

    def __init__(self, composer: Composer) -> None:
        self.composer = composer
        self.live: list[BatchPiece] = []
        self._pools: list[CachePool] = []  # the pieces' caches, POOL_SLOTS to a pool

    def __enter__(self) -> BatchComposer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, request: PieceRequest, steering: Steering | None = None) -> BatchPiece:
        """Join a piece; its first token comes with the next `step`.

        Args:
            request: the piece.
            steering: its steers (generator.steer), as `Composer.stream` takes them; None for none.
        """
        cache = next((c for c in (p.take() for p in self._pools) if c is not None), None)
        if cache is None:
            self._pools.append(CachePool(self.composer.fast, POOL_SLOTS))
            cache = self._pools[-1].take()
            assert cache is not None
        piece = BatchPiece(request, self.composer, cache, steering)
        piece._start()
        if piece.done:  # its sampler failed before its first forward pass
            self._release(piece)
        else:
            self.live.append(piece)
        return piece

    def cancel(self, piece: BatchPiece) -> None:
        """Take a piece out of the batch before it has finished; its tokens so far stay in `piece.tokens`."""
        if piece.done:
            return
        piece._cancel()
        self.live.remove(piece)
        self._release(piece)

    def close(self) -> None:
        for piece in list(self.live):
            self.cancel(piece)

    @torch.inference_mode()
    def step(self) -> list[tuple[BatchPiece, int]]:
        """One forward pass for the whole batch, then one token from each live piece: (piece, token) pairs.

        A piece whose token is EOS, or whose sampler raised (then `piece.error` says what), leaves the batch.
        """
        self._forward()
        out = []
        staying = []
        for piece in self.live:
            before = len(piece.tokens)
            piece._advance()
            out += [(piece, token) for token in piece.tokens[before:]]
            if piece.done:
                self._release(piece)
            else:
                staying.append(piece)
        self.live = staying
        return out

    def _forward(self) -> None:
        rows: list[BatchPiece] = []
        for piece in self.live:
            ids = piece.pending
            assert ids is not None
            if piece.fresh or len(ids) != 1:
                # A prefix or a slid window: batch-1's own pass, so its cache holds exactly batch-1's keys.
                if piece.fresh:
                    piece.cache.reset()
                piece.logits = piece.cache.forward(ids).to("cpu")
            else:
                rows.append(piece)
        if len(rows) == 1:  # batch-1's own pass: the same bits, without a batch's set-up
            rows[0].logits = rows[0].cache.forward(rows[0].pending or []).to("cpu")
        elif rows:
            logits = forward_rows([p.cache for p in rows], [p.pending[0] for p in rows if p.pending]).to("cpu")
            for i, piece in enumerate(rows):
                piece.logits = logits[i]
        for piece in self.live:
            piece.pending = None

    def _release(self, piece: BatchPiece) -> None:
        """A piece that has left: its thread (if any) ended, its cache's slot free for the next to join."""
        piece._join()
        if piece.cache.pool is not None:
            pool = piece.cache.pool[0]
            pool.give(piece.cache)
            if pool.idle and len(self._pools) > 1:  # a rush has passed: give its memory back, keep one pool
                self._pools.remove(pool)


def compose_together(
    composer: Composer, requests: Sequence[PieceRequest], join_at: Iterable[int] | None = None
) -> list[list[int]]:
    """Sample several pieces in one batch, request i joining at step `join_at[i]` (all at 0 by default).

    Returns each piece's music tokens (ending with EOS), in the order of `requests`.

    Raises:
        Exception: what a piece's sampler raised (the first piece's to fail), once the others have finished.
    """
    joins = list(join_at) if join_at is not None else [0] * len(requests)
    if len(joins) != len(requests):
        raise ValueError(f"{len(joins)} join steps for {len(requests)} requests")
    with BatchComposer(composer) as batch:
        pieces: list[BatchPiece | None] = [None] * len(requests)
        for step in itertools.count():
            for i, at in enumerate(joins):
                if at == step:
                    pieces[i] = batch.add(requests[i])
            if not batch.live and all(p is not None for p in pieces):
                break
            batch.step()
        for piece in pieces:
            if piece is not None and piece.error is not None:
                raise piece.error
    return [p.tokens if p is not None else [] for p in pieces]
