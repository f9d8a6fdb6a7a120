"""GPT-2, read top to bottom like nanoGPT's ``model.py``: config, blocks, model.

Module names match Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn`` ...) so that
state dicts map one to one (HF's Conv1D weights are transposed: :mod:`medlm.models.convert_gpt2`).

The calling convention is the one of :mod:`medlm.models.kv_cache`:
``model(idx, pos=None, mask=None, cache=None) -> logits (B, T, vocab)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medlm.errors import ConfigError
from medlm.models.kv_cache import KVCache, StaticKVCache, attention_inputs, new_kv_cache
from medlm.utils.checks import (
    check_bool,
    check_positive_int,
    check_positive_number,
    check_probability,
)

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class GPT2Config:
    """Hyperparameters of a GPT-2; the defaults are GPT-2 small (124M)."""

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    bias: bool = (
        True  # biases in Linear and LayerNorm, as GPT-2; False is a bit faster and no worse
    )
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            check_positive_int(getattr(self, key), f"model.{key}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_head: {self.n_head} does not divide n_embd {self.n_embd}")
        for key in ("embd_dropout", "attn_dropout", "resid_dropout"):
            check_probability(getattr(self, key), f"model.{key}")
        check_bool(self.bias, "model.bias")
        check_positive_number(self.layer_norm_eps, "model.layer_norm_eps", below=1)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count without building the model; the tied lm_head counts once.

        ``non_embedding`` leaves out the position embeddings (not the token embeddings, whose
        weights are also the output layer), as nanoGPT's ``get_num_params`` does.
        """
        C, b = self.n_embd, int(self.bias)
        ln = C + b * C
        attn = C * 3 * C + b * 3 * C + C * C + b * C
        mlp = C * 4 * C + b * 4 * C + 4 * C * C + b * C
        n = self.vocab_size * C + self.n_layer * (2 * ln + attn + mlp) + ln
        return n if non_embedding else n + self.block_size * C

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context ``seq_len`` (default
        block_size).

        6N for the weight matmuls plus 12·L·H·Q·T for attention (PaLM appendix B, nanoGPT's
        ``estimate_mfu``): MFU = flops_per_token · tokens per second / peak FLOPS.
        """
        T = self.block_size if seq_len is None else seq_len
        L, H, Q = self.n_layer, self.n_head, self.n_embd // self.n_head
        return 6 * self.num_params(non_embedding=True) + 12 * L * H * Q * T


# ----------------------------------------------------------------------------------------------
# Blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which of the cache's layers is this one's
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attn_dropout = config.attn_dropout
        self.c_attn = nn.Linear(
            config.n_embd, 3 * config.n_embd, bias=config.bias
        )  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | StaticKVCache | None
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H, S, D), S = cache.length + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache kept in another dtype
        # mask None: plain causal when there is no cached prefix; a single new query with a prefix
        # may see every key (the model builds an explicit mask for several new queries).
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=mask is None and T == k.size(2),
        )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        # GPT-2's gelu is the tanh approximation (HF "gelu_new")
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | StaticKVCache | None
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# Model


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.embd_dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two per block
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied lm_head once); ``non_embedding`` leaves out the position
        embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        static: bool = False,
    ) -> KVCache | StaticKVCache:
        """A KV cache for ``max_len`` positions, on the model's device and dtype by default;
        ``static``: a :class:`StaticKVCache` (fixed shapes, for ``torch.compile``)."""
        c = self.config
        return new_kv_cache(
            c.n_layer,
            c.n_head,
            c.n_embd // c.n_head,
            c.block_size,
            self.lm_head.weight,
            batch_size,
            max_len,
            device,
            dtype,
            static,
        )

    def hidden_states(
        self,
        idx: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
    ) -> Tensor:
        """(B, T) token ids -> (B, T, n_embd) final hidden states, after ln_f."""
        pos, mask = attention_inputs(idx, pos, mask, cache, self.config.block_size)
        x = self.transformer.drop(
            self.transformer.wte(idx) + self.transformer.wpe(pos)
        )  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, mask, cache)
        if cache is not None:
            cache.advance(idx.size(1))
        return self.transformer.ln_f(x)

    def forward(
        self,
        idx: Tensor,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
    ) -> Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits."""
        return self.lm_head(self.hidden_states(idx, pos, mask, cache))

    # ------------------------------------------------------------------------------------------
    # Hugging Face checkpoints: the conversion is medlm.models.convert_gpt2's

    @classmethod
    def from_pretrained(cls, pretrained: str | Path, **overrides: Any) -> GPT2:
        """GPT-2 weights from a local HF directory or a hub id (gpt2, gpt2-medium, ...).

        ``overrides`` set :class:`GPT2Config` fields (``dropout=x`` sets all three dropouts):
        see :func:`medlm.models.convert_gpt2.load_hf_gpt2`.
        """
        from medlm.models.convert_gpt2 import load_hf_gpt2  # it imports this module

        return load_hf_gpt2(pretrained, **overrides)

    def to_hf(self) -> tuple[dict, dict[str, Tensor]]:
        """(config.json, state dict) of the equivalent HF ``GPT2LMHeadModel``."""
        from medlm.models.convert_gpt2 import gpt2_to_hf

        return gpt2_to_hf(self)
