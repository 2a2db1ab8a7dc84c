"""`concertbot train`: fit the composer on a built data set, on CPU, one GPU, or several via Accelerate.

A run directory holds `metrics.csv` and `curves.png` (rewritten at every evaluation, so a user can watch
them and decide when to stop), `checkpoints/step-NNNNNN/` (the last few) and `best/` (lowest held-out loss).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from config.errors import ConfigError
from config.settings import Train
from generator.data import read_index
from generator.model import build_model, count_parameters, save_model
from generator.plan import learn_forms
from generator.recipes import summarize_styles
from generator.vocab import Vocab
from generator.voice_leading import learn_voices
from generator.windows import IGNORE, Batch, Windows

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import GPT2LMHeadModel

EVAL_WINDOWS_PER_STYLE = 32
FIELDS = ["step", "tokens", "elapsed_s", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc"]


@dataclass
class TrainResult:
    steps: int
    best_valid_loss: float
    per_style: dict[str, dict[str, float]]
    seconds: float
    run_dir: Path
    main_process: bool = True  # under `accelerate launch`, only the main process reports and exports


def _lr(step: int, cfg: Train) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _loss_acc(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example mean loss, per-example accuracy and the batch's mean loss over labelled tokens."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    loss = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none") * mask
    correct = (logits.argmax(-1) == target) & mask
    count = mask.sum(1).clamp(min=1)
    return loss.sum(1) / count, correct.sum(1) / count, loss.sum() / mask.sum().clamp(min=1)


def train(
    dataset_dir: Path,
    run_dir: Path,
    cfg: Train,
    resume: bool = False,
    log: Callable[[str], None] = print,
    init: Path | None = None,
) -> TrainResult:
    from accelerate import Accelerator
    from tqdm import tqdm

    gpu = torch.cuda.is_available()
    # cpu=True without a GPU: several launched processes then train together over gloo (MULTI_CPU) instead of
    # each training alone, which is how the multi-process path is tested on machines without GPUs.
    accelerator = Accelerator(mixed_precision="bf16" if gpu else "no", cpu=not gpu)
    vocab = Vocab.load(dataset_dir)
    train_set = Windows(dataset_dir, "train", vocab, cfg.context, augment=True)
    valid_set = Windows(dataset_dir, "valid", vocab, cfg.context, augment=False)
    eval_batches = valid_set.fixed(EVAL_WINDOWS_PER_STYLE)
    torch.manual_seed(cfg.seed)
    model = build_model(vocab, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.context, cfg.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    step, best, elapsed_before = 0, float("inf"), 0.0
    ckpt_dir = run_dir / "checkpoints"
    # What a fine-tuning run started from, for every model card it writes, resumed or not.
    init_file, started_from = run_dir / "init.json", None
    if resume and (latest := _latest(ckpt_dir)) is not None:
        state = torch.load(latest / "trainer.pt", map_location="cpu", weights_only=False)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(latest / "model.safetensors"), strict=False)
        model.tie_weights()
        optimizer.load_state_dict(state["optimizer"])
        step, best, elapsed_before = state["step"], state["best"], state["elapsed"]
        log(f"resumed from {latest} at step {step}")
        started_from = json.loads(init_file.read_text()) if init_file.is_file() else None
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ConfigError(f"{str(run_dir)!r} already holds a run; pass --resume or choose another --run-dir")
    elif init is not None:
        _load_init(model, vocab, init)
        started_from = _started_from(init)
        log(f"starting from the weights of {init}")
    model, optimizer = accelerator.prepare(model, optimizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    if started_from is not None:
        init_file.write_text(json.dumps(started_from))
    if accelerator.is_main_process:
        log(
            f"model: {count_parameters(model) / 1e6:.2f}M parameters, vocab {len(vocab)}, "
            f"context {cfg.context}; "
            f"train pieces {len(train_set.rows)}, held-out {len(valid_set.rows)}; device {accelerator.device}"
        )

    styles = describe_styles(dataset_dir, vocab) if accelerator.is_main_process else {}
    history = _read_history(run_dir / "metrics.csv") if resume else []
    started = time.time()
    tokens_seen = history[-1]["tokens"] if history else 0
    running: list[tuple[float, float]] = []
    per_style: dict[str, dict[str, float]] = {}
    # Redirected to a file, a bar redrawn ten times a second is mostly noise: redraw every 30 s there.
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="training",
        disable=not accelerator.is_main_process,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    saved = step  # the step of the newest checkpoint (a resumed run starts from one)
    try:
        while step < cfg.max_steps:
            model.train()
            rng = np.random.default_rng([cfg.seed, step, accelerator.process_index])
            batch = train_set.sample(rng, cfg.batch_size)
            ids, labels = _tensors(batch, accelerator.device)
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, cfg)
            with accelerator.autocast():
                logits = model(input_ids=ids, attention_mask=ids != vocab.pad).logits
            _, acc, loss = _loss_acc(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens_seen += int((labels != IGNORE).sum()) * accelerator.num_processes
            running.append((loss.item(), acc.mean().item()))
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                valid_loss, valid_acc, per_style = _evaluate(model, eval_batches, accelerator, vocab.pad)
                row = {
                    "step": step,
                    "tokens": tokens_seen,
                    "elapsed_s": round(elapsed_before + time.time() - started, 1),
                    "lr": _lr(step - 1, cfg),
                    "train_loss": float(np.mean([r[0] for r in running])),
                    "train_acc": float(np.mean([r[1] for r in running])),
                    "valid_loss": valid_loss,
                    "valid_acc": valid_acc,
                }
                running = []
                history.append(row)
                if accelerator.is_main_process:
                    _write_history(run_dir, history)
                    log(
                        f"step {step}: train loss {row['train_loss']:.3f}, held-out loss {valid_loss:.3f}, "
                        f"accuracy {valid_acc:.3f}"
                    )
                    if valid_loss < best:
                        best = valid_loss
                        card = _card(cfg, dataset_dir, row, per_style, accelerator, model, started_from, styles)
                        save_model(accelerator.unwrap_model(model), vocab, run_dir / "best", card)
            if accelerator.is_main_process and (step % cfg.save_every == 0 or step == cfg.max_steps):
                elapsed = elapsed_before + time.time() - started
                saved = _save_checkpoint(accelerator, model, optimizer, vocab, ckpt_dir, step, best, elapsed)
                for old in sorted(ckpt_dir.glob("step-*"))[: -cfg.keep_checkpoints]:
                    shutil.rmtree(old)
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learnt, and say how to go on from it.
        bar.close()
        if accelerator.is_main_process:
            if step == 0:
                log("interrupted before the first step; nothing to save")
            else:
                elapsed = elapsed_before + time.time() - started
                if saved != step:
                    _save_checkpoint(accelerator, model, optimizer, vocab, ckpt_dir, step, best, elapsed)
                log(
                    f"interrupted at step {step}: checkpoint saved in {ckpt_dir / f'step-{step:06d}'}; "
                    f"continue with `concertbot train --run-dir {run_dir} --resume`"
                )
        raise
    bar.close()
    elapsed = elapsed_before + time.time() - started
    return TrainResult(step, best, per_style, elapsed, run_dir, accelerator.is_main_process)


def _save_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    vocab: Vocab,
    ckpt_dir: Path,
    step: int,
    best: float,
    elapsed: float,
) -> int:
    """Save the weights and the optimizer's state as `ckpt_dir/step-NNNNNN`, for `--resume`; the step."""
    path = ckpt_dir / f"step-{step:06d}"
    save_model(accelerator.unwrap_model(model), vocab, path, {"step": step})
    torch.save(
        {"optimizer": optimizer.state_dict(), "step": step, "best": best, "elapsed": elapsed},
        path / "trainer.pt",
    )
    return step


def _tensors(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.labels).to(device)


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module, batches: list[Batch], accelerator: Accelerator, pad: int
) -> tuple[float, float, dict[str, dict[str, float]]]:
    model.eval()
    per_style: dict[str, dict[str, float]] = {}
    losses, accs, weights = [], [], []
    for batch in batches:
        ids, labels = _tensors(batch, accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=ids, attention_mask=ids != pad).logits
        loss, acc, _ = _loss_acc(logits, labels)
        n = (labels[:, 1:] != IGNORE).sum(1).float()
        style_loss = float((loss * n).sum() / n.sum())
        style_acc = float((acc * n).sum() / n.sum())
        per_style[batch.styles[0]] = {"loss": round(style_loss, 4), "accuracy": round(style_acc, 4)}
        losses.append(style_loss)
        accs.append(style_acc)
        weights.append(1.0)
    # Every style counts the same in the headline figure, however big its held-out split.
    return float(np.average(losses, weights=weights)), float(np.average(accs, weights=weights)), per_style


def describe_styles(dataset_dir: Path, vocab: Vocab) -> dict[str, dict[str, Any]]:
    """The card's `style_defaults`: each style's usual instruments, tempo and keys, its voices' leaps, its
    instruments' registers and its forms (generator.plan)."""
    styles = summarize_styles(read_index(dataset_dir))
    for style, voices in learn_voices(dataset_dir, vocab).items():
        styles[style].update(voices)
    for style, form in learn_forms(dataset_dir, vocab).items():
        styles[style]["form"] = form
    return styles


def _card(
    cfg: Train,
    dataset_dir: Path,
    row: dict[str, Any],
    per_style: dict[str, Any],
    accelerator: Accelerator,
    model: torch.nn.Module,
    started_from: dict[str, Any] | None,
    styles: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86_64'})"
    )
    # A fine-tuned model's steps read as the base's plus its own: step4000+1200, then step4000+1200+1500.
    # A checkpoint's card has no version, only its step.
    base_version = (started_from or {}).get("version") or ""
    base = base_version.rpartition("-step")[2] if "-step" in base_version else (started_from or {}).get("step")
    steps = f"{base}+{row['step']}" if base else row["step"]
    return {
        "version": f"concertbot-{cfg.n_layer}x{cfg.n_embd}-step{steps}",
        "started_from": started_from,
        "parameters": count_parameters(model),
        "train": cfg.model_dump(),
        "step": row["step"],
        "tokens_seen": row["tokens"],
        "train_seconds": row["elapsed_s"],
        "hardware": f"{device} x{accelerator.num_processes}, torch threads {torch.get_num_threads()}",
        "valid_loss": round(row["valid_loss"], 4),
        "valid_accuracy": round(row["valid_acc"], 4),
        "valid_per_style": per_style,
        "dataset": str(dataset_dir),
        "style_defaults": styles,
    }


def _load_init(model: GPT2LMHeadModel, vocab: Vocab, init: Path) -> None:
    """Start from a saved model's weights (fine-tuning); its vocabulary and shape must be this run's."""
    from safetensors.torch import load_file

    theirs = Vocab.load(init)
    if theirs.tokens != vocab.tokens:
        raise ConfigError(
            f"--init {str(init)!r}: its vocabulary differs from the data set's (styles {theirs.styles} against "
            f"{vocab.styles}); a model can only be fine-tuned on data with the same styles"
        )
    weights = load_file(init / "model.safetensors")
    mine = model.state_dict()
    for name, tensor in weights.items():
        if name in mine and mine[name].shape != tensor.shape:
            raise ConfigError(
                f"--init {str(init)!r}: {name} has shape {tuple(tensor.shape)}, the [train] settings give "
                f"{tuple(mine[name].shape)}; set n_layer, n_embd, n_head and context to the model's"
            )
    model.load_state_dict(weights, strict=False)
    model.tie_weights()


def _started_from(init: Path) -> dict[str, Any]:
    card = json.loads((init / "card.json").read_text()) if (init / "card.json").is_file() else {}
    keep = ("version", "step", "tokens_seen", "train_seconds", "hardware", "dataset")
    return {"path": str(init), **{k: card.get(k) for k in keep}}


def _latest(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.exists() else []
    return found[-1] if found else None


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path) as f:
        return [{k: float(v) if k != "step" else int(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, run_dir / "curves.png")
    (run_dir / "last_eval.json").write_text(json.dumps(history[-1]))


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    # Markers: a line through one evaluation draws nothing at all.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [r["train_loss"] for r in history], label="train", marker="o", markersize=3)
    ax1.plot(steps, [r["valid_loss"] for r in history], label="held-out", marker="o", markersize=3)
    ax1.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax2.plot(steps, [r["train_acc"] for r in history], label="train", marker="o", markersize=3)
    ax2.plot(steps, [r["valid_acc"] for r in history], label="held-out", marker="o", markersize=3)
    ax2.set(xlabel="step", ylabel="next-token accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
