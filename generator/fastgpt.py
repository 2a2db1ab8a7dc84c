"""A lean single-sequence decoder over a trained GPT-2's weights, for sampling on a CPU.

At batch size 1 a step of transformers' GPT-2 spends most of its time on generic machinery (cache objects,
mask building, hooks), not arithmetic; `bench/bench_compose.py` measures both side by side. This module runs
the same arithmetic on the same weights with a preallocated key/value buffer. It reads the weights as
transformers saves them (`model.safetensors` and `config.json`) without importing transformers, whose import
(torch._dynamo and all) was most of a concert's start-up; `tests/test_fastgpt.py` checks that both give the same
logits.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# The GPT-2 variants this decoder computes exactly; anything else in a config.json would be ignored silently.
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are gelu's tanh approximation
_BLOCK = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


@dataclass(frozen=True)
class GPT2Shape:
    """What the decoder needs from a transformers GPT-2 `config.json`."""

    n_layer: int
    n_head: int
    n_embd: int
    context: int
    vocab_size: int
    eps: float
    tied: bool  # the output layer is the token embedding (then the weights file holds it once)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GPT2Shape:
        """Raises ValueError for a config this decoder would compute differently from transformers."""
        if config.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"model_type {config.get('model_type')!r} is not gpt2")
        if config.get("activation_function", "gelu_new") not in _ACTIVATIONS:
            raise ValueError(f"activation_function {config.get('activation_function')!r} is not supported")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if config.get(flag):
                raise ValueError(f"{flag} is not supported")
        if not config.get("scale_attn_weights", True):
            raise ValueError("scale_attn_weights false is not supported")
        try:
            shape = cls(
                n_layer=int(config["n_layer"]),
                n_head=int(config["n_head"]),
                n_embd=int(config["n_embd"]),
                context=int(config["n_positions"]),
                vocab_size=int(config["vocab_size"]),
                eps=float(config.get("layer_norm_epsilon", 1e-5)),
                tied=bool(config.get("tie_word_embeddings", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"no usable {exc} in the config") from None
        if min(shape.n_layer, shape.n_head, shape.n_embd, shape.context, shape.vocab_size) < 1:
            raise ValueError("a size in the config is below 1")
        if shape.n_embd % shape.n_head:
            raise ValueError(f"n_embd {shape.n_embd} is not a multiple of n_head {shape.n_head}")
        return shape

    def check(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Raises ValueError naming the first weight that is missing or not of the shape this config says."""
        c, inner = self.n_embd, self._inner(weights)
        want: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (self.vocab_size, c),
            "transformer.wpe.weight": (self.context, c),
        }
        want |= {"transformer.ln_f.weight": (c,), "transformer.ln_f.bias": (c,)}
        if not self.tied or "lm_head.weight" in weights:
            want["lm_head.weight"] = (self.vocab_size, c)
        sizes: dict[str, tuple[int, ...]] = {
            "ln_1.weight": (c,),
            "ln_1.bias": (c,),
            "attn.c_attn.weight": (c, 3 * c),  # transformers' Conv1D: [in, out], used as x @ w
            "attn.c_attn.bias": (3 * c,),
            "attn.c_proj.weight": (c, c),
            "attn.c_proj.bias": (c,),
            "ln_2.weight": (c,),
            "ln_2.bias": (c,),
            "mlp.c_fc.weight": (c, inner),
            "mlp.c_fc.bias": (inner,),
            "mlp.c_proj.weight": (inner, c),
            "mlp.c_proj.bias": (c,),
        }
        for layer in range(self.n_layer):
            want |= {f"transformer.h.{layer}.{name}": size for name, size in sizes.items()}
        for name, size in want.items():
            if name not in weights:
                raise ValueError(f"no {name} in the weights")
            if tuple(weights[name].shape) != size:
                raise ValueError(f"{name} is {tuple(weights[name].shape)}, the config makes it {size}")
        if f"transformer.h.{self.n_layer}.ln_1.weight" in weights:
            raise ValueError(f"the weights have more than the config's {self.n_layer} layers")

    def _inner(self, weights: Mapping[str, torch.Tensor]) -> int:
        # The MLP's width (n_inner, 4 x n_embd unless set) is read from the weights: they are what runs.
        found = weights.get("transformer.h.0.mlp.c_fc.bias")
        return int(found.shape[0]) if found is not None and found.dim() == 1 else 4 * self.n_embd


class FastGPT2:
    def __init__(self, shape: GPT2Shape, weights: Mapping[str, torch.Tensor]) -> None:
        """Args:
        shape: the model's sizes, from its config.json.
        weights: its tensors by transformers' names (a `model.safetensors` read as it is, or a state dict),
            on the device to compute on; checked against `shape` (ValueError naming what disagrees).
        """
        shape.check(weights)
        self.n_head = shape.n_head
        self.n_embd = shape.n_embd
        self.head_dim = shape.n_embd // shape.n_head
        self.context = shape.context
        self.eps = shape.eps
        self.wte = weights["transformer.wte.weight"].detach()
        self.wpe = weights["transformer.wpe.weight"].detach()
        self.blocks = [
            tuple(weights[f"transformer.h.{layer}.{name}"].detach() for name in _BLOCK)
            for layer in range(shape.n_layer)
        ]
        self.ln_f = (weights["transformer.ln_f.weight"].detach(), weights["transformer.ln_f.bias"].detach())
        self.lm_head = weights.get("lm_head.weight", self.wte).detach()
        device, dtype = self.wte.device, self.wte.dtype
        cache_shape = (len(self.blocks), self.n_head, self.context, self.head_dim)
        self.keys = torch.zeros(cache_shape, device=device, dtype=dtype)
        self.values = torch.zeros(cache_shape, device=device, dtype=dtype)
        self.length = 0
        self.pool: tuple[CachePool, int] | None = None  # the pool and slot its cache lives in, if any

    @classmethod
    def from_model(cls, model: Any) -> FastGPT2:
        """The decoder over a transformers `GPT2LMHeadModel`'s own parameters (training code and tests)."""
        return cls(GPT2Shape.from_config(model.config.to_dict()), dict(model.state_dict()))

    def reset(self) -> None:
        self.length = 0

    def fork(self) -> FastGPT2:
        """A decoder over the same weights (shared, not copied) with an empty key/value cache of its own."""
        twin = object.__new__(FastGPT2)
        twin.__dict__.update(self.__dict__)
        twin.keys = torch.zeros_like(self.keys)
        twin.values = torch.zeros_like(self.values)
        twin.length = 0
        twin.pool = None
        return twin

    @torch.inference_mode()
    def forward(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` to the cached sequence; the logits [vocab] for the token after the last one."""
        n = len(ids)
        start = self.length
        if start + n > self.context:
            raise ValueError(f"sequence of {start + n} tokens exceeds the context of {self.context}")
        positions = torch.arange(start, start + n, device=self.wte.device)
        x = self.wte[torch.tensor(ids, device=self.wte.device)] + self.wpe[positions]  # [n, C]
        for layer, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wo, bo) in enumerate(self.blocks):
            h = F.layer_norm(x, (self.n_embd,), g1, b1, self.eps)
            q, k, v = torch.addmm(ba, h, wa).split(self.n_embd, dim=1)  # [n, C] each
            q = q.view(n, self.n_head, self.head_dim).transpose(0, 1)  # [H, n, D]
            self.keys[layer, :, start : start + n] = k.view(n, self.n_head, self.head_dim).transpose(0, 1)
            self.values[layer, :, start : start + n] = v.view(n, self.n_head, self.head_dim).transpose(0, 1)
            keys = self.keys[layer, :, : start + n]  # [H, T, D]
            values = self.values[layer, :, : start + n]
            if n == 1:
                att = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(self.head_dim), dim=-1)
                y = att @ values
            else:
                # Queries at positions start..start+n-1 see every cached key up to their own position.
                mask = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + torch.addmm(bp, y.transpose(0, 1).reshape(n, self.n_embd), wp)
            h = F.layer_norm(x, (self.n_embd,), g2, b2, self.eps)
            x = x + torch.addmm(bo, F.gelu(torch.addmm(bf, h, wf), approximate="tanh"), wo)
        self.length = start + n
        last = F.layer_norm(x[-1], (self.n_embd,), *self.ln_f, self.eps)
        return self.lm_head @ last


class CachePool:
    """The key/value caches of up to `slots` sequences in one tensor, [layer, slot, head, position, dim] (one
    more for values), so a batched step writes every row's new key with one indexed copy per layer, not one a
    row.

    Args:
        model: the decoder whose weights the sequences share.
        slots: how many sequences it holds at most.
    """

    def __init__(self, model: FastGPT2, slots: int) -> None:
        layers, heads, context, dim = model.keys.shape
        self.keys = model.keys.new_zeros(layers, slots, heads, context, dim)
        self.values = torch.zeros_like(self.keys)
        self._model = model
        self._slots = slots
        self._free = list(range(slots))  # a heap: the lowest slot goes first, so a step's rows sit close

    @property
    def idle(self) -> bool:
        """True when no slot is taken."""
        return len(self._free) == self._slots

    def take(self) -> FastGPT2 | None:
        """A decoder over the model's weights, its cache a free slot of the pool; None when all are taken."""
        if not self._free:
            return None
        slot = heapq.heappop(self._free)
        twin = object.__new__(FastGPT2)
        twin.__dict__.update(self._model.__dict__)
        twin.keys, twin.values = self.keys[:, slot], self.values[:, slot]  # [layer, head, position, dim] views
        twin.length = 0
        twin.pool = (self, slot)
        return twin

    def give(self, row: FastGPT2) -> None:
        """Free the slot of a decoder from `take`."""
        assert row.pool is not None and row.pool[0] is self
        heapq.heappush(self._free, row.pool[1])
        row.pool = None


@torch.inference_mode()
def forward_rows(rows: Sequence[FastGPT2], ids: Sequence[int]) -> torch.Tensor:
    """Append one token to each of several cached sequences in one pass; their logits [B, vocab].

    Row i's logits are bit for bit what `rows[i].forward([ids[i]])` gives, so a piece's notes do not depend on
    what else is in the batch. That rules out the obvious batched kernels: a [B, C] @ [C, N] product is not
    computed as B [1, C] @ [C, N] ones (MKL takes a matrix-vector path at one row, and its sums run in another
    order), nor is a [B, C] @ [C, V] output layer as B matrix-vector products. A batch of B one-row products
    (`baddbmm`, `bmm` over the weight expanded, not copied) is, and still reads each weight once per layer
    for the whole batch instead of once per sequence (tests/test_batch.py checks the bits). Attention is
    `_PoolAttention`'s: each row's scores its own product, the rest for a pool's rows at once.

    Args:
        rows: decoders over the same weights (`FastGPT2.fork`), each with its own cache; at least one.
        ids: the next token of each.
    """
    first = rows[0]
    n, c, heads, dim = len(rows), first.n_embd, first.n_head, first.head_dim
    starts = [row.length for row in rows]
    for row, start in zip(rows, starts, strict=True):
        if start + 1 > row.context:
            raise ValueError(f"sequence of {start + 1} tokens exceeds the context of {row.context}")
    device = first.wte.device
    x = first.wte[torch.tensor(ids, device=device)] + first.wpe[torch.tensor(starts, device=device)]  # [B, C]
    # Rows whose caches share a pool attend together; the others (forks of their own, a pool's few), one by one.
    members: dict[int, tuple[CachePool, list[int]]] = {}  # pool -> (pool, its rows)
    for i, row in enumerate(rows):
        if row.pool is not None:
            members.setdefault(id(row.pool[0]), (row.pool[0], []))[1].append(i)
    together = [(pool, at) for pool, at in members.values() if len(at) >= _POOLED_FROM]
    pools = [_PoolAttention(pool, rows, starts, at) for pool, at in together]
    pooled = {i for _, at in together for i in at}
    lone = [i for i in range(n) if i not in pooled]
    scale = math.sqrt(dim)
    y = torch.empty(n, heads, 1, dim, device=device, dtype=x.dtype)  # each row's attention output
    # A lone row's cache up to and with its new token, keys as [layer, H, D, T], taken once per step.
    seen = [
        (i, rows[i].keys[:, :, : starts[i] + 1].transpose(2, 3), rows[i].values[:, :, : starts[i] + 1])
        for i in lone
    ]
    for layer, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wo, bo) in enumerate(first.blocks):
        h = F.layer_norm(x, (c,), g1, b1, first.eps)
        qkv = _rows_addmm(ba, h, wa)  # [B, 3C]
        q, k, v = (part.view(n, heads, dim) for part in qkv.split(c, dim=1))  # [B, H, D] each
        queries = q.unsqueeze(2).unbind(0)  # B of [H, 1, D]
        for pool in pools:
            pool.attend(layer, queries, k, v, y)
        for i, keys, values in seen:
            rows[i].keys[layer, :, starts[i]] = k[i]
            rows[i].values[layer, :, starts[i]] = v[i]
            att = torch.softmax(queries[i] @ keys[layer] / scale, dim=-1)  # [H, 1, T]
            torch.matmul(att, values[layer], out=y[i])  # [H, 1, D]
        x = x + _rows_addmm(bp, y.view(n, c), wp)  # [H, 1, D] rows laid out as batch-1's [1, C]
        h = F.layer_norm(x, (c,), g2, b2, first.eps)
        x = x + _rows_addmm(bo, F.gelu(_rows_addmm(bf, h, wf), approximate="tanh"), wo)
    for row, start in zip(rows, starts, strict=True):
        row.length = start + 1
    last = F.layer_norm(x, (c,), *first.ln_f, first.eps)  # [B, C]
    # lm_head @ last, one matrix-vector product per row, as a batch of [1, C] @ [C, V] products.
    return torch.bmm(last.unsqueeze(1), first.lm_head.T.expand(n, c, -1)).squeeze(1)


# A pool's rows attend together from this many on: below, the step's set-up (its index tensors, the padded
# buffer) costs more than the ops it saves (forward_rows pooled against one by one, all rows in one pool:
# 0.85x as fast at 2 rows, 0.95x at 4, 1.13x at 8; a micro-benchmark at load 12-25).
_POOLED_FROM = 6
# Below this many positions a row's softmax runs on its own: the CPU kernel sums a row in vector lanes (8
# floats with AVX2, 16 with AVX-512), and a row shorter than one vector is summed another way, so padding it
# would change its bits.
_PADDED_SOFTMAX_FROM = 16


class _PoolAttention:
    """One step's attention for the rows whose caches share a pool, with batch-1's bits per row.

    Batch-1 attends over exactly its T positions: softmax(q @ keys^T / sqrt(D)) [H, 1, T], then @ values. MKL
    splits a matrix-vector product's work by its length, so a row's scores padded to another length come out in
    other bits: each row's scores stay its own `bmm`. Gathered into one [slots, H, 1, T_max] buffer (one
    scatter), the softmax and the product with the values then run once for the pool, padded: a position past a
    row's T scores -inf, so the softmax kernel's vector lanes add exact zeros for it (the same sums, from 16
    positions on), and its cached value is weighed by an exact zero (tests/test_batch_pools.py checks the bits).
    A row costs one op a layer instead of four, and three more a step.

    Args:
        pool: the caches' pool.
        rows: the batch's decoders; `members` index those in `pool`.
        starts: each row's cached length before this step's token.
    """

    def __init__(
        self, pool: CachePool, rows: Sequence[FastGPT2], starts: list[int], members: list[int]
    ) -> None:
        device, heads = pool.keys.device, pool.keys.shape[2]
        slots = [pool_slot[1] for pool_slot in (rows[i].pool for i in members) if pool_slot is not None]
        lengths = [starts[i] + 1 for i in members]
        low, high, wide = min(slots), max(slots) + 1, max(lengths)  # slots go lowest first: few idle between
        self.pool, self.span = pool, slice(low, high)
        self.members = members
        self.index = torch.tensor(members, device=device)
        self.slots = torch.tensor(slots, device=device)
        self.at = torch.tensor([starts[i] for i in members], device=device)
        self.rows = self.slots - low  # each member's place in the buffer
        self.keys = [
            rows[i].keys[:, :, :n].transpose(2, 3).unbind(0) for i, n in zip(members, lengths, strict=True)
        ]
        # The rows' scores side by side [H, 1, sum of T] go to [(row * H + h) * T_max + t] of the buffer.
        length = torch.tensor(lengths, device=device)
        begins = torch.repeat_interleave(self.rows * heads * wide - (length.cumsum(0) - length), length)
        spots = begins + torch.arange(int(length.sum()), device=device)
        self.into = (spots[None, :] + (torch.arange(heads, device=device) * wide)[:, None]).view(-1)
        length_of = torch.full((high - low,), wide, device=device)  # an idle slot's scores stay 0: finite
        length_of[self.rows] = length
        past = torch.arange(wide, device=device) >= length_of[:, None]  # [slots, T_max]
        self.scores = pool.keys.new_zeros(high - low, heads, 1, wide).masked_fill_(
            past[:, None, None], -math.inf
        )
        self.short = [
            (r, n) for r, n in zip(self.rows.tolist(), lengths, strict=True) if n < _PADDED_SOFTMAX_FROM
        ]

    def attend(
        self, layer: int, queries: Sequence[torch.Tensor], k: torch.Tensor, v: torch.Tensor, y: torch.Tensor
    ) -> None:
        """The members' new keys and values [B, H, D] into the pool, their outputs [H, 1, D] into y."""
        pool = self.pool
        pool.keys[layer, self.slots, :, self.at] = k[self.index]
        pool.values[layer, self.slots, :, self.at] = v[self.index]
        scores = torch.cat(
            [torch.bmm(queries[i], keys[layer]) for i, keys in zip(self.members, self.keys, strict=True)], 2
        )
        self.scores.view(-1)[self.into] = scores.div_(math.sqrt(k.shape[2])).view(-1)
        att = torch.softmax(self.scores, dim=-1)
        for r, n in self.short:
            att[r, :, :, :n] = torch.softmax(self.scores[r, :, :, :n], dim=-1)
        span, heads, _, wide = att.shape
        values = pool.values[layer, self.span].view(span * heads, -1, k.shape[2])[:, :wide]  # [slots * H, T, D]
        y[self.index] = torch.bmm(att.view(span * heads, 1, wide), values).view(span, heads, 1, -1)[self.rows]


def _rows_addmm(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight for x [B, K], computed as B one-row `addmm`s are: [B, N]."""
    n = x.shape[0]
    out = torch.baddbmm(bias.expand(n, 1, -1), x.unsqueeze(1), weight.expand(n, *weight.shape))
    return out.squeeze(1)
