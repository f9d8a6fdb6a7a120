"""LoRA (Hu et al. 2021) for any medlm model, numerically the same as PEFT's ``lora.Linear``.

``apply_lora`` swaps the targeted ``nn.Linear`` layers for :class:`LoRALinear` and freezes every
other weight, so that only the low-rank adapters (and any ``modules_to_save``, e.g. a classifier
head) train. Module and tensor names follow PEFT (``base_layer``, ``lora_A``, ``lora_B``), so an
adapter maps onto PEFT's files by a prefix alone (see ``medlm.models.classifier.export_peft``).

    y = base(x) + scale * B(A(dropout(x)))      scale = alpha / r
    A: kaiming_uniform_(a=sqrt(5)) as nn.Linear's default; B: zeros, so a fresh adapter is a no-op.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from medlm.errors import ConfigError, MedlmError
from medlm.utils.checks import check_positive_int, check_positive_number, check_probability


@dataclass
class LoRAConfig:
    """What ``apply_lora`` did to a model; kept on it as ``model.lora_config`` for saving and
    export."""

    targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.1
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        self.modules_to_save = (
            [self.modules_to_save]
            if isinstance(self.modules_to_save, str)
            else list(self.modules_to_save or [])
        )
        if not self.targets:
            raise ConfigError(
                "lora.targets: name at least one module to adapt (e.g. [c_attn, c_proj])"
            )
        for p in self.targets + self.modules_to_save:
            try:
                re.compile(p)
            except re.error as err:
                raise ConfigError(
                    f"lora module pattern {p!r} is not a valid regular expression: {err}"
                ) from None
        check_positive_int(self.r, "lora.r")
        check_positive_number(self.alpha, "lora.alpha")
        check_probability(self.dropout, "lora.dropout")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable rank-``r`` update ``scale * B @ A``; mergeable into the
    weight."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        w = base_layer.weight
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(
            base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype
        )
        self.lora_B = nn.Linear(
            r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype
        )
        self.merged = False
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> Tensor:
        """The base weight (merged or not), so code that reads ``layer.weight`` keeps working."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """scale * B @ A, (out, in), computed in fp32 and cast to the base weight's dtype."""
        w = self.base_layer.weight
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scale
        return delta.to(w.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., in) -> (..., out)
        if self.merged:
            return y
        a = self.lora_A(self.lora_dropout(x).to(self.lora_A.weight.dtype))  # (..., r)
        return y + (self.lora_B(a) * self.scale).to(y.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, merged={self.merged}"


def _matches(name: str, pattern: str) -> bool:
    """PEFT's rule for a list of names (``name`` is the pattern or ends in ``.pattern``), or a
    regex."""
    return (
        name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name) is not None
    )


def _matching_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    return [n for n, _ in model.named_modules() if n and any(_matches(n, p) for p in patterns)]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(
    model: nn.Module,
    targets: Iterable[str] | str = ("c_attn", "c_proj"),
    r: int = 8,
    alpha: float = 32.0,
    dropout: float = 0.1,
    modules_to_save: Iterable[str] | str = (),
) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name matches a pattern of ``targets`` in :class:`LoRALinear`.

    A pattern matches a module whose name is the pattern or ends with ``.<pattern>`` (``"c_proj"``
    matches ``attn.c_proj`` and ``mlp.c_proj``, as in PEFT), or whose full name the pattern matches
    as a regular expression. All base weights are frozen; LoRA weights and the modules matching
    ``modules_to_save`` (e.g. ``"score"``, a freshly initialised head) stay trainable. In place;
    returns ``model``.
    """
    cfg = LoRAConfig(
        targets=targets, r=r, alpha=alpha, dropout=dropout, modules_to_save=modules_to_save
    )
    if lora_layers(model):
        raise ConfigError("apply_lora: the model already has LoRA layers")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    chosen = [n for n in linears if any(_matches(n, p) for p in cfg.targets)]
    unused = [p for p in cfg.targets if not any(_matches(n, p) for n in linears)]
    if unused:
        names = sorted({n.split(".")[-1] for n in linears})
        raise ConfigError(
            f"lora.targets {unused} match no nn.Linear of {type(model).__name__} "
            f"(its linear layers are named {names})"
        )
    saved = _matching_modules(model, cfg.modules_to_save)
    unused = [p for p in cfg.modules_to_save if not any(_matches(n, p) for n in saved)]
    if unused:
        raise ConfigError(
            f"lora.modules_to_save {unused} match no module of {type(model).__name__}"
        )

    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, cfg.dropout))
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    model.lora_config = cfg
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter alone: every ``lora_A``/``lora_B`` weight and the ``modules_to_save`` tensors."""
    if not lora_layers(model):
        raise MedlmError(f"{type(model).__name__} has no LoRA layers (call apply_lora first)")
    cfg = getattr(model, "lora_config", None)
    prefixes = [n + "." for n in _matching_modules(model, cfg.modules_to_save if cfg else [])]
    return {
        k: v
        for k, v in model.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k or any(k.startswith(p) for p in prefixes)
    }


def load_lora_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "adapter"
) -> None:
    """Load an adapter saved by :func:`lora_state_dict`; a missing, extra or mis-shaped tensor is
    named.

    Merged layers are unmerged first and merged again after, so that the new adapter replaces the
    old.
    """
    own = lora_state_dict(model)
    if own.keys() != state_dict.keys():
        raise MedlmError(
            f"{source}: adapter tensors do not match the model: missing "
            f"{sorted(own.keys() - state_dict.keys())[:5]}, unexpected "
            f"{sorted(state_dict.keys() - own.keys())[:5]}"
        )
    wrong = [k for k in own if state_dict[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise MedlmError(
            f"{source}: tensor {k} has shape {tuple(state_dict[k].shape)}, the model "
            f"expects {tuple(own[k].shape)}"
        )
    merged = [m for m in lora_layers(model).values() if m.merged]
    for m in merged:
        m.unmerge()
    model.load_state_dict(dict(state_dict), strict=False)
    for m in merged:
        m.merge()


def merge_lora(model: nn.Module, unwrap: bool = False) -> nn.Module:
    """Fold every adapter into its base weight (outputs unchanged, no extra cost at inference).

    ``unwrap=True`` also puts the plain ``nn.Linear`` back in place of each :class:`LoRALinear`, so
    that the state dict has the base model's names again (for export); that cannot be undone.
    """
    for name, layer in lora_layers(model).items():
        layer.merge()
        if unwrap:
            parent_name, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent_name) if parent_name else model, child, layer.base_layer
            )
    if unwrap and hasattr(model, "lora_config"):
        del model.lora_config
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


class ParameterSummary(NamedTuple):
    """Trainable and total parameter counts (tied weights counted once); ``str()`` is one log
    line."""

    trainable: int
    total: int
    share: float  # trainable / total, in [0, 1]

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {100 * self.share:.4f}"
        )


def trainable_parameter_summary(model: nn.Module) -> ParameterSummary:
    params = list(model.parameters())  # deduplicated: a tied weight counts once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterSummary(trainable, total, trainable / total if total else 0.0)
