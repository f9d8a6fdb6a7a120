"""A Llama 2/3-style decoder (RMSNorm, RoPE with Llama 3.1 scaling, SwiGLU, grouped-query
attention).

Reads top to bottom like nanoGPT's ``model.py`` and :mod:`medlm.models.gpt2`: the config, the
blocks, the model. Loading Hugging Face and Meta checkpoints is :mod:`medlm.models.convert_llama`'s
(``Llama.from_pretrained`` and ``Llama.from_meta`` point there). Calling convention:
``medlm.models.kv_cache``.

Parameter names follow Meta's ``model.py`` (``tok_embeddings``, ``layers.i.attention.wq``,
``feed_forward.w1``/``w2``/``w3``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``). The rows
of ``wq``/``wk`` are in Hugging Face's rotate-half order: RoPE rotates dimension ``j`` with
``j + head_dim/2`` (Meta's interleaved pairs are permuted once, at load time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlm.errors import ConfigError
from medlm.models.kv_cache import KVCache, StaticKVCache, attention_inputs, new_kv_cache
from medlm.utils.checks import (
    check_bool,
    check_positive_int,
    check_positive_number,
    check_probability,
)

# ----------------------------------------------------------------------------- config

_ROPE_SCALING_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


@dataclass
class RopeScaling:
    """Llama 3.1's RoPE scaling: long wavelengths slowed by ``factor``, short ones kept, a smooth
    blend between ``original_max_position_embeddings / high_freq_factor`` and ``/
    low_freq_factor``."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            check_positive_number(getattr(self, key), f"model.rope_scaling.{key}")
            setattr(self, key, float(getattr(self, key)))
        if not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError(
                f"model.rope_scaling.high_freq_factor: {self.high_freq_factor} is not greater "
                f"than low_freq_factor {self.low_freq_factor}"
            )
        check_positive_int(
            self.original_max_position_embeddings,
            "model.rope_scaling.original_max_position_embeddings",
        )

    @classmethod
    def from_mapping(cls, values: Mapping) -> RopeScaling:
        """Accept the Hugging Face spelling too (``rope_type: llama3``, as in a ``config.json``)."""
        values = dict(values)
        rope_type = values.pop("rope_type", values.pop("type", "llama3"))
        if rope_type != "llama3":
            raise ConfigError(f"model.rope_scaling.rope_type: {rope_type!r} is not 'llama3'")
        unknown = sorted(set(values) - set(_ROPE_SCALING_KEYS))
        if unknown:
            raise ConfigError(
                f"model.rope_scaling.{unknown[0]}: not a Llama 3 rope scaling key "
                f"(expected {', '.join(_ROPE_SCALING_KEYS)})"
            )
        for key in _ROPE_SCALING_KEYS:
            if key not in values:
                raise ConfigError(f"model.rope_scaling.{key}: missing")
        return cls(**values)


@dataclass
class LlamaConfig:
    """Sizes of a Llama model, named as :class:`~medlm.models.gpt2.GPT2Config` names them.

    ``n_kv_head=None`` means ``n_head`` (no grouping); ``ffn_hidden_dim=None`` is computed as Meta
    does (2/3 of 4*n_embd, times ``ffn_dim_multiplier``, rounded up to ``multiple_of``). Both are
    resolved here, so the config always holds the sizes the model is built with.
    """

    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_kv_head: int | None = None
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
        for key in ("vocab_size", "n_layer", "n_head", "n_embd", "multiple_of", "block_size"):
            check_positive_int(getattr(self, key), f"model.{key}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_positive_int(self.n_kv_head, "model.n_kv_head")
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_kv_head: {self.n_kv_head} does not divide n_head {self.n_head}"
            )
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_head: {self.n_head} does not divide n_embd {self.n_embd}")
        if (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"model.n_head: head size n_embd / n_head = {self.n_embd // self.n_head} is odd "
                "(RoPE rotates pairs of dimensions)"
            )
        if self.ffn_dim_multiplier is not None:
            check_positive_number(self.ffn_dim_multiplier, "model.ffn_dim_multiplier")
        if self.ffn_hidden_dim is None:
            hidden = int(2 * (4 * self.n_embd) / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            m = self.multiple_of
            self.ffn_hidden_dim = m * ((hidden + m - 1) // m)
        check_positive_int(self.ffn_hidden_dim, "model.ffn_hidden_dim")
        check_positive_number(self.norm_eps, "model.norm_eps")
        check_positive_number(self.rope_theta, "model.rope_theta")
        if isinstance(self.rope_scaling, Mapping):
            self.rope_scaling = RopeScaling.from_mapping(self.rope_scaling)
        elif self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(
                f"model.rope_scaling: {self.rope_scaling!r} is not null or a mapping with "
                f"keys {', '.join(_ROPE_SCALING_KEYS)}"
            )
        check_bool(self.tie_embeddings, "model.tie_embeddings")
        check_probability(self.dropout, "model.dropout")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count without building the model; a tied output layer counts once.

        ``non_embedding`` leaves out the token embeddings of an untied model (a table lookup, not a
        matmul); the output layer always counts, so that 6N below is the weight-matmul FLOPs.
        """
        D, Q, F_ = self.n_embd, self.head_dim, self.ffn_hidden_dim
        attn = D * self.n_head * Q + 2 * D * self.n_kv_head * Q + self.n_head * Q * D
        block = 2 * D + attn + 3 * D * F_
        emb = self.vocab_size * D
        n = self.n_layer * block + D + emb + (0 if self.tie_embeddings else emb)
        return n - emb if non_embedding and not self.tie_embeddings else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context ``seq_len`` (default
        block_size):
        6N for the weight matmuls plus 12·L·H·Q·T for attention (PaLM appendix B), as GPT2Config."""
        T = self.block_size if seq_len is None else seq_len
        attention = 12 * self.n_layer * self.n_head * self.head_dim * T
        return 6 * self.num_params(non_embedding=True) + attention


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
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
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
    """Grouped-query attention: ``n_head`` query heads share ``n_kv_head`` key/value heads."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = (
            config.n_head,
            config.n_kv_head,
            config.head_dim,
        )
        C, H, H_kv, D = config.n_embd, config.n_head, config.n_kv_head, config.head_dim
        self.wq = nn.Linear(C, H * D, bias=False)
        self.wk = nn.Linear(C, H_kv * D, bias=False)
        self.wv = nn.Linear(C, H_kv * D, bias=False)
        self.wo = nn.Linear(H * D, C, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, S, D), S = cache.length + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp32 cache under bf16 autocast
        # Without a mask, the queries are the last T of S keys: plain causal when S == T, and a
        # single
        # new token (T == 1) sees every key. The model passes a mask for the other cases.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None and T == k.size(2) and T > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H * D)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 is Hugging Face's gate_proj, w3 up_proj, w2 down_proj."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.ffn_hidden_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_hidden_dim, config.n_embd, bias=False)
        self.w3 = nn.Linear(config.n_embd, config.ffn_hidden_dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attention = Attention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return x + self.feed_forward(self.ffn_norm(x))


# ----------------------------------------------------------------------------- model


class Llama(nn.Module):
    """Token embeddings, ``n_layer`` pre-norm blocks, a final RMSNorm and the (tied or untied)
    output."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # float32 RoPE frequencies per device; not a buffer, so that model.to(bfloat16) cannot round
        # them (bf16 frequencies garble the angles of long positions) and they stay out of
        # checkpoints.
        self._inv_freq: dict[torch.device, Tensor] = {}
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (a tied output layer once); ``non_embedding`` as in LlamaConfig.num_params."""
        n = sum(p.numel() for p in self.parameters())
        return (
            n - self.tok_embeddings.weight.numel()
            if non_embedding and not self.config.tie_embeddings
            else n
        )

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

    def hidden_states(
        self,
        idx: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
    ) -> Tensor:
        """(B, T) token ids -> (B, T, n_embd) after the final norm; arguments as in ``forward``."""
        B, T = idx.shape
        pos, mask = attention_inputs(idx, pos, mask, cache, self.config.block_size)
        if pos.dim() == 1:
            pos = pos.expand(B, T)
        cos, sin = self._rope_angles(pos)
        x = self.drop(self.tok_embeddings(idx))  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def forward(
        self,
        idx: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
    ) -> Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits. ``pos`` (B, T) positions (default 0..T-1
        after
        the cache), ``mask`` (B, 1, T, S) bool, True where a query may attend a key (default
        causal),
        ``cache`` a KVCache from ``new_cache`` that this call fills and advances."""
        return self.output(self.hidden_states(idx, pos, mask, cache))  # (B, T, vocab)

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        static: bool = False,
    ) -> KVCache | StaticKVCache:
        """An empty KVCache for this model's layers and heads, on its device and dtype by
        default; ``static``: a :class:`StaticKVCache` (fixed shapes, for ``torch.compile``)."""
        c = self.config
        return new_kv_cache(
            c.n_layer,
            c.n_kv_head,
            c.head_dim,
            c.block_size,
            self.tok_embeddings.weight,
            batch_size,
            max_len,
            device,
            dtype,
            static,
        )

    # ------------------------------------------------------------------------- checkpoints
    # The conversions are medlm.models.convert_llama's (it imports this module).

    @classmethod
    def from_pretrained(cls, pretrained: str | Path, **overrides: Any) -> Llama:
        """A Hugging Face ``LlamaForCausalLM`` directory or hub id; ``overrides`` replace config
        values that change no tensor's shape: see
        :func:`~medlm.models.convert_llama.load_hf_llama`."""
        from medlm.models.convert_llama import load_hf_llama

        return load_hf_llama(pretrained, **overrides)

    @classmethod
    def from_meta(cls, pretrained: str | Path, **overrides: Any) -> Llama:
        """Meta's original directory (params.json, consolidated.NN.pth): see
        :func:`~medlm.models.convert_llama.load_meta_llama`."""
        from medlm.models.convert_llama import load_meta_llama

        return load_meta_llama(pretrained, **overrides)

    def to_hf(self) -> tuple[dict, dict[str, Tensor]]:
        """(config.json, state dict) of the equivalent HF ``LlamaForCausalLM``."""
        from medlm.models.convert_llama import llama_to_hf

        return llama_to_hf(self)
