"""The composer model: a small GPT-2 in Hugging Face transformers' format, saved with its vocabulary.

A model directory holds `config.json` + `model.safetensors` (transformers' own format), `vocab.json` +
`tokenizer.json` (generator.vocab), and `card.json` (what it was trained on and how well it did). Training
builds and saves it with transformers; sampling reads the weights with safetensors alone (generator.fastgpt),
since importing transformers took seconds of every concert's start-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from config.errors import ConfigError
from generator.fastgpt import GPT2Shape
from generator.vocab import Vocab

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def build_model(
    vocab: Vocab, n_layer: int, n_embd: int, n_head: int, context: int, dropout: float = 0.1
) -> GPT2LMHeadModel:
    from transformers import GPT2Config, GPT2LMHeadModel

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
    """A model read for sampling: its sizes, its tensors by transformers' names, vocabulary and card."""

    shape: GPT2Shape
    weights: dict[str, torch.Tensor]
    vocab: Vocab
    card: dict[str, Any]
    path: Path

    @property
    def context(self) -> int:
        return self.shape.context

    def transformers_model(self) -> GPT2LMHeadModel:
        """The same weights as transformers' model (eval mode), for comparing with it; imports transformers."""
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar for loading 8 MB would only clutter the bench's table
        model: Any = GPT2LMHeadModel.from_pretrained(self.path)
        placed: GPT2LMHeadModel = model.to(self.weights["transformer.wte.weight"].device).eval()
        return placed

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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars would bury the training log
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save(directory)
    (directory / "card.json").write_text(json.dumps(card, indent=1, default=str))


def load_model(directory: Path | None = None, device: str = "cpu") -> LoadedModel:
    """Load a saved model for sampling; None means the shipped default.

    Raises:
        ConfigError: the directory holds no model, or one of its files is broken (named in the message).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) if directory else DEFAULT_MODEL_DIR
    if not (path / "config.json").is_file():
        raise ConfigError(f"no concertbot model in {str(path)!r} (expected config.json and model.safetensors)")
    # Each file is checked on its own first, so that a broken one is named, rather than shown as a traceback
    # from deep inside MidiTok or safetensors.
    for name in ("vocab.json", "tokenizer.json", "card.json"):
        if (path / name).is_file():
            _read_json(path / name)
    config = _read_json(path / "config.json")
    vocab = Vocab.load(path)
    weights_path = path / "model.safetensors"
    if not weights_path.is_file():
        raise ConfigError(f"no model.safetensors in {str(path)!r}: the model's weights are missing")
    try:
        weights = load_file(str(weights_path), device=device)
    except (SafetensorError, OSError) as exc:
        raise ConfigError(
            f"{str(weights_path)!r} is broken ({_first_line(exc)}); copy or export it again"
        ) from None
    try:
        if not isinstance(config, dict):
            raise ValueError("it is not a JSON object")
        shape = GPT2Shape.from_config(config)
        shape.check(weights)
    except ValueError as exc:
        # The weights read as weights and the config as JSON, yet they do not fit together.
        raise ConfigError(
            f"{str(path / 'config.json')!r} does not describe the weights beside it ({_first_line(exc)})"
        ) from None
    if shape.vocab_size != len(vocab):
        raise ConfigError(f"model in {str(path)!r} has {shape.vocab_size} tokens, vocab has {len(vocab)}")
    card_path = path / "card.json"
    card = _read_json(card_path) if card_path.is_file() else {}
    return LoadedModel(shape, weights, vocab, card, path)


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
