"""A Llama 2/3-style decoder (RMSNorm, RoPE with Llama 3.1 scaling, SwiGLU, grouped-query attention).

Reads top to bottom like nanoGPT's ``model.py``: the config, the blocks, the model, then the loaders
for Hugging Face directories (``Llama.from_pretrained``, ``model.to_hf``) and Meta's original
checkpoints (``Llama.from_meta``). Calling convention: ``medlm.models.kv_cache``.

Parameter names follow Meta's ``model.py`` (``tok_embeddings``, ``layers.i.attention.wq``,
``feed_forward.w1``/``w2``/``w3``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``). The rows
of ``wq``/``wk`` are in Hugging Face's rotate-half order: RoPE rotates dimension ``j`` with
``j + head_dim/2``. Meta's checkpoints rotate interleaved pairs ``(2j, 2j+1)`` instead, so
``from_meta`` permutes their ``wq``/``wk`` rows once at load time; the logits are the same.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlm.errors import ConfigError, MedlmError
from medlm.models.convert import load_matching, read_hf_config, read_hf_state_dict
from medlm.models.kv_cache import KVCache


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"model.{key}: {value!r} is not a positive integer")


def _positive_number(key: str, value: Any) -> None:
    if not _is_number(value) or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"model.{key}: {value!r} is not a positive number")


# ----------------------------------------------------------------------------- config

_ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class RopeScaling:
    """Llama 3.1's RoPE scaling: long wavelengths slowed by ``factor``, short ones kept, a smooth
    blend between ``original_max_position_embeddings / high_freq_factor`` and ``/ low_freq_factor``."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            _positive_number(f"rope_scaling.{key}", getattr(self, key))
            setattr(self, key, float(getattr(self, key)))
        if not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError(f"model.rope_scaling.high_freq_factor: {self.high_freq_factor} is not greater "
                              f"than low_freq_factor {self.low_freq_factor}")
        _positive_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)

    @classmethod
    def from_mapping(cls, values: Mapping) -> RopeScaling:
        """Accept the Hugging Face spelling too (``rope_type: llama3``, as in a ``config.json``)."""
        values = dict(values)
        rope_type = values.pop("rope_type", values.pop("type", "llama3"))
        if rope_type != "llama3":
            raise ConfigError(f"model.rope_scaling.rope_type: {rope_type!r} is not 'llama3'")
        unknown = sorted(set(values) - set(_ROPE_SCALING_KEYS))
        if unknown:
            raise ConfigError(f"model.rope_scaling.{unknown[0]}: not a Llama 3 rope scaling key "
                              f"(expected {', '.join(_ROPE_SCALING_KEYS)})")
        for key in _ROPE_SCALING_KEYS:
            if key not in values:
                raise ConfigError(f"model.rope_scaling.{key}: missing")
        return cls(**values)


@dataclass
class LlamaConfig:
    """Sizes of a Llama model. ``n_kv_heads=None`` means ``n_heads`` (no grouping); ``ffn_hidden_dim=None``
    is computed as Meta does (2/3 of 4*dim, times ``ffn_dim_multiplier``, rounded up to ``multiple_of``).
    Both are resolved here, so the config always holds the sizes the model is built with."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    ffn_hidden_dim: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | Mapping | None = None
    block_size: int = 2048  # the longest sequence (max_seq_len / max_position_embeddings)
    tie_embeddings: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "multiple_of", "block_size"):
            _positive_int(key, getattr(self, key))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _positive_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_kv_heads: {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.n_heads: {self.n_heads} does not divide dim {self.dim}")
        if (self.dim // self.n_heads) % 2:
            raise ConfigError(f"model.n_heads: head size dim / n_heads = {self.dim // self.n_heads} is odd "
                              "(RoPE rotates pairs of dimensions)")
        if self.ffn_dim_multiplier is not None:
            _positive_number("ffn_dim_multiplier", self.ffn_dim_multiplier)
        if self.ffn_hidden_dim is None:
            hidden = int(2 * (4 * self.dim) / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.ffn_hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        _positive_int("ffn_hidden_dim", self.ffn_hidden_dim)
        _positive_number("norm_eps", self.norm_eps)
        _positive_number("rope_theta", self.rope_theta)
        if isinstance(self.rope_scaling, Mapping):
            self.rope_scaling = RopeScaling.from_mapping(self.rope_scaling)
        elif self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"model.rope_scaling: {self.rope_scaling!r} is not null or a mapping with "
                              f"keys {', '.join(_ROPE_SCALING_KEYS)}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"model.tie_embeddings: {self.tie_embeddings!r} is not true or false")
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"model.dropout: {self.dropout!r} is not a probability in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count without building the model; a tied output layer counts once.

        ``non_embedding`` leaves out the token embeddings of an untied model (a table lookup, not a
        matmul); the output layer always counts, so that 6N below is the weight-matmul FLOPs.
        """
        D, Q, F_ = self.dim, self.head_dim, self.ffn_hidden_dim
        attn = D * self.n_heads * Q + 2 * D * self.n_kv_heads * Q + self.n_heads * Q * D
        block = 2 * D + attn + 3 * D * F_
        emb = self.vocab_size * D
        n = self.n_layers * block + D + emb + (0 if self.tie_embeddings else emb)
        return n - emb if non_embedding and not self.tie_embeddings else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context ``seq_len`` (default block_size):
        6N for the weight matmuls plus 12·L·H·Q·T for attention (PaLM appendix B), as GPT2Config."""
        T = self.block_size if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layers * self.n_heads * self.head_dim * T


# ----------------------------------------------------------------------------- blocks

class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as Meta and Hugging Face do) for bf16 stability."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> Tensor:
    """(head_dim/2,) float32 inverse frequencies, with Llama 3.1's scaling applied if given."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor  # longer waves than this: slowed by factor
    high_freq_wavelen = old_len / scaling.high_freq_factor  # shorter waves than this: kept
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, blended)
    return torch.where(wavelen < high_freq_wavelen, inv_freq, scaled)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by the angles of its positions; cos, sin (B, 1, T, D)."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention: ``n_heads`` query heads share ``n_kv_heads`` key/value heads."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, S, D), S = cache.length + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp32 cache under bf16 autocast
        # Without a mask, the queries are the last T of S keys: plain causal when S == T, and a single
        # new token (T == 1) sees every key. The model passes a mask for the other cases.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T == k.size(2) and T > 1,
            enable_gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H * D)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is Hugging Face's gate_proj, w3 up_proj, w2 down_proj."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_hidden_dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.feed_forward(self.ffn_norm(x))


# ----------------------------------------------------------------------------- model

class Llama(nn.Module):
    """Token embeddings, ``n_layers`` pre-norm blocks, a final RMSNorm and the (tied or untied) output."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # float32 RoPE frequencies per device; not a buffer, so that model.to(bfloat16) cannot round
        # them (bf16 frequencies garble the angles of long positions) and they stay out of checkpoints.
        self._inv_freq: dict[torch.device, Tensor] = {}
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (a tied output layer once); ``non_embedding`` as in LlamaConfig.num_params."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if non_embedding and not self.config.tie_embeddings else n

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _rope_angles(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) positions -> cos, sin (B, 1, T, head_dim) in float32."""
        inv_freq = self._inv_freq.get(pos.device)
        if inv_freq is None:
            c = self.config
            inv_freq = rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling).to(pos.device)
            self._inv_freq[pos.device] = inv_freq
        freqs = pos[..., None].float() * inv_freq  # (B, T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
        return angles.cos(), angles.sin()

    def hidden_states(self, idx: Tensor, pos: Tensor | None = None, mask: Tensor | None = None,
                      cache: KVCache | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, dim) after the final norm; arguments as in ``forward``."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ConfigError(f"sequence of {T} tokens after {start} cached ones ({start + T} positions) "
                              f"exceeds block_size {self.config.block_size}")
        if mask is not None and mask.size(-1) != start + T:
            raise ValueError(f"mask covers {mask.size(-1)} keys, expected {start + T} ({start} cached + {T} new)")
        if pos is None:
            pos = torch.arange(start, start + T, device=idx.device).expand(B, T)  # (B, T)
        elif pos.dim() == 1:
            pos = pos.expand(B, T)
        if mask is None and start > 0 and T > 1:  # several new tokens after a filled cache: causal, shifted
            q_pos = torch.arange(start, start + T, device=idx.device)[:, None]  # (T, 1)
            mask = (torch.arange(start + T, device=idx.device)[None, :] <= q_pos)[None, None]  # (1, 1, T, S)
        cos, sin = self._rope_angles(pos)
        x = self.drop(self.tok_embeddings(idx))  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def forward(self, idx: Tensor, pos: Tensor | None = None, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits. ``pos`` (B, T) positions (default 0..T-1 after
        the cache), ``mask`` (B, 1, T, S) bool, True where a query may attend a key (default causal),
        ``cache`` a KVCache from ``new_cache`` that this call fills and advances."""
        return self.output(self.hidden_states(idx, pos, mask, cache))  # (B, T, vocab)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KVCache for this model's layers and heads, on its device and dtype by default."""
        if max_len > self.config.block_size:
            raise ConfigError(f"KV cache of {max_len} positions exceeds block_size {self.config.block_size}")
        w = self.tok_embeddings.weight
        c = self.config
        return KVCache(c.n_layers, batch_size, c.n_kv_heads, max_len, c.head_dim,
                       device=w.device if device is None else device, dtype=w.dtype if dtype is None else dtype)

    # ------------------------------------------------------------------------- Hugging Face layout

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> Llama:
        """A Hugging Face ``LlamaForCausalLM`` directory (config.json and model.safetensors, sharded
        safetensors with an index, or pytorch_model.bin). ``overrides`` replace config values that do not
        change a tensor's shape (block_size, dropout, rope_scaling, ...)."""
        d = Path(directory)
        source = d / "config.json"
        config = _make_config(_config_from_hf(read_hf_config(d), source), overrides, source)
        state = {_rename(name, _HF_TO_MEDLM): t for name, t in read_hf_state_dict(d).items()
                 if not name.endswith("rotary_emb.inv_freq")}  # a buffer older checkpoints saved
        return _build(cls, config, state, str(d))

    def to_hf(self) -> tuple[dict, dict[str, Tensor]]:
        """(config.json dict, state dict) of the equivalent ``LlamaForCausalLM``, for
        ``convert.write_hf_checkpoint``. The tensors share memory with this model."""
        c = self.config
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.dim,
            "intermediate_size": c.ffn_hidden_dim,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.block_size,
            "rms_norm_eps": c.norm_eps,
            # rope_theta + rope_scaling: the spelling every transformers version reads (v5 maps it
            # to rope_parameters itself).
            "rope_theta": c.rope_theta,
            "rope_scaling": None if c.rope_scaling is None else {"rope_type": "llama3", **asdict(c.rope_scaling)},
            "tie_word_embeddings": c.tie_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "torch_dtype": str(self.tok_embeddings.weight.dtype).removeprefix("torch."),
        }
        state = {_rename(name, _MEDLM_TO_HF): t.detach() for name, t in self.state_dict().items()
                 if not (c.tie_embeddings and name == "output.weight")}
        return config, state

    # ------------------------------------------------------------------------- Meta layout

    @classmethod
    def from_meta(cls, ckpt_dir: str | Path, **overrides: Any) -> Llama:
        """Meta's original checkpoint directory: params.json and consolidated.00.pth .. NN.pth (model-
        parallel shards, merged here), loaded with ``torch.load(weights_only=True)``. tokenizer.model
        is not needed here (see ``medlm.data.llama3_tokenizer``). ``overrides`` as in from_pretrained;
        block_size defaults to params.json's max_seq_len, else the context of the Llama version the
        file looks like: 131072 with use_scaled_rope (3.1), 8192 with a rope_theta (3), else 4096 (2).
        use_scaled_rope means Meta's constants (factor 8, bands 1 and 4, original 8192), the factor
        taken from rope_scaling_factor where params.json has one; for other values (Llama 3.2 1B/3B
        use factor 32) pass ``rope_scaling=...``."""
        d = Path(ckpt_dir)
        params_path = d / "params.json"
        params = _read_meta_params(params_path)
        state = _merge_meta_shards(d, params["dim"])
        kwargs = _config_from_meta(params, state)
        config = _make_config(kwargs, overrides, params_path)
        for i in range(config.n_layers):  # Meta's interleaved RoPE pairs -> rotate-half rows
            for name, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
                key = f"layers.{i}.attention.{name}.weight"
                if key in state:
                    state[key] = _meta_to_rotate_half(state[key], heads, source=f"{d}: {key}")
        return _build(cls, config, state, str(d))


# ----------------------------------------------------------------------------- loading helpers

def _make_config(kwargs: dict, overrides: Mapping[str, Any], source: Path) -> LlamaConfig:
    names = {f.name for f in fields(LlamaConfig)}
    for key in overrides:
        if key not in names:
            raise ConfigError(f"model.{key}: unknown Llama override (known: {sorted(names)})")
    try:
        return LlamaConfig(**{**kwargs, **overrides})
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _build(cls: type[Llama], config: LlamaConfig, state: dict[str, Tensor], source: str) -> Llama:
    """The model with ``state`` loaded; a tied model takes its output weights from the embeddings."""
    if config.tie_embeddings and "tok_embeddings.weight" in state:
        emb = state["tok_embeddings.weight"]
        out = state.get("output.weight")
        if out is not None and not (out.shape == emb.shape and torch.equal(out, emb)):
            raise MedlmError(f"{source}: tie_embeddings is set but the output weights differ from the "
                             "token embeddings; load it with tie_embeddings=False")
        state["output.weight"] = emb
    model = cls(config)
    load_matching(model, state, source)
    return model


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


def _config_from_hf(hf: Mapping[str, Any], source: Path | str) -> dict[str, Any]:
    """LlamaConfig arguments from a ``LlamaForCausalLM`` config.json (transformers 4 or 5 spelling);
    features this model does not have are refused by name rather than silently dropped."""
    if hf.get("model_type") != "llama":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'llama'")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            raise ConfigError(f"{source}: {key} is missing")
    for key, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, supported) != supported:
            raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported (medlm's Llama has {supported!r})")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") is not None and _is_int(heads) and heads > 0 and hf["head_dim"] * heads != hidden:
        raise ConfigError(f"{source}: head_dim={hf['head_dim']!r} is not hidden_size / num_attention_heads "
                          f"({hidden} / {heads}); medlm's Llama needs them equal")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ConfigError(f"{source}: rope_parameters/rope_scaling must be a mapping, got {rope!r}")
    rope = dict(rope)
    rope_theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))  # transformers' default theta
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        rope_scaling = None
        extra = sorted(set(rope) - {"rope_type", "type"})
        if extra:
            raise ConfigError(f"{source}: rope parameter {extra[0]!r} is not supported with rope_type 'default'")
    elif rope_type == "llama3":
        rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
        rope_scaling = rope
    else:
        raise ConfigError(f"{source}: rope_type {rope_type!r} is not supported (only 'default' and 'llama3')")
    return dict(
        vocab_size=hf["vocab_size"], dim=hidden, n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads"), ffn_hidden_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope_theta, rope_scaling=rope_scaling,
        block_size=hf.get("max_position_embeddings", 2048), tie_embeddings=hf.get("tie_word_embeddings", False),
    )


# params.json field -> the JSON types it may have. Meta's ModelArgs (meta-llama/llama-models) plus
# max_batch_size, a runtime setting ignored here; rope_scaling_factor as llama-models writes it for 3.2.
_META_FIELDS: dict[str, tuple[type, ...]] = {
    "dim": (int,), "n_layers": (int,), "n_heads": (int,), "n_kv_heads": (int, type(None)),
    "vocab_size": (int,), "multiple_of": (int,), "ffn_dim_multiplier": (int, float, type(None)),
    "norm_eps": (int, float), "rope_theta": (int, float), "use_scaled_rope": (bool,),
    "rope_scaling_factor": (int, float, type(None)), "max_seq_len": (int,), "max_batch_size": (int,),
}


def _read_meta_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MedlmError(f"{path.parent}: no {path.name} (expected Meta's layout: params.json, "
                         "consolidated.00.pth, ...)")
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(params).__name__}")
    for key, value in params.items():
        kinds = _META_FIELDS.get(key)
        if kinds is None:
            raise ConfigError(f"{path}: unknown field {key!r} (medlm reads {', '.join(_META_FIELDS)})")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ConfigError(f"{path}: field {key!r} must be {names}, got {value!r}")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ConfigError(f"{path}: field {key!r} is missing")
    return params


def _config_from_meta(params: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Any]:
    """LlamaConfig arguments from a checked params.json; vocab_size -1 (Llama 2) is read off the weights."""
    vocab_size = params.get("vocab_size", -1)
    if vocab_size == -1 and "tok_embeddings.weight" in state:
        vocab_size = state["tok_embeddings.weight"].shape[0]
    rope_scaling = None
    if params.get("use_scaled_rope", False):  # Meta's apply_scaling constants
        rope_scaling = {"factor": params.get("rope_scaling_factor") or 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if "max_seq_len" in params:
        block_size = params["max_seq_len"]
    else:
        block_size = 131072 if rope_scaling else 8192 if "rope_theta" in params else 4096
    return dict(
        vocab_size=vocab_size, dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads"), multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"), norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=params.get("rope_theta", 10000.0), rope_scaling=rope_scaling, block_size=block_size,
        tie_embeddings="output.weight" not in state,
    )


# Model-parallel shards split these along dim 0 (column-parallel) or dim 1 (row-parallel); norms are
# copies. tok_embeddings is split along the vocabulary (Llama 3) or along dim (Llama 2): see _merge.
_META_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
_SHARD_NAME = re.compile(r"^consolidated\.(\d+)\.pth$")


def _merge_meta_shards(d: Path, dim: int) -> dict[str, Tensor]:
    shards = sorted((int(m[1]), p) for p in d.glob("consolidated.*.pth") if (m := _SHARD_NAME.match(p.name)))
    if not shards:
        raise MedlmError(f"{d}: no consolidated.00.pth (expected Meta's layout: params.json, consolidated.NN.pth)")
    for expected, (number, _) in enumerate(shards):
        if number != expected:
            raise MedlmError(f"{d}: consolidated.{expected:02d}.pth is missing "
                             f"(found {', '.join(p.name for _, p in shards)})")
    parts = [_load_shard(p) for _, p in shards]
    merged: dict[str, Tensor] = {}
    for name, first in parts[0].items():
        if name == "rope.freqs":  # a RoPE buffer Llama 1/2 checkpoints saved; recomputed here
            continue
        pieces = []
        for (_, path), part in zip(shards, parts):
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


def _load_shard(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling refused, truncated zip, not a torch file
        raise MedlmError(f"{path}: cannot be read as a weights-only torch checkpoint "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MedlmError(f"{path}: expected a dict of tensors")
    return state


def _meta_to_rotate_half(w: Tensor, n_heads: int, source: str) -> Tensor:
    """Reorder each head's rows from interleaved pairs (0,1),(2,3).. to halves (0,D/2),(1,D/2+1)..
    (transformers' convert_llama_weights_to_hf ``permute``)."""
    out_dim, in_dim = w.shape
    if out_dim % (2 * n_heads):
        raise MedlmError(f"{source}: {out_dim} rows do not split into {n_heads} heads of even size")
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)
