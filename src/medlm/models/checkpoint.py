"""Rebuild a medlm network from a training checkpoint, without running pickled code.

Training checkpoints carry a ``medlm_model`` entry ({"target": "medlm.models.gpt2.GPT2",
"config": {...}}) beside the state dict, so generation and export need nothing but the file.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlm.errors import MedlmError


def model_spec(net: nn.Module) -> dict[str, Any]:
    """What rebuilds ``net``: its class and its config dataclass as plain values."""
    return {"target": f"{type(net).__module__}.{type(net).__qualname__}",
            "config": dataclasses.asdict(net.config)}


def build_model(spec: dict[str, Any]) -> nn.Module:
    module_name, _, class_name = spec["target"].rpartition(".")
    if not module_name.startswith("medlm."):
        raise MedlmError(f"checkpoint names model class {spec['target']!r}, which is not a medlm model")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(_config_type(cls)(**spec["config"]))


def _config_type(cls: type) -> type:
    """The config dataclass a model class takes: ``GPT2`` -> ``GPT2Config`` from the same module."""
    module = importlib.import_module(cls.__module__)
    return getattr(module, f"{cls.__name__}Config")


def load_model(path: str | Path, prefix: str = "net.") -> nn.Module:
    """The network of a medlm ``.ckpt`` (weights_only load), in eval mode on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise MedlmError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or one holding pickled objects
        raise MedlmError(f"{path}: cannot read as a weights-only checkpoint ({type(err).__name__}: {err})") from None
    if "medlm_model" not in ckpt:
        raise MedlmError(f"{path}: not a medlm training checkpoint (no 'medlm_model' entry)")
    net = build_model(ckpt["medlm_model"])
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    return net.eval()
