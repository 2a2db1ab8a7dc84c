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
        # The output layer as a [C, V] product's right side, laid out in memory as such: MKL multiplies by a
        # transposed view another way as the rows grow (18 of 21 rows differed from their batch-1 bits on one
        # thread), and a row's bits would then depend on the batch after all.
        self.head = self.lm_head.T.contiguous()
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
            q, k, v = _rows_addmm(ba, h, wa).split(self.n_embd, dim=1)  # [n, C] each
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
            x = x + _rows_addmm(bp, y.transpose(0, 1).reshape(n, self.n_embd), wp)
            h = F.layer_norm(x, (self.n_embd,), g2, b2, self.eps)
            x = x + _rows_addmm(bo, F.gelu(_rows_addmm(bf, h, wf), approximate="tanh"), wo)
        self.length = start + n
        last = F.layer_norm(x[-1:], (self.n_embd,), *self.ln_f, self.eps)  # [1, C]
        return _rows_addmm(None, last, self.head)[0]


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
    what else is in the batch: every linear layer is one product of at least MIN_ROWS rows on both paths
    (`_rows_addmm`), which gives a row the same bits whatever rows come with it (tests/test_batch.py checks
    them). Attention is each row's own, over its own cache: padded to a common length and run for many rows at
    once, a row's softmax and its product with the values came out in other bits on an AVX-512 machine (25 and
    83 of 176 lengths), though not on the machine where that was first measured.

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
    scale = math.sqrt(dim)
    y = torch.empty(n, heads, 1, dim, device=device, dtype=x.dtype)  # each row's attention output
    # Each row's cache up to and with its new token, keys as [layer, H, D, T], taken once per step.
    seen = [
        (row.keys[:, :, : start + 1].transpose(2, 3), row.values[:, :, : start + 1])
        for row, start in zip(rows, starts, strict=True)
    ]
    for layer, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wo, bo) in enumerate(first.blocks):
        h = F.layer_norm(x, (c,), g1, b1, first.eps)
        qkv = _rows_addmm(ba, h, wa)  # [B, 3C]
        q, k, v = (part.view(n, heads, dim) for part in qkv.split(c, dim=1))  # [B, H, D] each
        queries = q.unsqueeze(2).unbind(0)  # B of [H, 1, D]
        for i, (keys, values) in enumerate(seen):
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
    return _rows_addmm(None, last, first.head)  # [B, V], each row batch-1's


MIN_ROWS = 8  # a product of this many rows or more gives each row the same bits (`_rows_addmm`)


def _rows_addmm(bias: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight for x [B, K]: [B, N], each row's bits the same whatever the other rows are.

    MKL computes a product of fewer than MIN_ROWS rows another way (a matrix-vector product at one row, other
    blockings up to seven), so a row's sums run in an order that depends on how many rows came with it. From
    MIN_ROWS rows on they do not: a row's bits depend on neither the number of rows nor its place among them
    (the model's shapes on an AVX-512 Xeon, 1 and 2 threads: 0 of 144 rows differ at 8-200 rows, 20 of 72 at
    1-7; 0 of 300 on an earlier machine). So every product, batch-1's included, runs with at least MIN_ROWS
    rows, zero rows padding it. (One B-row product per layer also costs less than B one-row products: 0.25 ms
    against 1.33 ms at B = 64.)
    """
    n = x.shape[0]
    if n < MIN_ROWS:
        x = torch.cat([x, x.new_zeros(MIN_ROWS - n, x.shape[1])])
    out = torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
    return out[:n]
