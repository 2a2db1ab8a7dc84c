"""A lean single-sequence decoder over a trained GPT-2's weights, for sampling on a CPU.

At batch size 1 a step of transformers' GPT-2 spends most of its time on generic machinery (cache objects,
mask building, hooks), not arithmetic; `bench/bench_compose.py` measures both side by side. This module runs
the same arithmetic on the same weights with a preallocated key/value buffer. The transformers model stays the
format we train, save and load; `tests/test_fastgpt.py` checks that both give the same logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel


class FastGPT2:
    def __init__(self, model: GPT2LMHeadModel) -> None:
        cfg = model.config
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.head_dim = cfg.n_embd // cfg.n_head
        self.context = cfg.n_positions
        self.eps = cfg.layer_norm_epsilon
        t: Any = model.transformer  # typed loosely by transformers; these are GPT-2's modules
        self.wte = t.wte.weight.detach()
        self.wpe = t.wpe.weight.detach()
        self.blocks = [
            tuple(
                p.detach()
                for p in (
                    b.ln_1.weight,
                    b.ln_1.bias,
                    b.attn.c_attn.weight,
                    b.attn.c_attn.bias,
                    b.attn.c_proj.weight,
                    b.attn.c_proj.bias,
                    b.ln_2.weight,
                    b.ln_2.bias,
                    b.mlp.c_fc.weight,
                    b.mlp.c_fc.bias,
                    b.mlp.c_proj.weight,
                    b.mlp.c_proj.bias,
                )
            )
            for b in t.h
        ]
        self.ln_f = (t.ln_f.weight.detach(), t.ln_f.bias.detach())
        self.lm_head = model.lm_head.weight.detach()
        device, dtype = self.wte.device, self.wte.dtype
        shape = (len(self.blocks), self.n_head, self.context, self.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def reset(self) -> None:
        self.length = 0

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
