"""A network and its tokenizer from wherever they are, the one lookup that medlm-generate, the
Generator API, medlm-eval and medlm-export share.

A source is a medlm training checkpoint (``.ckpt``: its tokenizer is the one its DataModule used,
``data.tokenizer``), a Hugging Face directory (GPT-2 or Llama by ``model_type``: its
``tokenizer.model``, or GPT-2's BPE for a GPT-2 vocabulary) or a Meta directory (``params.json``,
``consolidated.NN.pth`` and ``tokenizer.model``). A tokenizer given explicitly wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medlm.data.tokenizer import (
    Tokenizer,
    find_tokenizer_model,
    load_tokenizer,
    tokenizer_for_model_dir,
)
from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import load_network, network_from_checkpoint, read_checkpoint
from medlm.models.gpt2 import GPT2
from medlm.models.llama import Llama


@dataclass
class LoadedModel:
    """A network in eval mode on the CPU, its tokenizer, and the checkpoint dict it came from
    (None for a Hugging Face or Meta directory)."""

    net: nn.Module
    tokenizer: Tokenizer
    source: Path
    checkpoint: dict[str, Any] | None = None

    @property
    def is_causal_lm(self) -> bool:
        return isinstance(self.net, (GPT2, Llama))

    def data_settings(self) -> dict[str, Any]:
        """The DataModule settings the checkpoint was trained with (empty for a directory)."""
        return dict((self.checkpoint or {}).get("datamodule_hyper_parameters") or {})


def checkpoint_tokenizer(ckpt: dict[str, Any]) -> Tokenizer:
    """The tokenizer the checkpoint's DataModule tokenised with (``data.tokenizer``), else
    GPT-2's."""
    spec = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer")
    return load_tokenizer(spec if isinstance(spec, str) and spec else "gpt2")


def load_model(
    source: str | Path, tokenizer: str | Path | None = None, causal_lm: bool = False
) -> LoadedModel:
    """The network and tokenizer of ``source``; ``causal_lm`` refuses anything but GPT-2 and Llama.

    A tokenizer with more tokens than the model's vocabulary cannot be the model's own: a clear
    error rather than out-of-range ids later.
    """
    path = Path(source).expanduser()
    ckpt = None
    if path.is_file():
        ckpt = read_checkpoint(path)  # read once: the network and the tokenizer's name
        net = network_from_checkpoint(ckpt, str(path))
        tok = load_tokenizer(tokenizer) if tokenizer else checkpoint_tokenizer(ckpt)
    else:
        net = load_network(path)
        if tokenizer:
            tok = load_tokenizer(tokenizer)
        elif (path / "config.json").is_file():
            tok = tokenizer_for_model_dir(path, net.config.vocab_size)
        else:  # Meta's layout
            found = find_tokenizer_model(path)
            if found is None:
                raise MedlmError(
                    f"{path}: no tokenizer.model beside params.json; pass the tokenizer's path"
                )
            tok = load_tokenizer(found)
    loaded = LoadedModel(net.eval(), tok, path, ckpt)
    if causal_lm and not loaded.is_causal_lm:
        raise MedlmError(
            f"{source}: holds a {type(net).__name__}, not a causal language model (GPT2, Llama)"
        )
    vocab = net.config.vocab_size
    if tok.vocab_size > vocab:
        raise ConfigError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model at {source} only "
            f"{vocab}: they do not belong together (pass the model's own tokenizer)"
        )
    return loaded
