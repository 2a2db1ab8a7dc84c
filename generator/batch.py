"""Batched decoding: many pieces sampled together, one forward pass per step, pieces joining and leaving at any
step (continuous batching, as text-generation servers do).

A piece's tokens are exactly those `Composer.stream` samples for its request, whatever else is in the batch:
each piece is sampled by the sampler's own steps (`Composer._begin`, `_next`'s two halves `_prepare` and
`_commit`, `_feed`, as `stream` runs them: grammar, guards, voice leading, the plan and the piece's own seeded
`torch.Generator`, all untouched), and only its forward passes are taken out of its hands: a step notes the
tokens each row wants logits for, one batched pass (`fastgpt.forward_rows`, bit for bit batch-1's arithmetic per
row) answers them all, then each row samples its next token (a steer that lands re-conditions the model on a new
prefix in the middle of choosing: that one pass runs at once, batch-1's own, on the row's cache).

A piece with a critic (`request.critic` = K > 1) writes each bar K times from the same state and keeps the one
the critic scores best, as `Composer._criticised` does one candidate after another; here the K candidates are
K rows of the batch, stepped together, each on a copy of the piece's key/value cache taken where the bar
starts and drawing from its own generator (seeded by piece, bar and candidate alone), so the bar chosen, and
every byte of the piece, is the sequential critic's. A bar ends when its slowest candidate ends; the chosen
one's cache becomes the piece's.

Each row's masks are built row by row (`Composer._prepare`, up to the draw); the draw itself is the batch's:
the rows' scores stacked into one [B, vocab] softmax, top-p and argmax (`sampling.sample_rows`), each row still
drawing from its own generator, then each row goes on from its token (`Composer._commit`). A row's sampler is a
coroutine that yields its scores and is sent its token, so a critic's candidates and every piece draw together.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch

from generator import critic
from generator.fastgpt import CachePool, FastGPT2, forward_rows
from generator.grammar import AT_BOUNDARY
from generator.plan import form_profile
from generator.sampling import (
    BAR_STEPS,
    Composer,
    Composition,
    PieceRequest,
    _Run,
    candidate_seed,
    chosen_key,
    sample_rows,
)
from generator.steer import Steering

POOL_SLOTS = 16  # sequences' caches allocated together (3 MB each for the shipped model)

# A row's draw: its masked scores [vocab], its request (temperature, top-p) and its generator.
_Draw = tuple[torch.Tensor, PieceRequest, torch.Generator]
# A candidate's token: yields its draw (if it draws), is sent the token.
_RowSampler = Generator[_Draw, int, None]
# A piece's step: yields the draws its rows want (at most once a step), is sent their tokens in that order.
_Step = Generator[list[_Draw], list[int], None]


class _Row:
    """One sequence of the batched pass: a piece's, or one of its critic's candidates for a bar."""

    def __init__(self, cache: FastGPT2) -> None:
        self.cache = cache
        self.pending: list[int] | None = None  # tokens waiting for a forward pass
        self.fresh = False  # the pending tokens start a new sequence (the prefix, or a slid window)
        self.logits: torch.Tensor | None = None


class _Candidate:
    """Candidate k of a bar: its fork of the piece's sampling state, its generator, its row, its tokens."""

    def __init__(self, run: _Run, row: _Row, seed: int, made: Any) -> None:
        self.run = run
        self.row = row
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.tokens: list[int] = []
        self.done = False
        self.made = made  # its own view of the steering's fitted copy (see `_Bar.step`)


class _Bar:
    """A bar being written K times: the candidates, and what the critic judges them against."""

    def __init__(self, piece: BatchPiece, run: _Run, setup: critic.Setup) -> None:
        request, bar = piece.request, setup.bar
        self.start = run.decoder.time
        self.end = (self.start // bar + 1) * bar
        self.before = critic.context(run.notes, self.start, bar)
        self.base = run
        made = run.steering._made if run.steering is not None else None
        self.candidates: list[_Candidate] = []
        for k in range(request.critic):
            # Candidate 0 writes on the piece's own cache; the others on copies of it as the bar starts.
            row = piece.row if k == 0 else _Row(_copied(piece.row.cache, piece._take()))
            fork = run.fork()
            fork.cache = row.cache
            seed = candidate_seed(request.seed, self.start // bar, k)
            self.candidates.append(_Candidate(fork, row, seed, made))
        # The others wait while candidate 0 only replays a returning section: if it ends the bar so, the
        # sequential critic keeps it without writing the others (they would be the same).
        self.alone = True

    def rows(self) -> list[_Row]:
        """The rows that want a forward pass in this step."""
        live = self.candidates[:1] if self.alone else self.candidates
        return [c.row for c in live if not c.done and c.row.pending is not None]

    def step(self, piece: BatchPiece) -> _Step:
        """Each candidate whose logits are in samples one token; those waiting on candidate 0 may start."""
        ran = self.candidates[:1] if self.alone else self.candidates
        drawing = _started(self._sample(piece, c) for c in ran if not c.done and c.row.pending is None)
        if self.alone and drawing:
            self.alone = False  # candidate 0 draws a token: the bar is the model's, write the others
            drawing += _started(self._sample(piece, c) for c in self.candidates[1:])
        if drawing:
            tokens = yield [draw for _, draw in drawing]
            for (sampler, _), token in zip(drawing, tokens, strict=True):
                _finish(sampler, token)

    @property
    def finished(self) -> bool:
        first = self.candidates[0]
        return first.done and (self.alone or all(c.done for c in self.candidates))

    def chosen(self, setup: critic.Setup) -> _Candidate:
        """The candidate the sequential critic keeps: the first of the highest scores; candidate 0 for a bar
        only replayed. The steering is left as the last candidate the sequential loop ran left it."""
        ran = self.candidates[:1] if self.alone else self.candidates
        best, top = ran[0], None
        for candidate in ran:
            judged = critic.score(setup, self.before, candidate.run.notes[len(self.base.notes) :], self.start)
            if top is None or judged.total > top:
                best, top = candidate, judged.total
        if self.base.steering is not None:
            self.base.steering._made = ran[-1].made
        return best

    def _sample(self, piece: BatchPiece, candidate: _Candidate) -> _RowSampler:
        """One token of one candidate, as `Composer._criticised` draws it: yields its draw, if it draws."""
        run, steering = candidate.run, candidate.run.steering
        run.logits = candidate.row.logits if candidate.row.logits is not None else run.logits
        candidate.row.logits = None
        # The steering is shared by the candidates, as it is by the sequential critic's; the one thing a
        # candidate changes in it mid-bar is the returning section it last fitted (`Steering.turn`, before
        # the draw), which the sequential loop sees for one candidate at a time: each candidate keeps its own.
        if steering is not None:
            steering._made = candidate.made
        piece._current = candidate.row
        try:
            with piece._at_once():
                chosen = piece._row._prepare(run, piece.request)
        finally:
            if steering is not None:
                candidate.made = steering._made
        if isinstance(chosen, torch.Tensor):
            chosen = piece._row._commit(run, (yield chosen, piece.request, candidate.generator), drawn=True)
        candidate.tokens.append(chosen)
        if chosen == piece._eos:
            candidate.done = True
            return
        piece._current = candidate.row  # the other candidates ran while this one waited for its token
        piece._row._feed(run, chosen)
        candidate.done = run.state.phase == AT_BOUNDARY and run.decoder.time >= self.end


class BatchPiece:
    """One piece in the batch: its request, the tokens sampled so far, and whether it is finished."""

    def __init__(
        self,
        request: PieceRequest,
        composer: Composer,
        cache: FastGPT2,
        steering: Steering | None = None,
        take: Callable[[], FastGPT2] | None = None,
    ) -> None:
        self.request = request
        self.steering = steering
        self.tokens: list[int] = []  # music tokens so far; the last one is EOS once it is done
        self.report = Composition(request, composer.prefix(request), [], plan=composer.plan(request))
        self.error: BaseException | None = None  # what stopped its sampler, other than finishing
        self.done = False
        self.cancelled = False
        self.row = _Row(cache)  # the piece's own sequence; a critic's bar adds its candidates' beside it
        self._current = self.row  # the row whose sampler is running now
        self._take = take or composer.fast.fork  # another cache, for a critic's candidate
        self._row = _RowComposer(composer, self)
        self._eos = composer.vocab.eos
        self._composer = composer
        self._run: Any = None
        self._bar: _Bar | None = None
        self._setup: critic.Setup | None = None
        self._sampling = False  # inside the sampler's `_next`, where logits must come at once
        self._generator = torch.Generator(device="cpu").manual_seed(request.seed)

    @property
    def cache(self) -> FastGPT2:
        """The piece's own key/value cache."""
        return self.row.cache

    @property
    def finished(self) -> bool:
        """True once it has sampled its EOS."""
        return self.done and self.error is None and not self.cancelled

    def caches(self) -> list[FastGPT2]:
        """Every cache it holds: its own and, in a critic's bar, its other candidates'."""
        extra = [c.row.cache for c in self._bar.candidates[1:]] if self._bar is not None else []
        return [self.row.cache, *extra]

    def _rows(self) -> list[_Row]:
        """The rows that want a forward pass in this step."""
        if self._bar is not None:
            return self._bar.rows()
        return [self.row] if self.row.pending is not None else []

    def _start(self) -> None:
        """Run up to the first forward pass (its prefix)."""
        try:
            self._run = self._row._begin(self.request)
            self._run.steering = self.steering  # as `stream` sets it
            if self.request.critic > 1:
                self._setup = _critic_setup(self._composer, self._run, self.request)
        except Exception as exc:
            self._fail(exc)

    def _advance(self) -> _Step:
        """With the logits in, sample one token a row and run up to the next forward pass (or the end); yields
        the rows' draws and is sent their tokens."""
        try:
            if self.request.critic > 1:
                yield from self._advance_critic()
                return
            run = self._run
            run.logits = self.row.logits
            self.row.logits = None
            token = yield from self._draw(run, self._generator)
            self.tokens.append(token)
            if token == self._eos:
                self.report.steered = run.guard.steered
                self.done = True
            else:
                self._row._feed(run, token)
        except Exception as exc:
            self._fail(exc)

    def _advance_critic(self) -> _Step:
        """A critic's step: a bar begins once the piece's logits are in, its candidates step, and once the
        last has ended, the critic's choice is the piece's."""
        assert self._setup is not None
        if self._bar is None:
            run = self._run
            run.logits = self.row.logits
            self.row.logits = None
            if run.steering is not None:  # before the candidates fork: each bar starts as the steers left it
                with self._at_once():  # a steer landing re-conditions the model: that pass at once
                    run.steering.turn(self._row, run, self.request, run.decoder.time, bar_start=True)
            self._bar = _Bar(self, run, self._setup)
        bar = self._bar
        yield from bar.step(self)
        if not bar.finished:
            return
        chosen = bar.chosen(self._setup)
        for candidate in bar.candidates[1:]:
            if candidate.row is not chosen.row:
                self._give(candidate.row.cache)
        if chosen.row is not self.row:
            self._give(self.row.cache)
        self._bar = None
        self.row, self._current, self._run = chosen.row, chosen.row, chosen.run
        self.tokens += chosen.tokens
        if chosen.tokens[-1] == self._eos:
            self.report.steered = chosen.run.guard.steered
            self.done = True

    def _draw(self, run: _Run, generator: torch.Generator) -> Generator[list[_Draw], list[int], int]:
        """The sampler's next token for `run` (the row now current), drawn from `generator` with the batch."""
        with self._at_once():
            chosen = self._row._prepare(run, self.request)
        if not isinstance(chosen, torch.Tensor):
            return chosen
        (token,) = yield [(chosen, self.request, generator)]
        return self._row._commit(run, token, drawn=True)

    @contextlib.contextmanager
    def _at_once(self) -> Iterator[None]:
        """Within: the sampler is choosing, so a forward pass it asks for runs at once (`_ask`)."""
        self._sampling = True
        try:
            yield
        finally:
            self._sampling = False

    def _give(self, cache: FastGPT2) -> None:
        if cache.pool is not None:
            cache.pool[0].give(cache)

    def _cancel(self) -> None:
        self.cancelled = True
        self.done = True

    def _fail(self, exc: Exception) -> None:
        self.error = exc  # handed to whoever owns the piece: one piece's fault must not stop the rest
        self.done = True

    def _ask(self, ids: list[int], fresh: bool) -> tuple[torch.Tensor, FastGPT2]:
        """The sampler wants logits after `ids`: note them for the next batched pass."""
        row = self._current
        if self._sampling:
            # Wanted before the sampler can choose (a steer landing re-conditions the model on a new prefix):
            # batch-1's pass at once, on the row's own cache. Rare: once per steer.
            if fresh:
                row.cache.reset()
            return row.cache.forward(ids).to("cpu"), row.cache
        row.pending, row.fresh = ids, fresh
        return _LATER, row.cache  # the logits are put in before `_next` reads them


_LATER = torch.empty(0)  # stands for logits not computed yet


def _started(samplers: Iterable[_RowSampler]) -> list[tuple[_RowSampler, _Draw]]:
    """Each row sampler run up to its draw; those that drew nothing (a replayed token, the end) are done."""
    out = []
    for sampler in samplers:
        with contextlib.suppress(StopIteration):
            out.append((sampler, next(sampler)))
    return out


def _finish(sampler: Generator[Any, Any, None], sent: Any) -> None:
    """A sampler sent its token(s): it runs to its end, its step's one draw done."""
    try:
        sampler.send(sent)
    except StopIteration:
        return
    raise AssertionError("a row drew twice in one step")


def _draw_all(drawing: list[tuple[BatchPiece, _Step, list[_Draw]]]) -> None:
    """Every row's token at once, sent to its piece; if the batch's draw raises (one piece's scores leave
    nothing to draw, a recipe's temperature is no number), each piece draws alone and only that one fails."""
    try:
        tokens = _sampled([draw for _, _, mine in drawing for draw in mine])
    except Exception:
        for _, step, mine in drawing:
            try:
                alone = _sampled(mine)
            except Exception as exc:
                with contextlib.suppress(StopIteration):
                    step.throw(exc)  # the piece's `_advance` records it
                continue
            _finish(step, alone)
        return
    at = 0
    for _, step, mine in drawing:
        _finish(step, tokens[at : at + len(mine)])
        at += len(mine)


def _sampled(draws: list[_Draw]) -> list[int]:
    return sample_rows(torch.stack([d[0] for d in draws]), [d[1] for d in draws], [d[2] for d in draws])


def _copied(source: FastGPT2, into: FastGPT2) -> FastGPT2:
    """`into` holding `source`'s cached keys and values, as `sampling._CacheState` puts them back."""
    n = source.length
    into.keys[:, :, :n] = source.keys[:, :, :n]
    into.values[:, :, :n] = source.values[:, :, :n]
    into.length = n
    return into


def _critic_setup(composer: Composer, run: _Run, request: PieceRequest) -> critic.Setup:
    """What the critic knows of the piece before any note, as `Composer._criticised` sets it up."""
    profile = form_profile(composer.loaded.card, request.style)
    return critic.Setup(
        run.plan,
        chosen_key(composer.loaded, request.style, request.seed, request.key),
        tuple(request.programs()),
        critic.leap_share(profile),
        run.plan.bar if run.plan is not None else BAR_STEPS,
        critic.pitch_classes(profile),
        critic.interval_shares(profile),
    )


class _RowComposer(Composer):
    """The shared composer as one piece sees it: the same everything, but forward passes go to the batch."""

    def __init__(self, base: Composer, piece: BatchPiece) -> None:  # no super(): shares base's state as is
        self.__dict__.update(base.__dict__)
        self._piece = piece

    def _forward(self, ids: list[int], cache: FastGPT2 | None) -> tuple[torch.Tensor, FastGPT2]:
        # The sampler only ever continues the cache it was given back (or starts afresh with None).
        assert cache is None or cache is self._piece._current.cache
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
        self._pools: list[CachePool] = []  # the rows' caches, POOL_SLOTS to a pool

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

        Raises:
            Exception: what building the piece raised (a style the model lacks), its slot given back.
        """
        cache = self._take()
        try:
            piece = BatchPiece(request, self.composer, cache, steering, self._take)
        except Exception:  # a recipe it cannot begin (a style the model lacks): the slot it took goes back
            if cache.pool is not None:
                cache.pool[0].give(cache)
            raise
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

    def release(self, piece: BatchPiece) -> None:
        """Take a piece out of the batch whatever its state, its caches' slots free for the next to join.

        For whoever drives the batch after a `step` that raised: that step left its pieces in `live`, some of
        them done (finished, or failed on their own) with their slots still taken, which `cancel` leaves alone.
        An unfinished piece counts as cancelled. A piece that has left already (its slots went back as it left)
        is left alone: releasing it again does nothing.
        """
        if piece not in self.live:
            return
        if not piece.done:
            piece._cancel()
        self.live.remove(piece)
        self._release(piece)

    def close(self) -> None:
        for piece in list(self.live):
            self.cancel(piece)

    @torch.inference_mode()
    def step(self) -> list[tuple[BatchPiece, int]]:
        """One forward pass for the whole batch, then one token from each live row: (piece, token) pairs.

        A critic's piece gives a bar's tokens at once, when its last candidate has ended the bar. A piece whose
        token is EOS, or whose sampler raised (then `piece.error` says what), leaves the batch.
        """
        self._forward()
        before = [len(piece.tokens) for piece in self.live]
        drawing = []
        for piece in self.live:
            step = piece._advance()
            with contextlib.suppress(StopIteration):
                drawing.append((piece, step, next(step)))
        if drawing:
            _draw_all(drawing)
        out = []
        staying = []
        for piece, had in zip(self.live, before, strict=True):
            out += [(piece, token) for token in piece.tokens[had:]]
            if piece.done:
                self._release(piece)
            else:
                staying.append(piece)
        self.live = staying
        self._shrink()
        return out

    def _forward(self) -> None:
        rows: list[_Row] = []
        for row in (r for piece in self.live for r in piece._rows()):
            ids = row.pending
            assert ids is not None
            if row.fresh or len(ids) != 1:
                # A prefix or a slid window: batch-1's own pass, so its cache holds exactly batch-1's keys.
                if row.fresh:
                    row.cache.reset()
                row.logits = row.cache.forward(ids).to("cpu")
                row.pending = None
            else:
                rows.append(row)
        if len(rows) == 1:  # batch-1's own pass: the same bits, without a batch's set-up
            rows[0].logits = rows[0].cache.forward(rows[0].pending or []).to("cpu")
        elif rows:
            logits = forward_rows([r.cache for r in rows], [r.pending[0] for r in rows if r.pending]).to("cpu")
            for i, row in enumerate(rows):
                row.logits = logits[i]
        for row in rows:
            row.pending = None

    def _take(self) -> FastGPT2:
        """A free cache slot, in a new pool when every pool is full."""
        cache = next((c for c in (p.take() for p in self._pools) if c is not None), None)
        if cache is None:
            self._pools.append(CachePool(self.composer.fast, POOL_SLOTS))
            cache = self._pools[-1].take()
            assert cache is not None
        return cache

    def _release(self, piece: BatchPiece) -> None:
        """A piece that has left: its caches' slots free for the next to join."""
        for cache in piece.caches():
            piece._give(cache)
        piece._bar = None
        self._shrink()

    def _shrink(self) -> None:
        """A rush has passed: give idle pools' memory back, keeping one idle pool (or the only pool). Not every
        idle pool: a critic's candidates take slots at each bar and give them back at its end, and a pool
        freed at one bar and allocated again at the next cost 5 % of a step at 64 pieces, critic 2."""
        idle = [p for p in self._pools if p.idle]
        for pool in idle[1:]:
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
