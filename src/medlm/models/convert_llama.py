"""Llama <-> Hugging Face and Meta: config translation, tensor names and RoPE row order.

- Hugging Face (``LlamaForCausalLM``): :func:`load_hf_llama` / :func:`llama_from_hf` read it,
  :func:`llama_to_hf` writes it. Only the tensor names differ (``model.layers.0.self_attn.q_proj``
  is our ``layers.0.attention.wq``): HF's q/k rows are already in the rotate-half order
  :mod:`medlm.models.llama` uses.
- Meta's original layout (``params.json``, ``consolidated.NN.pth``): :func:`load_meta_llama`
  merges the model-parallel shards and permutes the rows of ``wq``/``wk`` once, from Meta's
  interleaved RoPE pairs ``(2j, 2j+1)`` to rotate-half ``(j, j + head_dim/2)`` (transformers'
  ``convert_llama_weights_to_hf``); the logits are the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import (
    load_matching,
    read_checkpoint,
    read_hf_config,
    read_hf_state_dict,
    resolve_pretrained,
)
from medlm.models.llama import Llama, LlamaConfig
from medlm.utils.checks import is_int

# ----------------------------------------------------------------------------- Hugging Face


def load_hf_llama(pretrained: str | Path, **overrides: Any) -> Llama:
    """A Hugging Face ``LlamaForCausalLM`` directory or hub id (config.json and model.safetensors,
    sharded safetensors with an index, or pytorch_model.bin). ``overrides`` replace config values
    that do not change a tensor's shape (block_size, dropout, rope_scaling, ...)."""
    d = resolve_pretrained(pretrained)
    return llama_from_hf(read_hf_config(d), read_hf_state_dict(d), str(d), **overrides)


def llama_from_hf(
    hf_config: Mapping[str, Any], hf_state: Mapping[str, Tensor], source: str, **overrides: Any
) -> Llama:
    """A Llama from a HF ``config.json`` and its tensors, in memory; ``source`` names them."""
    config_path = f"{source}/config.json"
    config = _make_config(_config_from_hf(hf_config, config_path), overrides, config_path)
    state = {
        _rename(name, _HF_TO_MEDLM): t
        for name, t in hf_state.items()
        if not name.endswith("rotary_emb.inv_freq")
    }  # a buffer older checkpoints saved
    return _build(config, state, source)


def llama_to_hf(model: Llama) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json dict, state dict) of the equivalent ``LlamaForCausalLM``, for
    ``write_hf_checkpoint``. The tensors share memory with the model."""
    c = model.config
    rope_scaling = (
        None if c.rope_scaling is None else {"rope_type": "llama3", **asdict(c.rope_scaling)}
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": c.ffn_hidden_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        # rope_theta + rope_scaling: the spelling every transformers version reads (v5 maps it
        # to rope_parameters itself).
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "torch_dtype": str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
    }
    state = {
        _rename(name, _MEDLM_TO_HF): t.detach()
        for name, t in model.state_dict().items()
        if not (c.tie_embeddings and name == "output.weight")
    }
    return config, state


# Hugging Face name -> ours; ``{i}`` is the layer index.
_HF_TO_MEDLM = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
}
_MEDLM_TO_HF = {ours: theirs for theirs, ours in _HF_TO_MEDLM.items()}
_LAYER_NAME = re.compile(r"^(.*?layers\.)(\d+)(\..*)$")


def _rename(name: str, table: Mapping[str, str]) -> str:
    """Map one tensor name through ``table``; an unknown name is kept, so load_matching names it."""
    m = _LAYER_NAME.match(name)
    key = f"{m[1]}{{i}}{m[3]}" if m else name
    if key not in table:
        return name
    return table[key].replace("{i}", m[2]) if m else table[key]


def _config_from_hf(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """LlamaConfig arguments from a ``LlamaForCausalLM`` config.json (transformers 4 or 5
    spelling); features this model does not have are refused by name, not silently dropped."""
    if hf.get("model_type") != "llama":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'llama'")
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    ):
        if key not in hf:
            raise ConfigError(f"{source}: {key} is missing")
    for key, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, supported) != supported:
            raise ConfigError(
                f"{source}: {key}={hf[key]!r} is not supported (medlm's Llama has {supported!r})"
            )
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and is_int(heads) and heads > 0 and head_dim * heads != hidden:
        raise ConfigError(
            f"{source}: head_dim={head_dim!r} is not hidden_size / "
            f"num_attention_heads ({hidden} / {heads}); medlm's Llama needs them "
            "equal"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ConfigError(f"{source}: rope_parameters/rope_scaling must be a mapping, got {rope!r}")
    rope = dict(rope)
    rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))  # transformers' default
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        rope_scaling = None
        extra = sorted(set(rope) - {"rope_type", "type"})
        if extra:
            raise ConfigError(
                f"{source}: rope parameter {extra[0]!r} is not supported with rope_type 'default'"
            )
    elif rope_type == "llama3":
        rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
        rope_scaling = rope
    else:
        raise ConfigError(
            f"{source}: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')"
        )
    return dict(
        vocab_size=hf["vocab_size"],
        n_embd=hidden,
        n_layer=hf["num_hidden_layers"],
        n_head=heads,
        n_kv_head=hf.get("num_key_value_heads"),
        ffn_hidden_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        block_size=hf.get("max_position_embeddings", 2048),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


# ----------------------------------------------------------------------------- Meta


def load_meta_llama(directory: str | Path, **overrides: Any) -> Llama:
    """Meta's original checkpoint directory: params.json and consolidated.00.pth .. NN.pth
    (model-parallel shards, merged here). tokenizer.model is not needed here (see
    ``medlm.data.tokenizer``). ``overrides`` as in :func:`load_hf_llama`.

    block_size defaults to params.json's max_seq_len, else the context of the Llama version the
    file looks like: 131072 with use_scaled_rope (3.1), 8192 with a rope_theta (3), else 4096
    (2). use_scaled_rope means Meta's constants (factor 8, bands 1 and 4, original 8192), the
    factor taken from rope_scaling_factor where params.json has one; for other values (Llama
    3.2 1B/3B use factor 32) pass ``rope_scaling=...``.
    """
    d = Path(directory)
    params_path = d / "params.json"
    params = _read_meta_params(params_path)
    state = _merge_meta_shards(d, params["dim"])
    config = _make_config(_config_from_meta(params, state), overrides, str(params_path))
    for i in range(config.n_layer):  # Meta's interleaved RoPE pairs -> rotate-half rows
        for name, heads in (("wq", config.n_head), ("wk", config.n_kv_head)):
            key = f"layers.{i}.attention.{name}.weight"
            if key in state:
                state[key] = _meta_to_rotate_half(state[key], heads, source=f"{d}: {key}")
    return _build(config, state, str(d))


# params.json field -> the JSON types it may have. Meta's ModelArgs (meta-llama/llama-models)
# plus max_batch_size, a runtime setting ignored here; rope_scaling_factor as llama-models
# writes it for 3.2.
_META_FIELDS: dict[str, tuple[type, ...]] = {
    "dim": (int,),
    "n_layers": (int,),
    "n_heads": (int,),
    "n_kv_heads": (int, type(None)),
    "vocab_size": (int,),
    "multiple_of": (int,),
    "ffn_dim_multiplier": (int, float, type(None)),
    "norm_eps": (int, float),
    "rope_theta": (int, float),
    "use_scaled_rope": (bool,),
    "rope_scaling_factor": (int, float, type(None)),
    "max_seq_len": (int,),
    "max_batch_size": (int,),
}


def _read_meta_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedlmError(
            f"{path.parent}: no {path.name} (expected Meta's layout: params.json, "
            "consolidated.00.pth, ...)"
        )
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(params).__name__}")
    for key, value in params.items():
        kinds = _META_FIELDS.get(key)
        if kinds is None:
            raise ConfigError(
                f"{path}: unknown field {key!r} (medlm reads {', '.join(_META_FIELDS)})"
            )
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ConfigError(f"{path}: field {key!r} must be {names}, got {value!r}")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ConfigError(f"{path}: field {key!r} is missing")
    return params


def _config_from_meta(params: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Any]:
    """LlamaConfig arguments from a checked params.json; vocab_size -1 (Llama 2) is read off the
    weights."""
    vocab_size = params.get("vocab_size", -1)
    if vocab_size == -1 and "tok_embeddings.weight" in state:
        vocab_size = state["tok_embeddings.weight"].shape[0]
    rope_scaling = None
    if params.get("use_scaled_rope", False):  # Meta's apply_scaling constants
        rope_scaling = {
            "factor": params.get("rope_scaling_factor") or 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    if "max_seq_len" in params:
        block_size = params["max_seq_len"]
    else:
        block_size = 131072 if rope_scaling else 8192 if "rope_theta" in params else 4096
    return dict(
        vocab_size=vocab_size,
        n_embd=params["dim"],
        n_layer=params["n_layers"],
        n_head=params["n_heads"],
        n_kv_head=params.get("n_kv_heads"),
        multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
        norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=params.get("rope_theta", 10000.0),
        rope_scaling=rope_scaling,
        block_size=block_size,
        tie_embeddings="output.weight" not in state,
    )


# Model-parallel shards split these along dim 0 (column-parallel) or dim 1 (row-parallel); norms
# are copies. tok_embeddings is split along the vocabulary (Llama 3) or along dim (Llama 2).
_META_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
_SHARD_NAME = re.compile(r"^consolidated\.(\d+)\.pth$")


def _merge_meta_shards(d: Path, dim: int) -> dict[str, Tensor]:
    shards = sorted(
        (int(m[1]), p) for p in d.glob("consolidated.*.pth") if (m := _SHARD_NAME.match(p.name))
    )
    if not shards:
        raise MedlmError(
            f"{d}: no consolidated.00.pth (expected Meta's layout: params.json, "
            "consolidated.NN.pth)"
        )
    for expected, (number, _) in enumerate(shards):
        if number != expected:
            raise MedlmError(
                f"{d}: consolidated.{expected:02d}.pth is missing "
                f"(found {', '.join(p.name for _, p in shards)})"
            )
    parts = [_read_shard(p) for _, p in shards]
    merged: dict[str, Tensor] = {}
    for name, first in parts[0].items():
        if name == "rope.freqs":  # a RoPE buffer Llama 1/2 checkpoints saved; recomputed here
            continue
        pieces = []
        for (_, path), part in zip(shards, parts, strict=True):
            if name not in part:
                raise MedlmError(f"{path}: tensor {name} is missing (it is in {shards[0][1].name})")
            pieces.append(part[name])
        if len(pieces) == 1 or first.dim() < 2:
            merged[name] = first  # unsharded, or a norm weight every shard holds a copy of
            continue
        if name == "tok_embeddings.weight":
            split = 0 if first.shape[1] == dim else 1
        else:
            split = _META_SPLIT_DIM.get(name.split(".")[-2], 0)
        merged[name] = torch.cat(pieces, dim=split)
    return merged


def _read_shard(path: Path) -> dict[str, Tensor]:
    state = read_checkpoint(path)
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise MedlmError(f"{path}: expected a dict of tensors")
    return state


def _meta_to_rotate_half(w: Tensor, n_head: int, source: str) -> Tensor:
    """Reorder each head's rows from interleaved pairs (0,1),(2,3).. to halves (0,D/2),(1,D/2+1)..
    (transformers' convert_llama_weights_to_hf ``permute``)."""
    out_dim, in_dim = w.shape
    if out_dim % (2 * n_head):
        raise MedlmError(f"{source}: {out_dim} rows do not split into {n_head} heads of even size")
    return (
        w.view(n_head, out_dim // n_head // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
    )


# ----------------------------------------------------------------------------- both


def _make_config(kwargs: dict[str, Any], overrides: Mapping[str, Any], source: str) -> LlamaConfig:
    names = {f.name for f in fields(LlamaConfig)}
    for key in overrides:
        if key not in names:
            raise ConfigError(f"model.{key}: unknown Llama override (known: {sorted(names)})")
    try:
        return LlamaConfig(**{**kwargs, **overrides})
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _build(config: LlamaConfig, state: dict[str, Tensor], source: str) -> Llama:
    """The model with ``state`` loaded; a tied model takes its output weights from the
    embeddings."""
    if config.tie_embeddings and "tok_embeddings.weight" in state:
        emb = state["tok_embeddings.weight"]
        out = state.get("output.weight")
        if out is not None and not (out.shape == emb.shape and torch.equal(out, emb)):
            raise MedlmError(
                f"{source}: tie_embeddings is set but the output weights differ from "
                "the token embeddings; load it with tie_embeddings=False"
            )
        state["output.weight"] = emb
    model = Llama(config)
    load_matching(model, state, source)
    return model
