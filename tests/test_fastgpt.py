"""The lean sampler forward pass computes what transformers' GPT-2 computes."""

from __future__ import annotations

import torch

from generator.fastgpt import FastGPT2
from generator.model import build_model
from generator.vocab import Vocab


def test_same_logits_as_transformers_prefill_and_step_by_step():
    torch.manual_seed(0)
    vocab = Vocab.build(["a", "b"])
    model = build_model(vocab, n_layer=2, n_embd=32, n_head=4, context=64, dropout=0.0).eval()
    ids = torch.randint(0, len(vocab), (20,)).tolist()
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([ids])).logits[0]
    fast = FastGPT2(model)
    got = [fast.forward(ids[:8])]
    got += [fast.forward([t]) for t in ids[8:14]]
    got.append(fast.forward(ids[14:]))
    want = [reference[7], *reference[8:14], reference[19]]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    fast.reset()
    torch.testing.assert_close(fast.forward(ids[:3]), reference[2], rtol=1e-4, atol=1e-4)


def test_refuses_to_run_past_its_context():
    import pytest

    vocab = Vocab.build(["a"])
    fast = FastGPT2(build_model(vocab, 1, 16, 2, 8).eval())
    fast.forward(list(range(8)))
    with pytest.raises(ValueError, match="exceeds the context"):
        fast.forward([1])
