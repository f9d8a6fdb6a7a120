"""Sequence classifiers <-> Hugging Face and PEFT.

- :func:`load_hf_classifier`: a GPT-2 classifier from a HF directory or hub id, built in memory:
  a ``GPT2ForSequenceClassification`` brings its ``score`` head, any other GPT-2 gets a fresh one.
- :func:`export_merged_hf`: a HF ``*ForSequenceClassification`` directory, adapters merged in.
- :func:`export_peft`: a PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
  over a HF base model, as PEFT's ``save_pretrained`` writes it.
- :func:`export_classifier`: the one of the last two that ``medlm-export`` asks for.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from medlm.errors import MedlmError
from medlm.models.checkpoint import (
    read_hf_config,
    read_hf_state_dict,
    resolve_pretrained,
    write_hf_checkpoint,
)
from medlm.models.classifier import SequenceClassifier
from medlm.models.convert_gpt2 import gpt2_from_hf
from medlm.models.lora import lora_layers, lora_state_dict, merge_lora, unmerge_lora
from medlm.utils.io import atomic_path, atomic_write

HF_CONV1D_MODELS = {"gpt2"}  # HF model types whose linear layers are Conv1D: PEFT's fan_in_fan_out


def load_hf_classifier(
    pretrained: str | Path, num_labels: int = 2, pad_token_id: int | None = None, **overrides: Any
) -> SequenceClassifier:
    """A GPT-2 classifier from a HF directory or hub id; ``overrides`` go to the GPT-2 config
    (:func:`~medlm.models.convert_gpt2.load_hf_gpt2`).

    A ``GPT2ForSequenceClassification`` directory (e.g. from :func:`export_merged_hf`) brings its
    trained ``score`` head; any other GPT-2 gets a fresh head. ``pad_token_id`` defaults to the
    checkpoint's, else its end-of-text (``eos_token_id``).
    """
    directory = resolve_pretrained(pretrained)
    hf_config = read_hf_config(directory)
    state = read_hf_state_dict(directory)
    head = state.pop("score.weight", None)
    backbone = gpt2_from_hf(hf_config, state, str(directory), **overrides)
    if pad_token_id is None:  # GPT-2 has no padding token: HF pads with its end-of-text
        pad_token_id = hf_config.get("pad_token_id")
        if pad_token_id is None:
            pad_token_id = hf_config.get("eos_token_id")
    model = SequenceClassifier(backbone, num_labels=num_labels, pad_token_id=pad_token_id)
    if head is not None:
        if tuple(head.shape) != tuple(model.score.weight.shape):
            raise MedlmError(
                f"{directory}: score.weight has shape {tuple(head.shape)}, a "
                f"{num_labels}-label head needs {tuple(model.score.weight.shape)} "
                "(set num_labels)"
            )
        with torch.no_grad():
            model.score.weight.copy_(head)
    return model


def export_classifier(
    model: SequenceClassifier, out_dir: Path, merged: bool, source: str
) -> list[Path]:
    """Export a classifier for Hugging Face users; returns the files written.

    ``merged=False``: PEFT's adapter (``adapter_config.json``, ``adapter_model.safetensors``, the
    head as ``modules_to_save``) with its HF base model in ``out_dir/base``. ``merged=True``: one
    HF ``*ForSequenceClassification`` directory, adapters folded into the weights (any
    classifier). ``source`` names the model in errors.
    """
    hf_files = ["config.json", "model.safetensors"]  # what write_hf_checkpoint writes
    if merged:
        return [export_merged_hf(model, out_dir) / name for name in hf_files]
    if not lora_layers(model):
        raise MedlmError(
            f"{source}: this classifier has no LoRA adapters, so there is no PEFT "
            "adapter to write; export it as a whole model with --merged"
        )
    out = export_peft(model, out_dir)
    return [
        out / "adapter_config.json",
        out / "adapter_model.safetensors",
        *(out / "base" / n for n in hf_files),
    ]


def _hf_classifier_config(
    model: SequenceClassifier, backbone: nn.Module
) -> tuple[dict, dict[str, Tensor]]:
    """HF config and body tensors of ``backbone`` (plain Linears), as a sequence classifier."""
    if not hasattr(backbone, "to_hf"):
        raise MedlmError(
            f"{type(backbone).__name__} has no to_hf(): cannot export it as a HF model"
        )
    config, state = backbone.to_hf()
    config = dict(config)
    model_type = config.get("model_type", "gpt2")
    arch = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}.get(
        model_type
    )
    if arch is None:
        raise MedlmError(f"no HF sequence-classification class known for model_type {model_type!r}")
    config["architectures"] = [arch]
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    # the classifier pads with the tokenizer's end-of-text, which also begins and ends a text
    config["pad_token_id"] = config["bos_token_id"] = config["eos_token_id"] = model.pad_token_id
    return config, dict(state)


def _plain_backbone(model: SequenceClassifier, merge: bool) -> nn.Module:
    """A copy of the backbone with plain Linears: adapters merged in, or dropped (the base)."""
    backbone = copy.deepcopy(model.backbone)
    if not merge:
        unmerge_lora(backbone)
        for layer in lora_layers(backbone).values():
            with torch.no_grad():
                layer.lora_B.weight.zero_()  # merging a zero update leaves the base weight exactly
    return merge_lora(backbone, unwrap=True)


def export_merged_hf(model: SequenceClassifier, out_dir: str | Path) -> Path:
    """A HF ``*ForSequenceClassification`` directory with every adapter merged into its weight."""
    config, state = _hf_classifier_config(model, _plain_backbone(model, merge=True))
    state["score.weight"] = model.score.weight
    return write_hf_checkpoint(out_dir, config, state)


def _peft_targets(model: nn.Module) -> list[str]:
    """PEFT matches a list of names by suffix: plain names go as given, regexes as the names
    they hit."""
    cfg = model.lora_config
    if all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in cfg.targets):
        return list(cfg.targets)
    return sorted(n.removeprefix("backbone.") for n in lora_layers(model))


def export_peft(
    model: SequenceClassifier,
    out_dir: str | Path,
    base_dir_or_model: str | Path | nn.Module | None = None,
) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT's
    ``save_pretrained`` does.

    The adapter applies to the HF base model ``base_dir_or_model``: an existing HF directory (named
    in the config, not copied), or a medlm backbone, or ``None`` for the model's own frozen base
    weights; the last two are written to ``out_dir/base`` as a HF sequence-classification model
    (its ``score`` is replaced by the adapter's: PEFT's ``modules_to_save``). Load it with
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base),
    out_dir)``.
    """
    cfg = getattr(model, "lora_config", None)
    if cfg is None or not lora_layers(model):
        raise MedlmError("export_peft: the model has no LoRA adapters (apply_lora first)")
    out = Path(out_dir)
    if isinstance(base_dir_or_model, nn.Module) or base_dir_or_model is None:
        if base_dir_or_model is None:
            backbone = _plain_backbone(model, merge=False)
        else:
            backbone = (
                base_dir_or_model.backbone
                if isinstance(base_dir_or_model, SequenceClassifier)
                else base_dir_or_model
            )
            if lora_layers(backbone):
                raise MedlmError(
                    "export_peft: the base model given has LoRA layers; pass the plain base"
                )
        config, state = _hf_classifier_config(model, backbone)
        base_dir = write_hf_checkpoint(out / "base", config, state)
        model_type = config.get("model_type")
    else:
        base_dir = Path(base_dir_or_model).expanduser()
        model_type = read_hf_config(base_dir).get("model_type")
    modules_to_save = list(dict.fromkeys([*cfg.modules_to_save, "score"]))

    tensors: dict[str, Tensor] = {}
    for key, t in {**lora_state_dict(model), "score.weight": model.score.weight}.items():
        key = key.removeprefix("backbone.")  # our backbone's names are the HF model's names
        tensors[f"base_model.model.{key}"] = t.detach().contiguous().cpu()
    alpha = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
    adapter_config = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": str(base_dir.resolve()),
        "bias": "none",
        "fan_in_fan_out": model_type in HF_CONV1D_MODELS,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": _peft_targets(model),
        "task_type": "SEQ_CLS",
        "use_dora": False,
        "use_rslora": False,
    }
    with atomic_path(out / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_write(out / "adapter_config.json") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    return out
