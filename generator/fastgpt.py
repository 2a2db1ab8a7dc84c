"""A lean single-sequence decoder over a trained GPT-2's weights, for sampling on a CPU.

At batch size 1 a step of transformers' GPT-2 spends most of its time on generic machinery (cache objects,
mask building, hooks), not arithmetic; `bench/bench_compose.py` measures both side by side. This module runs
the same arithmetic on the same weights with a preallocated key/value buffer. It reads the weights as
transformers saves them (`model.safetensors` and `config.json`) without importing transformers, whose import
(torch._dynamo and all) was most of a concert's start-up; `tests/test_fastgpt.py` checks that both give the same
logits.
"""

from __future__ import annotations

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
        self._free = list(range(slots))[::-1]

    @property
    def idle(self) -> bool:
        """True when no slot is taken."""
        return len(self._free) == self._slots

    def take(self) -> FastGPT2 | None:
        """A decoder over the model's weights, its cache a free slot of the pool; None when all are taken."""
        if not self._free:
            return None
        slot = self._free.pop()
        twin = object.__new__(FastGPT2)
        twin.__dict__.update(self._model.__dict__)
        twin.keys, twin.values = self.keys[:, slot], self.values[:, slot]  # [layer, head, position, dim] views
        twin.length = 0
        twin.pool = (self, slot)
        return twin

    def give(self, row: FastGPT2) -> None:
        """Free the slot of a decoder from `take`."""
        assert row.pool is not None and row.pool[0] is self
        self._free.append(row.pool[1])
        row.pool = None


@torch.inference_mode()
def forward_rows(rows: Sequence[FastGPT2], ids: Sequence[int]) -> torch.Tensor:
    """Append one token to each of several cached sequences in one pass; their logits [B, vocab].

    Row i's logits are bit for bit what `rows[i].forward([ids[i]])` gives, so a piece's notes do not depend on
    what else is in the batch. That rules out the obvious batched kernels: a [B, C] @ [C, N] product is not
    computed as B [1, C] @ [C, N] ones (MKL takes a matrix-vector path at one row, and its sums run in another
    order), nor is a [B, C] @ [C, V] output layer as B matrix-vector products. A batch of B one-row products
    (`baddbmm`, `bmm` over the weight expanded, not copied) is, and still reads each weight once per layer
    for the whole batch instead of once per sequence (tests/test_batch.py checks the bits). Attention runs row
    by row over each sequence's own cache, with batch-1's very operations: the sequences differ in length.

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
    # Rows whose caches share a pool have their new keys written in one copy per pool; the others, one by one.
    groups: dict[int, tuple[CachePool, list[int], list[int]]] = {}  # pool -> (pool, rows, their slots)
    lone: list[int] = []
    for i, row in enumerate(rows):
        if row.pool is None:
            lone.append(i)
        else:
            pool, slot = row.pool
            members = groups.setdefault(id(pool), (pool, [], []))
            members[1].append(i)
            members[2].append(slot)
    writes = [
        (pool, torch.tensor(members, device=device), torch.tensor(slots, device=device),
         torch.tensor([starts[i] for i in members], device=device))
        for pool, members, slots in groups.values()
    ]  # fmt: skip
    scale = math.sqrt(dim)
    y = torch.empty(n, heads, 1, dim, device=device, dtype=x.dtype)  # each row's attention output
    # Per row, batch-1's attention in as few operations as it can be written: at a batch of 64 the Python
    # around each one costs as much as its arithmetic, so every view that does not change with the layer is
    # taken once per step. Each row's cache up to and with its new token, keys as [layer, H, D, T]:
    seen = [
        (row.keys[:, :, : start + 1].transpose(2, 3), row.values[:, :, : start + 1], y[i])
        for i, (row, start) in enumerate(zip(rows, starts, strict=True))
    ]
    for layer, (g1, b1, wa, ba, wp, bp, g2, b2, wf, bf, wo, bo) in enumerate(first.blocks):
        h = F.layer_norm(x, (c,), g1, b1, first.eps)
        qkv = _rows_addmm(ba, h, wa)  # [B, 3C]
        q, k, v = (part.view(n, heads, dim) for part in qkv.split(c, dim=1))  # [B, H, D] each
        for pool, index, slots, at in writes:
            pool.keys[layer, slots, :, at] = k[index]
            pool.values[layer, slots, :, at] = v[index]
        for i in lone:
            rows[i].keys[layer, :, starts[i]] = k[i]
            rows[i].values[layer, :, starts[i]] = v[i]
        queries = q.unsqueeze(2)  # [B, H, 1, D]
        for i, (keys, values, out) in enumerate(seen):
            att = torch.softmax(queries[i] @ keys[layer] / scale, dim=-1)  # [H, 1, T]
            torch.matmul(att, values[layer], out=out)  # [H, 1, D]
        x = x + _rows_addmm(bp, y.view(n, c), wp)  # [H, 1, D] rows laid out as batch-1's [1, C]
        h = F.layer_norm(x, (c,), g2, b2, first.eps)
        x = x + _rows_addmm(bo, F.gelu(_rows_addmm(bf, h, wf), approximate="tanh"), wo)
    for row, start in zip(rows, starts, strict=True):
        row.length = start + 1
    last = F.layer_norm(x, (c,), *first.ln_f, first.eps)  # [B, C]
    # lm_head @ last, one matrix-vector product per row, as a batch of [1, C] @ [C, V] products.
    return torch.bmm(last.unsqueeze(1), first.lm_head.T.expand(n, c, -1)).squeeze(1)


def _rows_addmm(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight for x [B, K], computed as B one-row `addmm`s are: [B, N]."""
    n = x.shape[0]
    out = torch.baddbmm(bias.expand(n, 1, -1), x.unsqueeze(1), weight.expand(n, *weight.shape))
    return out.squeeze(1)
