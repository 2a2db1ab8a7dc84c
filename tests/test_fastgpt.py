"""The lean sampler forward pass computes what transformers' GPT-2 computes."""

from __future__ import annotations

from dataclasses import replace

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
    fast = FastGPT2.from_model(model)
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
    fast = FastGPT2.from_model(build_model(vocab, 1, 16, 2, 8).eval())
    fast.forward(list(range(8)))
    with pytest.raises(ValueError, match="exceeds the context"):
        fast.forward([1])


def test_the_shipped_weights_read_from_safetensors_give_transformers_logits():
    from generator.model import load_model

    loaded = load_model()  # the weights straight from model.safetensors, no transformers model built
    reference = loaded.transformers_model()
    ids = [*loaded.vocab.prefix("bach", ["violin", "cello"], 100.0, "D"), loaded.vocab.program_token(40)]
    with torch.inference_mode():
        want = reference(input_ids=torch.tensor([ids])).logits[0, -1]
    fast = FastGPT2(loaded.shape, loaded.weights)
    torch.testing.assert_close(fast.forward(ids), want, rtol=1e-5, atol=1e-5)


def test_weights_that_disagree_with_the_config_are_named():
    import pytest

    from generator.fastgpt import GPT2Shape

    vocab = Vocab.build(["a"])
    model = build_model(vocab, 2, 16, 2, 8).eval()
    shape = GPT2Shape.from_config(model.config.to_dict())
    weights = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        FastGPT2(shape, weights | {"transformer.h.1.mlp.c_fc.weight": torch.zeros(16, 32)})
    with pytest.raises(ValueError, match="more than the config's 1 layers"):
        FastGPT2(replace(shape, n_layer=1), weights)
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Shape.from_config(model.config.to_dict() | {"activation_function": "relu"})
