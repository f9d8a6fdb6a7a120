"""Output layer and cross-entropy in chunks of tokens, never the whole (N, vocab) logits at once.

The plain loss materialises the logits of every token (B*T x 50,257 for GPT-2), a float32 copy of
them for the cross-entropy, and a gradient of the same size in backward: 412 MB each at batch
16 x 128, gigabytes at block 1024, the largest tensors of a training step by far. Here the logits
of one chunk of tokens at a time are computed, turned into the chunk's loss and, when gradients are
needed, at once into the chunk's gradients of the hidden states and of the output weight (the
softmax minus the one-hot target, times the weight / the hidden states: the three matmuls of the
plain path, none recomputed). Backward then only scales the stored gradients, so the peak is one
chunk's logits plus one weight-sized gradient.

The numerics follow the plain path ``F.cross_entropy(head(h).float(), labels)``: the matmuls in
the compute dtype (the autocast dtype when autocast is on, else the inputs'), the softmax and the
loss in float32. The loss and gradients are equal to the plain path's within rounding (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Tokens per chunk: the logits of 1024 tokens x 50,257 in float32 are 206 MB.
CHUNK_TOKENS = 1024


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    ignore_index: int = -100,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Tensor:
    """Summed cross-entropy of ``hidden (N, C) @ weight (V, C).T`` against ``labels (N,)``,
    skipping ``ignore_index``; the same value and gradients as
    ``F.cross_entropy((hidden @ weight.T).float(), labels, ignore_index=..., reduction="sum")``."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden (N, C) and labels (N,) expected, got {tuple(hidden.shape)} and "
            f"{tuple(labels.shape)}"
        )
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    grads = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(
        hidden,
        weight,
        labels,
        ignore_index,
        chunk_tokens,
        dtype,
        grads and hidden.requires_grad,
        grads and weight.requires_grad,
    )


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        ignore_index: int,
        chunk_tokens: int,
        dtype: torch.dtype,
        grad_hidden: bool,
        grad_weight: bool,
    ) -> Tensor:
        N = hidden.size(0)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if grad_hidden else None
        d_weight = torch.zeros_like(weight, dtype=torch.float32) if grad_weight else None
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here
            w = weight.to(dtype)
            for start in range(0, N, chunk_tokens):
                end = min(start + chunk_tokens, N)
                h = hidden[start:end].to(dtype)  # (n, C)
                y = labels[start:end]
                valid = y != ignore_index
                target = torch.where(valid, y, 0)[:, None]  # (n, 1)
                logits = (h @ w.t()).float()  # (n, V): the only logits held
                lse = logits.logsumexp(dim=-1)  # (n,)
                nll = lse - logits.gather(1, target)[:, 0]
                total += torch.where(valid, nll, 0.0).sum()
                if not (grad_hidden or grad_weight):
                    continue
                # d loss / d logits = softmax - one_hot(target), zero on ignored rows
                g = logits.sub_(lse[:, None]).exp_()
                g.scatter_add_(1, target, torch.full_like(target, -1, dtype=g.dtype))
                if not bool(valid.all()):
                    g.mul_(valid[:, None])
                g = g.to(dtype)  # (n, V)
                if grad_hidden:
                    d_hidden[start:end] = g @ w
                if grad_weight:
                    d_weight += (g.t() @ h).float()
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        d_hidden, d_weight = ctx.saved_tensors
        if d_hidden is not None:
            d_hidden = d_hidden * grad_total.to(d_hidden.dtype)
        if d_weight is not None:
            d_weight = (d_weight * grad_total).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None, None
