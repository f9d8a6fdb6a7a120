"""Key/value cache and attention masks shared by every causal LM in ``medlm.models``.

Every model (GPT2, Llama) follows one calling convention, so that generation, training and
evaluation code never branch on the architecture:

    logits = model(idx, pos=None, mask=None, cache=None)     # (B, T) -> (B, T, vocab)

- ``pos``   (B, T) long: the position of each token. Default: 0..T-1, shifted by ``cache.length``.
- ``mask``  (B, 1, T, S) bool, True where query t may attend key s (S = T, or cache.length + T).
            ``None`` means plain causal attention (the fast path of scaled_dot_product_attention).
- ``cache`` a :class:`KVCache`; attention layer ``i`` calls ``cache.update(i, k, v)`` and attends
            over the keys and values it returns; the model calls ``cache.advance(T)`` once, after
            its last layer.

and offers ``model.new_cache(batch_size, max_len)`` sized for its own layers and heads.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Preallocated keys and values of every layer, filled left to right as generation proceeds."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # how many positions are filled

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H_kv, T, D) after the filled part; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0


def padded_causal_mask(key_valid: Tensor, n_queries: int) -> Tensor:
    """Causal mask over left-padded sequences: (B, S) bool of real keys -> (B, 1, T, S) bool.

    The T queries are the last T of the S positions. A padding query may attend itself, so that no
    row is empty (an empty row would make attention return NaN); its output is never used.
    """
    S = key_valid.size(1)
    q_pos = torch.arange(S - n_queries, S, device=key_valid.device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=key_valid.device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    mask = causal[None] & key_valid[:, None, :]  # (B, T, S)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]  # (B, 1, T, S)


def document_causal_mask(doc_ids: Tensor) -> Tensor:
    """(B, T) document ids of packed examples -> (B, 1, T, T) mask: causal and within one
    document."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same_doc & causal)[:, None]


def document_positions(doc_ids: Tensor) -> Tensor:
    """(B, T) document ids -> (B, T) positions that restart at 0 where each document starts."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx
