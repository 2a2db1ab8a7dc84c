"""Training: loss drops, curves and checkpoints are written, and a run resumes where it stopped."""

from __future__ import annotations

import contextlib
import csv
import math

from config.settings import Train
from generator.model import load_model
from generator.train import train


def test_curves_of_a_single_evaluation_show_it(tmp_path):
    """A run stopped after its first evaluation still shows it (a line through one point draws nothing)."""
    import matplotlib.image

    from generator.train import plot_curves

    row = {"step": 10, "train_loss": 3.0, "valid_loss": 3.2, "train_acc": 0.2, "valid_acc": 0.18}

    def blue(history: list[dict[str, float]]) -> int:  # pixels in the train curve's colour (matplotlib's C0)
        plot_curves(history, tmp_path / "curves.png")
        rgb = (matplotlib.image.imread(tmp_path / "curves.png")[..., :3] * 255).round()
        return int(((abs(rgb - (31, 119, 180))).max(axis=-1) <= 24).sum())

    assert blue([row]) > blue([]) + 20  # the legend is drawn either way; the point only with it


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


def test_two_processes_under_accelerate_train_one_model(dataset, tmp_path):
    """The same `concertbot train` command under `accelerate launch`: two CPU processes, gradients shared."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from serving import free_port

    tiny = {"N_LAYER": "1", "N_EMBD": "16", "N_HEAD": "2", "CONTEXT": "64", "BATCH_SIZE": "2"}
    env = {f"CONCERTBOT_TRAIN__{k}": v for k, v in tiny.items()}
    env |= {"CONCERTBOT_TRAIN__EVAL_EVERY": "2", "CONCERTBOT_TRAIN__SAVE_EVERY": "2"}
    env |= {"CONCERTBOT_PATHS__DATA_DIR": str(dataset.parent), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    run, out = tmp_path / "run", tmp_path / "model"
    done = subprocess.run(
        [*launch, "-m", "bot.cli", "train", "--run-dir", str(run), "--max-steps", "4", "--export", str(out)],
        cwd=Path(__file__).parent.parent,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 4 steps") == 1  # one report, one export: the main process's
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert float(rows[-1]["valid_loss"]) > 0
    card = load_model(out).card
    assert card["hardware"].split(",")[0].endswith("x2")


def test_fine_tuning_starts_from_a_models_weights_and_its_card_says_so(tiny_model, dataset, tmp_path):
    base = load_model(tiny_model / "best").card
    # The tiny model's shape, a small rate and few steps: a new model barely moves, a tuned one starts trained.
    update = {"warmup_steps": 1, "max_steps": 4, "eval_every": 4, "save_every": 4, "learning_rate": 1e-4}
    cfg = Train(**base["train"]).model_copy(update=update)
    train(dataset, tmp_path / "fresh", cfg, log=lambda _: None)
    train(dataset, tmp_path / "tuned", cfg, log=lambda _: None, init=tiny_model / "best")
    fresh, tuned = (load_model(tmp_path / run / "best").card for run in ("fresh", "tuned"))
    assert tuned["valid_loss"] < base["valid_loss"] + 0.1 < fresh["valid_loss"]
    assert tuned["started_from"]["step"] == base["step"] and fresh["started_from"] is None
    assert tuned["version"].endswith(f"-step{base['step']}+4")
    # Resuming the fine-tuning run keeps what it started from.
    train(dataset, tmp_path / "tuned", cfg.model_copy(update={"max_steps": 8}), resume=True, log=lambda _: None)
    assert load_model(tmp_path / "tuned" / "best").card["started_from"] == tuned["started_from"]
    # Tuning the tuned model again keeps the whole lineage in its name.
    prior = load_model(tmp_path / "tuned" / "best").card["version"]
    train(dataset, tmp_path / "again", cfg, log=lambda _: None, init=tmp_path / "tuned" / "best")
    assert load_model(tmp_path / "again" / "best").card["version"] == prior + "+4"
    assert prior.startswith(tuned["version"].rpartition("+")[0] + "+")


def test_fine_tuning_refuses_a_model_of_another_shape(tiny_model, dataset, tmp_path):
    import pytest

    from config.errors import ConfigError

    cfg = Train(n_layer=2, n_embd=16, n_head=2, context=96, batch_size=2, max_steps=2, eval_every=2)
    with pytest.raises(ConfigError, match="n_embd"):
        train(dataset, tmp_path, cfg, log=lambda _: None, init=tiny_model / "best")


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_exits_130(dataset, tmp_path):
    """A real `concertbot train` interrupted with SIGINT once it has taken a step, then resumed from there."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    tiny = {"N_LAYER": "1", "N_EMBD": "16", "N_HEAD": "2", "CONTEXT": "64", "BATCH_SIZE": "2"}
    env = {f"CONCERTBOT_TRAIN__{k}": v for k, v in tiny.items()}
    # An evaluation after every step says when one is done; no checkpoint is due for a long while.
    env |= {"CONCERTBOT_TRAIN__EVAL_EVERY": "1", "CONCERTBOT_TRAIN__SAVE_EVERY": "100000"}
    env |= {"CONCERTBOT_PATHS__DATA_DIR": str(dataset.parent), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["COLUMNS"] = "500"  # rich folds long paths at 80 columns when it does not write to a terminal
    run = tmp_path / "run"
    command = [sys.executable, "-m", "bot.cli", "train", "--run-dir", str(run)]
    trainer = subprocess.Popen(
        [*command, "--max-steps", "100000"],
        cwd=Path(__file__).parent.parent,
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    said: list[str] = []

    def read() -> None:
        assert trainer.stdout is not None
        for line in trainer.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not any("step 1:" in line for line in said):  # after the progress bar's text, on its line
            assert trainer.poll() is None and time.monotonic() < deadline, "".join(said)[-3000:]
            with contextlib.suppress(queue.Empty):
                said.append(lines.get(timeout=0.5))
        trainer.send_signal(signal.SIGINT)
        code = trainer.wait(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    while True:  # what it said after the signal
        try:
            said.append(lines.get(timeout=5))
        except queue.Empty:
            break
    output = " ".join("".join(said).split())
    assert code == 130, output[-3000:]
    assert "Traceback" not in output
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert checkpoints, output[-3000:]
    assert (checkpoints[-1] / "trainer.pt").is_file() and (checkpoints[-1] / "model.safetensors").is_file()
    assert f"checkpoint saved in {checkpoints[-1]}" in output and "--resume" in output

    step = int(checkpoints[-1].name.split("-")[1])
    resumed = subprocess.run(
        [*command, "--resume", "--max-steps", str(step + 1)],
        cwd=Path(__file__).parent.parent,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints[-1]} at step {step}" in " ".join(resumed.stdout.split())
