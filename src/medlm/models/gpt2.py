"""GPT-2, read top to bottom like nanoGPT's ``model.py``: config, blocks, model, loaders.

Module names match Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn`` ...) so that
state dicts map one to one; HF's ``Conv1D`` stores weights as (in, out), our ``nn.Linear`` as
(out, in), so those four weights are transposed on the way in and out.

The calling convention is the one of :mod:`medlm.models.kv_cache`:
``model(idx, pos=None, mask=None, cache=None) -> logits (B, T, vocab)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medlm.errors import ConfigError, MedlmError
from medlm.models.convert import load_matching, read_hf_config, read_hf_state_dict
from medlm.models.kv_cache import KVCache


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
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit faster and no worse
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{key}: {value!r} is not a positive integer")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_head: {self.n_head} does not divide n_embd {self.n_embd}")
        for key in ("embd_dropout", "attn_dropout", "resid_dropout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"model.{key}: {value!r} is not a probability in [0, 1)")
        if not isinstance(self.bias, bool):
            raise ConfigError(f"model.bias: {self.bias!r} is not true or false")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConfigError(f"model.layer_norm_eps: {eps!r} is not a small positive number")

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
        """Training FLOPs (forward + backward) per token at context ``seq_len`` (default block_size).

        6N for the weight matmuls plus 12·L·H·Q·T for attention (PaLM appendix B, nanoGPT's
        ``estimate_mfu``): MFU = flops_per_token · tokens per second / peak FLOPS.
        """
        T = self.block_size if seq_len is None else seq_len
        L, H, Q = self.n_layer, self.n_head, self.n_embd // self.n_head
        return 6 * self.num_params(non_embedding=True) + 12 * L * H * Q * T


# ----------------------------------------------------------------------------------------------
# Blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.attn_dropout = config.attn_dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, D), S = cache.length + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache kept in another dtype
        # mask None: plain causal when there is no cached prefix; a single new query with a prefix
        # may see every key (the model builds an explicit mask for several new queries).
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=mask is None and T == k.size(2))  # (B, H, T, D)
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
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# Model


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.embd_dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
        ))
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
        """Parameters (the tied lm_head once); ``non_embedding`` leaves out the position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for ``max_len`` positions, on the model's device and dtype by default."""
        if max_len > self.config.block_size:
            raise ConfigError(f"KV cache of {max_len} positions exceeds block_size {self.config.block_size}")
        p = self.lm_head.weight
        C, H = self.config.n_embd, self.config.n_head
        return KVCache(self.config.n_layer, batch_size, H, max_len, C // H,
                       device=p.device if device is None else device, dtype=p.dtype if dtype is None else dtype)

    def hidden_states(self, idx: Tensor, pos: Tensor | None = None, mask: Tensor | None = None,
                      cache: KVCache | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, n_embd) final hidden states, after ln_f."""
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.block_size:
            raise ConfigError(f"sequence of {T} tokens after {past} cached ones ({past + T} positions) "
                              f"exceeds block_size {self.config.block_size}")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)
        if mask is None and past and T > 1:  # several new queries after a cached prefix
            S = past + T
            mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)[None, None]
        elif mask is not None and mask.size(-1) != past + T:
            raise ValueError(f"mask covers {mask.size(-1)} keys, expected {past + T} "
                             f"({past} cached + {T} new)")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, idx: Tensor, pos: Tensor | None = None, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits."""
        return self.lm_head(self.hidden_states(idx, pos, mask, cache))

    # ------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, **overrides) -> "GPT2":
        """GPT-2 weights from a local HF directory or a hub id (gpt2, gpt2-medium, ...).

        ``overrides`` set any :class:`GPT2Config` field on top of the checkpoint's config;
        ``dropout=x`` sets all three dropouts (a field given by name wins over it). A smaller
        ``block_size`` crops the position embeddings, as nanoGPT's ``crop_block_size``.
        """
        known = {f.name for f in fields(GPT2Config)} | {"dropout"}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"model.{key}: unknown GPT-2 override (known: {sorted(known)})")
        directory = _resolve_checkpoint(name_or_dir)
        hf_config = read_hf_config(directory)
        config = _config_from_hf(hf_config, f"{directory}/config.json")
        if "dropout" in overrides:
            p = overrides.pop("dropout")
            overrides = {"embd_dropout": p, "attn_dropout": p, "resid_dropout": p} | overrides
        config = replace(config, **overrides)  # validated again in __post_init__
        state = _state_dict_from_hf(read_hf_state_dict(directory), hf_config, config, str(directory))
        model = cls(config)
        load_matching(model, state, str(directory))
        return model

    def to_hf(self) -> tuple[dict, dict[str, Tensor]]:
        """(config, state_dict) of the equivalent HF ``GPT2LMHeadModel``, for ``convert.write_hf_checkpoint``.

        Token ids (bos, eos) are the tokenizer's, so the exporter writes them. The output layer is tied (``tie_word_embeddings``), so ``lm_head.weight`` is not written.
        A model without biases gets zero biases: HF's GPT-2 always has them. Tensors that need no
        transpose share memory with the model.
        """
        c = self.config
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
        for name, t in self.state_dict().items():
            if name == "lm_head.weight":
                continue
            t = t.detach()
            state[name] = t.t().contiguous() if name.endswith(_CONV1D) else t
        if not c.bias:
            for name, module in self.named_modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)) and name != "lm_head":
                    w = module.weight
                    state[f"{name}.bias"] = torch.zeros(w.size(0), dtype=w.dtype, device=w.device)
        return config, state


# ----------------------------------------------------------------------------------------------
# Loading helpers

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")  # causal-mask buffers of older HF versions
_HUB_PATTERNS = (["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
                 ["config.json", "pytorch_model.bin"])  # safetensors first; .bin only if there is none


def _resolve_checkpoint(name_or_dir: str | Path) -> Path:
    """A local directory as is; anything else is a hub id, downloaded (or found in the HF cache)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if path.exists():
        raise MedlmError(f"{name}: not a directory (a model is a directory with config.json and weights)")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id
        raise MedlmError(f"{name}: no such model directory")
    try:
        from huggingface_hub import snapshot_download

        for patterns in _HUB_PATTERNS:
            directory = Path(snapshot_download(name, allow_patterns=patterns))
            if any((directory / f).is_file() for f in
                   ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
                return directory
    except Exception as err:  # offline, unreachable, unknown repo, gated: all mean "not here"
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise MedlmError(
            f"{name}: could not download the model from the Hugging Face Hub ({type(err).__name__}: "
            f"{reason}); pass a local directory instead (medlm-prepare stages pretrained weights)") from None
    raise MedlmError(f"{name}: the Hugging Face Hub repository has no model.safetensors or pytorch_model.bin")


def _config_from_hf(hf: dict, source: str) -> GPT2Config:
    """GPT2Config from a HF config.json; a GPT-2 variant that this model cannot run is refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"{source}: model_type {hf['model_type']!r} is not a GPT-2")
    n_embd = hf.get("n_embd", 768)
    unsupported = {
        "activation_function": hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"),
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


def _state_dict_from_hf(hf_state: dict[str, Tensor], hf_config: dict, config: GPT2Config,
                        source: str) -> dict[str, Tensor]:
    """HF GPT2LMHeadModel (or bare GPT2Model, as the hub's gpt2 files) tensors -> our names and layout."""
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
        raise MedlmError(f"{source}: lm_head.weight differs from transformer.wte.weight; medlm's GPT2 "
                         f"ties them (tie_word_embeddings={hf_config.get('tie_word_embeddings', True)})")
    if wte is not None:
        state["lm_head.weight"] = wte
    wpe = state.get("transformer.wpe.weight")
    if wpe is not None and config.block_size < wpe.size(0):
        state["transformer.wpe.weight"] = wpe[:config.block_size]
    return state
