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

and offers ``model.new_cache(batch_size, max_len, static=False)`` sized for its own layers and
heads: a :class:`KVCache`, or with ``static=True`` a :class:`StaticKVCache` whose shapes never
change from one step to the next (for ``torch.compile``; it needs explicit ``pos`` and ``mask``).

A model may also offer ``model.hidden_states(idx, pos, mask, cache) -> (B, T, n_embd)`` and an
output layer (``lm_head`` or ``output``): then a caller that needs logits at a few positions only
(the last one when generating, the scored ones when evaluating, chunks of tokens in the loss)
runs the output layer there alone: :func:`output_layer`, :func:`last_logits`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medlm.errors import ConfigError


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


class StaticKVCache:
    """A cache whose tensors keep one shape for the whole generation, for ``torch.compile``.

    Every layer has its own fixed (B, H_kv, max_len, D) buffers; ``update`` writes the new keys and
    values at the slots held in the tensor ``slots`` (set by the caller before each call) and
    returns the whole buffers. So a decoding step has the same shapes and no Python-side position
    at every step, and a compiled step (CUDA graphs included) is captured once and replayed. The
    caller's mask (required, over all ``max_len`` slots) hides the slots not written yet.
    """

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
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.slots = torch.zeros(0, dtype=torch.long, device=device)  # (T,) where T new ones go

    @property
    def max_len(self) -> int:
        return self.k[0].size(2)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H_kv, T, D) at ``slots`` (T,); return every slot (B, H_kv, max_len, D)."""
        self.k[layer][:, :, self.slots] = k  # an index_put_: captured in place by torch.compile
        self.v[layer][:, :, self.slots] = v
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        """Nothing to do: the caller moves ``slots``."""


def new_kv_cache(
    n_layer: int,
    n_kv_head: int,
    head_dim: int,
    block_size: int,
    weight: Tensor,
    batch_size: int,
    max_len: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    static: bool = False,
) -> KVCache | StaticKVCache:
    """A model's empty cache for ``max_len`` positions (at most its ``block_size``), on the device
    and dtype of ``weight`` unless given; ``static``: a :class:`StaticKVCache`."""
    if max_len > block_size:
        raise ConfigError(f"KV cache of {max_len} positions exceeds block_size {block_size}")
    return (StaticKVCache if static else KVCache)(
        n_layer,
        batch_size,
        n_kv_head,
        max_len,
        head_dim,
        device=weight.device if device is None else device,
        dtype=weight.dtype if dtype is None else dtype,
    )


def attention_inputs(
    idx: Tensor,
    pos: Tensor | None,
    mask: Tensor | None,
    cache: KVCache | StaticKVCache | None,
    block_size: int,
) -> tuple[Tensor, Tensor | None]:
    """``pos`` and ``mask`` of the calling convention with their defaults filled in and checked,
    the same for every model: positions ``cache.length`` onwards, (1, T); plain causal attention
    (None) unless several new tokens follow a cached prefix. A static cache takes both as given."""
    T = idx.size(1)
    if isinstance(cache, StaticKVCache):
        if pos is None or mask is None:
            raise ValueError("a StaticKVCache needs explicit pos and mask (over all its slots)")
        if mask.size(-1) != cache.max_len:
            raise ValueError(f"mask covers {mask.size(-1)} keys, expected {cache.max_len} slots")
        return pos, mask
    past = 0 if cache is None else cache.length
    if past + T > block_size:
        raise ConfigError(
            f"sequence of {T} tokens after {past} cached ones ({past + T} positions) "
            f"exceeds block_size {block_size}"
        )
    if pos is None:
        pos = torch.arange(past, past + T, device=idx.device)[None]  # (1, T)
    if mask is None and past and T > 1:  # several new queries after a cached prefix
        mask = causal_mask_at(torch.ones(1, past + T, dtype=torch.bool, device=idx.device), past)
    elif mask is not None and mask.size(-1) != past + T:
        raise ValueError(
            f"mask covers {mask.size(-1)} keys, expected {past + T} ({past} cached + {T} new)"
        )
    return pos, mask


def padded_causal_mask(key_valid: Tensor, n_queries: int) -> Tensor:
    """Causal mask over left-padded sequences: (B, S) bool of real keys -> (B, 1, T, S) bool.

    The T queries are the last T of the S positions. A padding query may attend itself, so that no
    row is empty (an empty row would make attention return NaN); its output is never used.
    """
    S = key_valid.size(1)
    return causal_mask_at(key_valid, S - n_queries, S)


def causal_mask_at(key_valid: Tensor, start: int, end: int | None = None) -> Tensor:
    """``padded_causal_mask`` for the queries at columns ``start .. end - 1`` (default: to the
    last) of the S keys: (B, S) bool -> (B, 1, end - start, S) bool. Keys after a query are hidden,
    so a static cache's slots that are not written yet are too."""
    S = key_valid.size(1)
    end = S if end is None else end
    q_pos = torch.arange(start, end, device=key_valid.device)[:, None]  # (T, 1)
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


# ----------------------------------------------------------------------------------------------
# Logits at the positions that are used


def output_layer(model: nn.Module) -> nn.Module | None:
    """The vocabulary projection after ``hidden_states``, when the model has both."""
    if not callable(getattr(model, "hidden_states", None)):
        return None
    for name in ("lm_head", "output"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Module):
            return layer
    return None


def last_logits(
    model: nn.Module,
    idx: Tensor,
    pos: Tensor | None = None,
    mask: Tensor | None = None,
    cache: KVCache | StaticKVCache | None = None,
) -> Tensor:
    """(B, T) token ids -> (B, vocab) logits of the last position only: the output layer (a third
    of GPT-2 124M's weights) runs on one position per row instead of T."""
    head = output_layer(model)
    if head is None:
        return model(idx, pos=pos, mask=mask, cache=cache)[:, -1]
    return head(model.hidden_states(idx, pos=pos, mask=mask, cache=cache)[:, -1])  # (B, vocab)
