"""A sequence classifier on any medlm backbone, as Hugging Face's ``GPT2ForSequenceClassification``.

The backbone's final hidden state at the last real token goes through ``score`` (no bias), so a
causal LM reads the whole text before deciding. Loading a HF classifier and exporting to HF and
PEFT is :mod:`medlm.models.convert_classifier`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medlm.errors import ConfigError
from medlm.models.kv_cache import padded_causal_mask
from medlm.models.lora import apply_lora
from medlm.utils.checks import check_positive_int


class SequenceClassifier(nn.Module):
    """``backbone.hidden_states`` -> last non-padding token -> ``score`` -> logits (B,
    num_labels)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int = 2,
        pad_token_id: int | None = None,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_labels, "model.num_labels")
        if not hasattr(backbone, "hidden_states"):
            raise ConfigError(f"model.backbone: {type(backbone).__name__} has no hidden_states()")
        cfg = getattr(backbone, "config", None)
        hidden_size = hidden_size or getattr(cfg, "n_embd", None)
        if not hidden_size:
            raise ConfigError(
                f"model.hidden_size: cannot tell the width of {type(backbone).__name__}"
            )
        self.backbone = backbone
        self.num_labels, self.pad_token_id = num_labels, pad_token_id
        w = next(backbone.parameters())
        self.score = nn.Linear(hidden_size, num_labels, bias=False, device=w.device, dtype=w.dtype)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)  # as HF's _init_weights

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids, optional (B, T) 1/0 mask of real tokens -> (B, num_labels) logits.

        The scored token is the last one the mask marks real; without a mask, the last one that is
        not ``pad_token_id`` (HF's rule), else the last position. Left or right padding both work.
        """
        B, T = input_ids.shape
        idx = torch.arange(T, device=input_ids.device)  # (T,)
        mask = None
        if attention_mask is not None:
            real = attention_mask.bool()  # (B, T)
            last = (idx * real).argmax(-1)  # (B,) rightmost real token
            if not real.all():
                mask = padded_causal_mask(real, T)  # (B, 1, T, T)
        elif self.pad_token_id is not None:
            last = (idx * (input_ids != self.pad_token_id)).argmax(-1)  # (B,)
        else:
            last = torch.full((B,), T - 1, device=input_ids.device)
        h = self.backbone.hidden_states(input_ids, mask=mask)  # (B, T, C)
        pooled = h[torch.arange(B, device=h.device), last]  # (B, C)
        return self.score(pooled)  # (B, num_labels)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        num_labels: int = 2,
        pad_token_id: int | None = None,
        **overrides: Any,
    ) -> SequenceClassifier:
        """A GPT-2 classifier from a HF directory or hub id: a GPT2ForSequenceClassification
        brings its trained head, any other GPT-2 gets a fresh one. See
        :func:`~medlm.models.convert_classifier.load_hf_classifier`."""
        from medlm.models.convert_classifier import load_hf_classifier  # it imports this module

        return load_hf_classifier(pretrained, num_labels, pad_token_id, **overrides)


def lora_classifier(
    pretrained: str | Path,
    num_labels: int = 2,
    targets: Iterable[str] = ("c_attn", "c_proj"),
    r: int = 8,
    alpha: float = 32.0,
    dropout: float = 0.1,
    pad_token_id: int | None = None,
    **overrides,
) -> SequenceClassifier:
    """``SequenceClassifier.from_pretrained`` + LoRA on ``targets``; the ``score`` head trains too.

    One call that a Hydra model config can target.
    """
    model = SequenceClassifier.from_pretrained(
        pretrained, num_labels, pad_token_id=pad_token_id, **overrides
    )
    return apply_lora(model, targets, r=r, alpha=alpha, dropout=dropout, modules_to_save=["score"])


def linear_probe(
    pretrained: str | Path, num_labels: int = 2, pad_token_id: int | None = None, **overrides
) -> SequenceClassifier:
    """``SequenceClassifier.from_pretrained`` with the backbone frozen: only ``score`` trains.

    The baseline LoRA is measured against: what the base model's own features tell a linear head.
    ``overrides`` go to ``GPT2.from_pretrained`` (``dropout=0.0`` keeps the frozen features fixed).
    """
    model = SequenceClassifier.from_pretrained(
        pretrained, num_labels, pad_token_id=pad_token_id, **overrides
    )
    model.backbone.requires_grad_(False)
    return model
