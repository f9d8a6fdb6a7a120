"""A sequence classifier on any medlm backbone, as Hugging Face's ``GPT2ForSequenceClassification``.

The backbone's final hidden state at the last real token goes through ``score`` (no bias), so a
causal LM reads the whole text before deciding. Exports go to the two formats people load:
a PEFT adapter over a HF base model (``export_peft``) and a merged HF model (``export_merged_hf``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import build_model, model_spec
from medlm.models.convert import read_hf_config, read_hf_state_dict, write_hf_checkpoint
from medlm.models.kv_cache import padded_causal_mask
from medlm.models.lora import apply_lora, lora_layers, lora_state_dict, merge_lora, unmerge_lora
from medlm.utils.io import atomic_path, atomic_write

HF_CONV1D_MODELS = {"gpt2"}  # HF model types whose linear layers are Conv1D: PEFT's fan_in_fan_out


class SequenceClassifier(nn.Module):
    """``backbone.hidden_states`` -> last non-padding token -> ``score`` -> logits (B, num_labels)."""

    def __init__(self, backbone: nn.Module, num_labels: int = 2, pad_token_id: int | None = None,
                 hidden_size: int | None = None) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"model.num_labels must be a positive integer, got {num_labels!r}")
        if not hasattr(backbone, "hidden_states"):
            raise ConfigError(f"model.backbone: {type(backbone).__name__} has no hidden_states()")
        cfg = getattr(backbone, "config", None)
        hidden_size = hidden_size or getattr(cfg, "n_embd", None) or getattr(cfg, "hidden_size", None)
        if not hidden_size:
            raise ConfigError(f"model.hidden_size: cannot tell the width of {type(backbone).__name__}")
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
    def from_pretrained(cls, directory: str | Path, num_labels: int = 2, pad_token_id: int | None = None,
                        **overrides) -> "SequenceClassifier":
        """A GPT-2 classifier from a HF directory or hub id; ``overrides`` go to ``GPT2.from_pretrained``.

        A ``GPT2ForSequenceClassification`` directory (e.g. from :func:`export_merged_hf`) brings
        its trained ``score`` head; any other GPT-2 gets a fresh head. ``pad_token_id`` defaults to
        the checkpoint's, else its end-of-text (``eos_token_id``).
        """
        from medlm.models.gpt2 import GPT2

        d = Path(directory).expanduser()
        head = None
        hf_config: dict = {}
        if d.is_dir():
            hf_config = read_hf_config(d)
            state = read_hf_state_dict(d)
            head = state.pop("score.weight", None)
        if head is None:
            backbone = GPT2.from_pretrained(directory, **overrides)
        else:  # GPT2.from_pretrained takes the body alone: hand it a copy without the head
            with tempfile.TemporaryDirectory(prefix="medlm-gpt2-") as tmp:
                write_hf_checkpoint(tmp, hf_config, state)
                backbone = GPT2.from_pretrained(tmp, **overrides)
            del state
        if pad_token_id is None:
            # GPT-2 has no padding token: HF pads with its end-of-text, the config's eos
            pad_token_id = hf_config.get("pad_token_id", hf_config.get("eos_token_id"))
            if pad_token_id is None:
                pad_token_id = hf_config.get("eos_token_id")
        model = cls(backbone, num_labels=num_labels, pad_token_id=pad_token_id)
        if head is not None:
            if tuple(head.shape) != tuple(model.score.weight.shape):
                raise MedlmError(f"{d}: score.weight has shape {tuple(head.shape)}, a {num_labels}-label "
                                 f"head needs {tuple(model.score.weight.shape)} (set num_labels)")
            with torch.no_grad():
                model.score.weight.copy_(head)
        return model


def lora_classifier(pretrained: str | Path, num_labels: int = 2,
                    targets: Iterable[str] = ("c_attn", "c_proj"), r: int = 8, alpha: float = 32.0,
                    dropout: float = 0.1, pad_token_id: int | None = None, **overrides) -> SequenceClassifier:
    """``SequenceClassifier.from_pretrained`` + LoRA on ``targets``; the ``score`` head trains too.

    One call that a Hydra model config can target.
    """
    model = SequenceClassifier.from_pretrained(pretrained, num_labels, pad_token_id=pad_token_id, **overrides)
    return apply_lora(model, targets, r=r, alpha=alpha, dropout=dropout, modules_to_save=["score"])


def linear_probe(pretrained: str | Path, num_labels: int = 2, pad_token_id: int | None = None,
                 **overrides) -> SequenceClassifier:
    """``SequenceClassifier.from_pretrained`` with the backbone frozen: only ``score`` trains.

    The baseline LoRA is measured against: what the base model's own features tell a linear head.
    ``overrides`` go to ``GPT2.from_pretrained`` (``dropout=0.0`` keeps the frozen features fixed).
    """
    model = SequenceClassifier.from_pretrained(pretrained, num_labels, pad_token_id=pad_token_id, **overrides)
    model.backbone.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------
# Rebuilding from a training checkpoint


def classifier_spec(model: SequenceClassifier) -> dict[str, Any]:
    """Plain values that rebuild ``model`` (:func:`build_classifier`): the backbone's class and config,
    the head, the LoRA settings and which parameters train. Goes into a weights-only checkpoint."""
    lora = getattr(model, "lora_config", None)
    return {"backbone": model_spec(model.backbone), "num_labels": model.num_labels,
            "pad_token_id": model.pad_token_id, "lora": dataclasses.asdict(lora) if lora else None,
            "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad)}


def build_classifier(spec: dict[str, Any]) -> SequenceClassifier:
    """The classifier :func:`classifier_spec` describes, with fresh weights (load a state dict into it)."""
    model = SequenceClassifier(build_model(spec["backbone"]), spec["num_labels"], spec["pad_token_id"])
    if spec.get("lora"):
        apply_lora(model, **spec["lora"])
    trainable = set(spec.get("trainable") or [])
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    return model


# ----------------------------------------------------------------------------------------------
# Export


def _hf_classifier_config(model: SequenceClassifier, backbone: nn.Module) -> tuple[dict, dict[str, Tensor]]:
    """HF config and body tensors of ``backbone`` (plain Linears), as a sequence classifier."""
    if not hasattr(backbone, "to_hf"):
        raise MedlmError(f"{type(backbone).__name__} has no to_hf(): cannot export it as a HF model")
    config, state = backbone.to_hf()
    config = dict(config)
    model_type = config.get("model_type", "gpt2")
    arch = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}.get(model_type)
    if arch is None:
        raise MedlmError(f"no HF sequence-classification class known for model_type {model_type!r}")
    config["architectures"] = [arch]
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    # the classifier pads with the tokenizer's end-of-text, which also begins and ends a text
    config["pad_token_id"] = config["bos_token_id"] = config["eos_token_id"] = model.pad_token_id
    return config, dict(state)


def _plain_backbone(model: SequenceClassifier, merge: bool) -> nn.Module:
    """A copy of the backbone with plain Linears: adapters merged in, or dropped (the base model)."""
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
    """PEFT matches a list of names by suffix: plain names go as given, regexes as the names they hit."""
    cfg = model.lora_config
    if all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in cfg.targets):
        return list(cfg.targets)
    return sorted(n.removeprefix("backbone.") for n in lora_layers(model))


def export_peft(model: SequenceClassifier, out_dir: str | Path,
                base_dir_or_model: str | Path | nn.Module | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT's ``save_pretrained``.

    The adapter applies to the HF base model ``base_dir_or_model``: an existing HF directory (named
    in the config, not copied), or a medlm backbone, or ``None`` for the model's own frozen base
    weights; the last two are written to ``out_dir/base`` as a HF sequence-classification model
    (its ``score`` is replaced by the adapter's: PEFT's ``modules_to_save``). Load it with
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), out_dir)``.
    """
    cfg = getattr(model, "lora_config", None)
    if cfg is None or not lora_layers(model):
        raise MedlmError("export_peft: the model has no LoRA adapters (apply_lora first)")
    out = Path(out_dir)
    if isinstance(base_dir_or_model, nn.Module) or base_dir_or_model is None:
        if base_dir_or_model is None:
            backbone = _plain_backbone(model, merge=False)
        else:
            backbone = base_dir_or_model.backbone if isinstance(base_dir_or_model, SequenceClassifier) \
                else base_dir_or_model
            if lora_layers(backbone):
                raise MedlmError("export_peft: the base model given has LoRA layers; pass the plain base")
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
