"""Training: loss drops, curves and checkpoints are written, and a run resumes where it stopped."""

from __future__ import annotations

import csv
import math

from config.settings import Train
from generator.model import load_model
from generator.train import train


def test_tiny_model_learns(tiny_model, dataset):
    with open(tiny_model / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    vocab_size = len(load_model(tiny_model / "best").vocab)
    first, last = float(rows[0]["valid_loss"]), float(rows[-1]["valid_loss"])
    assert last < first < math.log(vocab_size) + 0.5
    assert float(rows[-1]["train_acc"]) > float(rows[0]["train_acc"])
    assert (tiny_model / "curves.png").stat().st_size > 10_000
    card = load_model(tiny_model / "best").card
    assert set(card["valid_per_style"]) <= {"bach", "irish", "anthems"}
    assert card["style_defaults"]["anthems"]["instruments"]


def test_keeps_the_last_checkpoints_and_resumes(dataset, tmp_path):
    cfg = Train(
        n_layer=1,
        n_embd=16,
        n_head=2,
        context=64,
        batch_size=4,
        warmup_steps=1,
        max_steps=6,
        eval_every=2,
        save_every=2,
        keep_checkpoints=2,
        dropout=0.0,
    )
    train(dataset, tmp_path, cfg, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    lines: list[str] = []
    result = train(dataset, tmp_path, cfg.model_copy(update={"max_steps": 8}), resume=True, log=lines.append)
    assert result.steps == 8
    assert any("resumed from" in line and "step-000006" in line for line in lines)
    with open(tmp_path / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4, 6, 8]


def test_refuses_to_overwrite_a_run(dataset, tmp_path):
    import pytest

    from config.errors import ConfigError

    cfg = Train(
        n_layer=1, n_embd=16, n_head=2, context=64, batch_size=2, max_steps=2, eval_every=2, save_every=2
    )
    train(dataset, tmp_path, cfg, log=lambda _: None)
    with pytest.raises(ConfigError, match="--resume"):
        train(dataset, tmp_path, cfg, log=lambda _: None)
