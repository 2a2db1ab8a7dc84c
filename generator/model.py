"""The composer model: a small GPT-2 from Hugging Face transformers, saved with its vocabulary.

A model directory holds `config.json` + `model.safetensors` (transformers' own format), `vocab.json` +
`tokenizer.json` (generator.vocab), and `card.json` (what it was trained on and how well it did).
"""

from __future__ import annotations

import hashlib
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
        """Names the exact weights and the forms its pieces follow, so a stored recipe says what made it.

        Forms learnt into a card after training (`concertbot data forms`) change every seed's notes, so they
        are part of the name: a piece cut short under other forms is never regenerated as if it were the same.
        """
        name = str(self.card.get("version", self.path.name))
        forms = {s: d["form"] for s, d in sorted(self.card.get("style_defaults", {}).items()) if d.get("form")}
        if not forms:
            return name
        digest = hashlib.sha1(json.dumps(forms, sort_keys=True).encode()).hexdigest()[:6]
        return f"{name}+forms-{digest}"


def save_model(model: GPT2LMHeadModel, vocab: Vocab, directory: Path, card: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save(directory)
    (directory / "card.json").write_text(json.dumps(card, indent=1, default=str))


def load_model(directory: Path | None = None, device: str = "cpu") -> LoadedModel:
    """Load a saved model for sampling (eval mode, no dropout); None means the shipped default.

    Raises:
        ConfigError: the directory holds no model, or one of its files is broken (named in the message).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(directory) if directory else DEFAULT_MODEL_DIR
    if not (path / "config.json").is_file():
        raise ConfigError(f"no concertbot model in {str(path)!r} (expected config.json and model.safetensors)")
    # Each file is checked on its own first, so that a broken one is named, rather than shown as a traceback
    # from deep inside transformers, MidiTok or safetensors.
    for name in ("config.json", "vocab.json", "tokenizer.json", "card.json"):
        if (path / name).is_file():
            _read_json(path / name)
    vocab = Vocab.load(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"no model.safetensors in {str(path)!r}: the model's weights are missing")
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{str(weights)!r} is broken ({_first_line(exc)}); copy or export it again") from None
    try:
        model: Any = GPT2LMHeadModel.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        # The weights read as weights and the config as JSON, yet they do not fit together.
        raise ConfigError(
            f"{str(path / 'config.json')!r} does not describe the weights beside it ({_first_line(exc)})"
        ) from None
    model = model.to(device).eval()
    if model.config.vocab_size != len(vocab):
        raise ConfigError(
            f"model in {str(path)!r} has {model.config.vocab_size} tokens, vocab has {len(vocab)}"
        )
    card_path = path / "card.json"
    card = _read_json(card_path) if card_path.is_file() else {}
    return LoadedModel(model, vocab, card, path)


def _read_json(path: Path) -> Any:
    """A model file's JSON; `ConfigError` naming the file if it is not JSON."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{str(path)!r} is broken ({_first_line(exc)}); copy or export it again") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
