"""Weights on disk: the one module that reads them, and the one loader of medlm networks.

- ``read_checkpoint(path)``: any torch file (a Lightning ``.ckpt``, a Meta shard,
  ``pytorch_model.bin``) as a dict, weights only: no pickled code runs, and a file that cannot be
  read is one MedlmError line that names it.
- ``read_hf_config`` / ``read_hf_state_dict`` / ``write_hf_checkpoint``: Hugging Face directories;
  ``resolve_pretrained``: a local directory, or a hub id fetched into the HF cache.
- ``network_spec`` / ``build_network``: the network a medlm checkpoint holds, under
  :data:`NETWORK_KEY`: its class and config, its LoRA adapters and which parameters train, as
  plain values that a weights-only load reads back.
- ``load_network(path)``: a medlm ``.ckpt``, a Hugging Face directory or a Meta directory -> the
  network, in eval mode on the CPU.

Name maps and layouts of other formats are the conversion modules' (``convert_gpt2``,
``convert_llama``, ``convert_classifier``); this module only moves tensors between files and
networks.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from medlm.errors import MedlmError
from medlm.models.classifier import SequenceClassifier
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig
from medlm.models.lora import apply_lora
from medlm.utils.io import atomic_path, atomic_write

NETWORK_KEY = "medlm_network"  # a medlm checkpoint's entry that names its network

# ----------------------------------------------------------------------------------------------
# Torch files

_PICKLED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A torch file as a dict, loaded weights-only and memory-mapped where its format allows
    (tensors are read when touched); a missing, truncated, pickled or non-dict file is a
    MedlmError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MedlmError(f"{path}: checkpoint not found")
    zipped = zipfile.is_zipfile(path)  # torch's format since 1.6; only it can be memory-mapped
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EIO, errno.EISDIR):
            raise MedlmError(f"{path}: cannot be read ({err.strerror or err})") from None
        # torch's older-format reader seeks past the end of a truncated zip: EINVAL
        raise MedlmError(
            f"{path}: cannot be read as a weights-only checkpoint: truncated, or not a torch file"
        ) from None
    except pickle.UnpicklingError as err:
        pickled = _PICKLED_GLOBAL.search(str(err))
        why = (
            f"it holds a pickled {pickled[1]} object, and medlm loads tensors and plain values only"
            if pickled
            else "truncated, or not a torch file"
        )
        raise MedlmError(f"{path}: cannot be read as a weights-only checkpoint: {why}") from None
    except Exception:  # a truncated zip, an empty file, bytes that are no pickle at all
        raise MedlmError(
            f"{path}: cannot be read as a weights-only checkpoint: truncated, or not a torch file"
        ) from None
    if not isinstance(ckpt, dict):
        raise MedlmError(f"{path}: holds a {type(ckpt).__name__}, not the dict of a checkpoint")
    return ckpt


# ----------------------------------------------------------------------------------------------
# Hugging Face directories

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# what a hub download asks for: safetensors first, pytorch_model.bin only where there is none
_HUB_PATTERNS = (
    ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
    ["config.json", "pytorch_model.bin"],
)


def resolve_pretrained(pretrained: str | Path) -> Path:
    """A local directory as is; anything else is a hub id, downloaded (or found in the HF cache)."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path
    name = str(pretrained)
    if path.exists():
        raise MedlmError(
            f"{name}: not a directory (a model is a directory with config.json and weights)"
        )
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id
        raise MedlmError(f"{name}: no such model directory")
    try:
        from huggingface_hub import snapshot_download

        for patterns in _HUB_PATTERNS:
            directory = Path(snapshot_download(name, allow_patterns=patterns))
            if any((directory / f).is_file() for f in _WEIGHT_FILES):
                return directory
    except Exception as err:  # offline, unreachable, unknown repo, gated: all mean "not here"
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise MedlmError(
            f"{name}: could not download the model from the Hugging Face Hub "
            f"({type(err).__name__}: {reason}); pass a local directory instead (on a machine "
            f"with internet, medlm-prepare stage DIR --models {name} writes DIR/models/"
            f"{name.rsplit('/', 1)[-1]})"
        ) from None
    raise MedlmError(
        f"{name}: the Hugging Face Hub repository has no model.safetensors or pytorch_model.bin"
    )


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise MedlmError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedlmError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise MedlmError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_hf_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """Tensors of ``model.safetensors``, sharded safetensors with an index, or
    ``pytorch_model.bin``."""
    d = Path(directory)
    if (d / "model.safetensors").is_file():
        return load_file(d / "model.safetensors")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            if not (d / shard).is_file():
                raise MedlmError(f"{index}: shard {shard} is missing from {d}")
            state.update(load_file(d / shard))
        return state
    if (d / "pytorch_model.bin").is_file():
        return read_checkpoint(d / "pytorch_model.bin")
    raise MedlmError(
        f"{d}: no weights (expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin)"
    )


def write_hf_checkpoint(
    directory: str | Path, config: Mapping, state_dict: Mapping[str, Tensor]
) -> Path:
    """Write ``config.json`` and ``model.safetensors``, each atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(d / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_write(d / "config.json") as f:
        json.dump(dict(config), f, indent=2)
    return d


def load_matching(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``; a missing, unexpected or mis-shaped tensor is named."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise MedlmError(
            f"{source}: tensors do not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in state_dict.items():
        if tensor.shape != own[name].shape:
            raise MedlmError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[name].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)


# ----------------------------------------------------------------------------------------------
# The network of a medlm checkpoint

_CONFIGS: dict[type, type] = {GPT2: GPT2Config, Llama: LlamaConfig}  # built from one dataclass
_NETWORKS = {f"{c.__module__}.{c.__qualname__}": c for c in (GPT2, Llama, SequenceClassifier)}


def network_spec(net: nn.Module) -> dict[str, Any]:
    """What rebuilds ``net`` (:func:`build_network`), as plain values: ``target`` (the class),
    ``config``, ``lora`` (the settings of ``apply_lora``, or None) and ``trainable`` (the names of
    the parameters that train, or None when all do)."""
    params = dict(net.named_parameters())
    trainable = sorted(n for n, p in params.items() if p.requires_grad)
    lora = getattr(net, "lora_config", None)
    return {
        **_describe(net),
        "lora": dataclasses.asdict(lora) if lora else None,
        "trainable": None if len(trainable) == len(params) else trainable,
    }


def _describe(net: nn.Module) -> dict[str, Any]:
    """``target`` and ``config`` of a network; a classifier's config holds its backbone's."""
    target = f"{type(net).__module__}.{type(net).__qualname__}"
    if isinstance(net, SequenceClassifier):
        config = {
            "backbone": _describe(net.backbone),
            "num_labels": net.num_labels,
            "pad_token_id": net.pad_token_id,
        }
    elif type(net) in _CONFIGS:
        config = dataclasses.asdict(net.config)
    else:
        raise MedlmError(
            f"{target}: not a network medlm saves and rebuilds ({', '.join(_NETWORKS)})"
        )
    return {"target": target, "config": config}


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """The network :func:`network_spec` describes, with fresh weights (load a state dict in)."""
    net = _build(spec)
    if spec.get("lora"):
        apply_lora(net, **spec["lora"])
    if spec.get("trainable") is not None:
        trainable = set(spec["trainable"])
        for name, p in net.named_parameters():
            p.requires_grad_(name in trainable)
    return net


def _build(spec: Mapping[str, Any]) -> nn.Module:
    cls = _NETWORKS.get(spec["target"])
    if cls is None:
        raise MedlmError(
            f"network class {spec['target']!r} is not one medlm builds ({', '.join(_NETWORKS)})"
        )
    config = spec["config"]
    if cls is SequenceClassifier:
        return SequenceClassifier(
            _build(config["backbone"]), config["num_labels"], config["pad_token_id"]
        )
    return cls(_CONFIGS[cls](**config))


def network_from_checkpoint(
    ckpt: Mapping[str, Any], source: str, prefix: str = "net."
) -> nn.Module:
    """The network of a checkpoint read by :func:`read_checkpoint`, with its weights (the
    LightningModule's ``net.`` entries), in eval mode on the CPU."""
    spec = ckpt.get(NETWORK_KEY) or _legacy_spec(ckpt)
    if spec is None:
        raise MedlmError(f"{source}: not a medlm checkpoint (no '{NETWORK_KEY}' entry)")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise MedlmError(f"{source}: not a medlm checkpoint (no 'state_dict' entry)")
    try:
        net = build_network(spec)
    except MedlmError as err:  # a ConfigError of the model's config, a class medlm does not build
        raise MedlmError(f"{source}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise MedlmError(
            f"{source}: its network description does not fit medlm's networks "
            f"({type(err).__name__}: {err})"
        ) from None
    load_matching(
        net, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, source
    )
    return net.eval()


# Checkpoints written before NETWORK_KEY: a causal LM's "medlm_model" ({target, config}, Llama's
# sizes then named dim, n_layers, n_heads, n_kv_heads) and a classifier's "medlm_classifier".
_OLD_LLAMA_NAMES = {
    "dim": "n_embd",
    "n_layers": "n_layer",
    "n_heads": "n_head",
    "n_kv_heads": "n_kv_head",
}


def _legacy_spec(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    def model(old: Mapping[str, Any]) -> dict[str, Any]:
        config = {_OLD_LLAMA_NAMES.get(k, k): v for k, v in old["config"].items()}
        return {"target": old["target"], "config": config}

    if isinstance(ckpt.get("medlm_model"), Mapping):
        return {**model(ckpt["medlm_model"]), "lora": None, "trainable": None}
    old = ckpt.get("medlm_classifier")
    if not isinstance(old, Mapping):
        return None
    classifier = f"{SequenceClassifier.__module__}.{SequenceClassifier.__qualname__}"
    config = {
        "backbone": model(old["backbone"]) if "backbone" in old else {},
        "num_labels": old.get("num_labels"),
        "pad_token_id": old.get("pad_token_id"),
    }
    return {
        "target": classifier,
        "config": config,
        "lora": old.get("lora"),
        "trainable": old.get("trainable"),
    }


# ----------------------------------------------------------------------------------------------
# The one loader


def load_network(path: str | Path) -> nn.Module:
    """The network at ``path``, in eval mode on the CPU: a medlm checkpoint (``.ckpt``), a Hugging
    Face directory (GPT-2 or Llama causal LM by ``model_type``, or GPT2ForSequenceClassification)
    or Meta's original layout (``params.json``, ``consolidated.NN.pth``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return network_from_checkpoint(read_checkpoint(path), str(path))
    if not path.is_dir():
        raise MedlmError(f"{path}: no such checkpoint file or model directory")
    if (path / "config.json").is_file():
        return _load_hf_directory(path).eval()
    if (path / "params.json").is_file():
        return Llama.from_meta(path).eval()
    raise MedlmError(
        f"{path}: not a model directory (no config.json of Hugging Face, no params.json of Meta)"
    )


def _load_hf_directory(path: Path) -> nn.Module:
    config = read_hf_config(path)
    model_type = config.get("model_type")
    classifier = any(
        str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []
    )
    if classifier and model_type == "gpt2":
        num_labels = len(config.get("id2label") or {}) or 2  # transformers' default is 2
        return SequenceClassifier.from_pretrained(path, num_labels=num_labels)
    if classifier:
        raise MedlmError(
            f"{path}/config.json: a {model_type} sequence classifier; medlm loads "
            "GPT-2 ones (GPT2ForSequenceClassification)"
        )
    if model_type == "gpt2":
        return GPT2.from_pretrained(path)
    if model_type == "llama":
        return Llama.from_pretrained(path)
    raise MedlmError(
        f"{path}/config.json: model_type {model_type!r} is not one medlm runs (gpt2, llama)"
    )
