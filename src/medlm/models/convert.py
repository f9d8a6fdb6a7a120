"""Reading and writing Hugging Face checkpoint directories, for every medlm model.

Each model knows its own name mapping (``Model.from_pretrained`` / ``model.to_hf()``); this module
only moves tensors between files and state dicts, safely: no pickled code is ever run
(safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from medlm.errors import MedlmError
from medlm.utils.io import atomic_path, atomic_write


def read_hf_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise MedlmError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedlmError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None


def read_hf_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors``, sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``."""
    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return load_file(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (d / shard).is_file():
                raise MedlmError(f"{index}: shard {shard} is missing from {d}")
            state.update(load_file(d / shard))
        return state
    if (d / "pytorch_model.bin").is_file():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise MedlmError(
        f"{d}: no weights (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def write_hf_checkpoint(directory: str | Path, config: Mapping, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors``, each atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(d / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_write(d / "config.json") as f:
        json.dump(dict(config), f, indent=2)
    return d


def load_matching(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``; a missing, unexpected or mis-shaped tensor is named."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise MedlmError(f"{source}: tensors do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for name, tensor in state_dict.items():
        if tensor.shape != own[name].shape:
            raise MedlmError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(own[name].shape)}")
    model.load_state_dict(state_dict, strict=True)
