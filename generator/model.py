"""The composer model: a small GPT-2 from Hugging Face transformers, saved with its vocabulary.

A model directory holds `config.json` + `model.safetensors` (transformers' own format), `vocab.json` +
`tokenizer.json` (generator.vocab), and `card.json` (what it was trained on and how well it did).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from config.errors import ConfigError
from generator.vocab import Vocab

hf_logging.disable_progress_bar()  # "Writing model shards" bars would bury the training log
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def build_model(vocab: Vocab, n_layer: int, n_embd: int, n_head: int, context: int, dropout: float = 0.1):
    if n_embd % n_head:
        raise ConfigError(f"n_embd={n_embd} must be a multiple of n_head={n_head}")
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=context,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=vocab.bos,
        eos_token_id=vocab.eos,
        pad_token_id=vocab.pad,
    )
    return GPT2LMHeadModel(config)


@dataclass
class LoadedModel:
    model: GPT2LMHeadModel
    vocab: Vocab
    card: dict[str, Any]
    path: Path

    @property
    def context(self) -> int:
        return int(self.model.config.n_positions)

    @property
    def version(self) -> str:
        """Names the exact weights, so a stored recipe says which model made it."""
        return str(self.card.get("version", self.path.name))


def save_model(model: GPT2LMHeadModel, vocab: Vocab, directory: Path, card: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save(directory)
    (directory / "card.json").write_text(json.dumps(card, indent=1, default=str))


def load_model(directory: Path | None = None, device: str = "cpu") -> LoadedModel:
    """Load a saved model for sampling (eval mode, no dropout); None means the shipped default."""
    path = Path(directory) if directory else DEFAULT_MODEL_DIR
    if not (path / "config.json").is_file():
        raise ConfigError(f"no concertbot model in {str(path)!r} (expected config.json and model.safetensors)")
    vocab = Vocab.load(path)
    model: Any = GPT2LMHeadModel.from_pretrained(path)
    model = model.to(device).eval()
    if model.config.vocab_size != len(vocab):
        raise ConfigError(
            f"model in {str(path)!r} has {model.config.vocab_size} tokens, vocab has {len(vocab)}"
        )
    card_path = path / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return LoadedModel(model, vocab, card, path)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
