"""GPT-2 <-> Hugging Face: config translation and tensor layout, both ways.

HF's ``GPT2LMHeadModel`` names its tensors as medlm's :class:`~medlm.models.gpt2.GPT2` does
(``transformer.h.0.attn.c_attn.weight`` ...), but its ``Conv1D`` stores the four projection
weights as (in, out) where ``nn.Linear`` stores (out, in): they are transposed on the way in and
out. The hub's original ``gpt2`` files are a bare ``GPT2Model`` (no ``transformer.`` prefix)
with causal-mask buffers, which are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import (
    load_matching,
    read_hf_config,
    read_hf_state_dict,
    resolve_pretrained,
)
from medlm.models.gpt2 import GPT2, GPT2Config

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")  # causal-mask buffers of older HF versions


def load_hf_gpt2(pretrained: str | Path, **overrides: Any) -> GPT2:
    """GPT-2 weights from a local HF directory or a hub id (gpt2, gpt2-medium, ...).

    ``overrides`` set any :class:`GPT2Config` field on top of the checkpoint's config;
    ``dropout=x`` sets all three dropouts (a field given by name wins over it). A smaller
    ``block_size`` crops the position embeddings, as nanoGPT's ``crop_block_size``.
    """
    overrides = _check_overrides(overrides)  # before any download
    directory = resolve_pretrained(pretrained)
    return gpt2_from_hf(
        read_hf_config(directory), read_hf_state_dict(directory), str(directory), **overrides
    )


def gpt2_from_hf(
    hf_config: Mapping[str, Any], hf_state: Mapping[str, Tensor], source: str, **overrides: Any
) -> GPT2:
    """A GPT2 from a HF ``config.json`` and its tensors, in memory; ``source`` names them in
    errors. Tensors the network does not have (a classifier's ``score.weight``) are refused:
    take them out first."""
    overrides = _check_overrides(overrides)
    config = replace(_config_from_hf(hf_config, f"{source}/config.json"), **overrides)
    model = GPT2(config)  # the config is validated again in __post_init__
    load_matching(model, _state_dict_from_hf(hf_state, hf_config, config, source), source)
    return model


def gpt2_to_hf(model: GPT2) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config, state_dict) of the equivalent HF ``GPT2LMHeadModel``, for ``write_hf_checkpoint``.

    Token ids (bos, eos) are the tokenizer's, so the exporter writes them. The output layer is
    tied (``tie_word_embeddings``), so ``lm_head.weight`` is not written. A model without biases
    gets zero biases: HF's GPT-2 always has them. Tensors that need no transpose share memory
    with the model.
    """
    c = model.config
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": c.layer_norm_eps,
        "embd_pdrop": c.embd_dropout,
        "attn_pdrop": c.attn_dropout,
        "resid_pdrop": c.resid_dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
    }
    state: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = t.detach()
        state[name] = t.t().contiguous() if name.endswith(_CONV1D) else t
    if not c.bias:
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and name != "lm_head":
                w = module.weight
                state[f"{name}.bias"] = torch.zeros(w.size(0), dtype=w.dtype, device=w.device)
    return config, state


def _check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Known GPT2Config fields, with ``dropout`` spread over the three dropouts."""
    known = {f.name for f in fields(GPT2Config)} | {"dropout"}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"model.{key}: unknown GPT-2 override (known: {sorted(known)})")
    overrides = dict(overrides)
    if "dropout" in overrides:
        p = overrides.pop("dropout")
        overrides = {"embd_dropout": p, "attn_dropout": p, "resid_dropout": p} | overrides
    return overrides


def _config_from_hf(hf: Mapping[str, Any], source: str) -> GPT2Config:
    """GPT2Config from a HF config.json; a GPT-2 variant that this model cannot run is refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"{source}: model_type {hf['model_type']!r} is not a GPT-2")
    n_embd = hf.get("n_embd", 768)
    activation = hf.get("activation_function", "gelu_new")
    unsupported = {
        "activation_function": activation not in ("gelu_new", "gelu_pytorch_tanh"),
        "n_inner": hf.get("n_inner") not in (None, 4 * n_embd),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": bool(hf.get("add_cross_attention", False)),
    }
    for key, bad in unsupported.items():
        if bad:
            raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported by medlm's GPT2")
    return GPT2Config(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        embd_dropout=hf.get("embd_pdrop", 0.1),
        attn_dropout=hf.get("attn_pdrop", 0.1),
        resid_dropout=hf.get("resid_pdrop", 0.1),
        bias=True,
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def _state_dict_from_hf(
    hf_state: Mapping[str, Tensor], hf_config: Mapping[str, Any], config: GPT2Config, source: str
) -> dict[str, Tensor]:
    """HF GPT2LMHeadModel (or bare GPT2Model, as the hub's gpt2 files) tensors -> our names and
    layout."""
    bare = not any(k.startswith("transformer.") for k in hf_state)
    state: dict[str, Tensor] = {}
    for name, t in hf_state.items():
        if _HF_BUFFER.search(name):
            continue
        if bare and name != "lm_head.weight":
            name = "transformer." + name
        state[name] = t.t().contiguous() if name.endswith(_CONV1D) else t
    wte = state.get("transformer.wte.weight")
    head = state.get("lm_head.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        tied = hf_config.get("tie_word_embeddings", True)
        raise MedlmError(
            f"{source}: lm_head.weight differs from transformer.wte.weight; medlm's "
            f"GPT2 ties them (tie_word_embeddings={tied})"
        )
    if wte is not None:
        state["lm_head.weight"] = wte
    wpe = state.get("transformer.wpe.weight")
    if wpe is not None and config.block_size < wpe.size(0):
        state["transformer.wpe.weight"] = wpe[: config.block_size]
    return state
