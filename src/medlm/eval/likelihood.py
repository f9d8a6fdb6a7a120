"""Log-likelihoods of continuations after a prompt, many prompts per forward pass.

What multiple-choice benchmarks share (PubMedQA's yes/no/maybe, HellaSwag's four endings): for
each request ``(prompt, [continuation, ...])`` the summed log-probability of every continuation's
tokens given the prompt.

The prompt is computed once per request, not once per continuation: a request becomes one row
``[prompt][c1[:-1]][c2[:-1]]...`` in which each continuation's segment attends to the whole prompt
and causally to itself, never to another continuation, and restarts its positions where the prompt
ends (``pos`` and ``mask`` of the calling convention in :mod:`medlm.models.kv_cache`). The last
token of a continuation is never fed in (nothing is predicted after it), so single-token answers
such as PubMedQA's " yes" cost no extra positions at all. Rows are sorted by length, right-padded
and batched; a batch without segments runs with plain causal attention (right padding never leaks
into real tokens), the fast path of ``scaled_dot_product_attention``.

When the model exposes ``hidden_states`` and its output layer (``lm_head`` for GPT-2, ``output``
for Llama), only the positions that predict a scored token go through that layer: for GPT-2 124M
the vocabulary projection is about a third of the work per token, and (B, T, vocab) logits would
be the largest tensor by far. Any other causal LM is called as ``model(idx, pos=, mask=)``.

A prompt too long for ``model.config.block_size`` is cut from the left (its end is kept, as the
EleutherAI harness does); the number of requests cut is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError
from medlm.models.kv_cache import output_layer

# (prompt token ids, [continuation token ids, ...])
Request = tuple[Sequence[int], Sequence[Sequence[int]]]
# A model's vocabulary may exceed its tokenizer's by padding (nanoGPT pads 50,257 to 50,304).
MAX_VOCAB_PADDING = 1024


def check_vocab(model: nn.Module, tokenizer: Tokenizer, where: str = "model") -> None:
    """A model must have an output for every token id of the tokenizer (and not be built for another
    tokenizer altogether): checked before any scoring, as one clear error."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ConfigError(
            f"{where}: {type(model).__name__} has no config.vocab_size; a causal LM "
            "following medlm's calling convention is needed"
        )
    if not tokenizer.vocab_size <= vocab < tokenizer.vocab_size + MAX_VOCAB_PADDING:
        raise ConfigError(
            f"{where}: the model's vocabulary ({vocab:,} tokens) does not fit the tokenizer "
            f"{tokenizer.name!r} ({tokenizer.vocab_size:,} tokens); score it with the tokenizer it "
            "was trained with"
        )


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class _Row:
    """One forward-pass row: a prompt and the segments of some of its continuations."""

    request: int
    tokens: list[int]
    pos: list[int]
    seg: list[int]  # 0 prompt, k > 0 the segment of the row's k-th continuation
    # (column whose output predicts the token, the token, continuation index in the request)
    targets: list[tuple[int, int, int]] = field(default_factory=list)


def _rows(
    index: int, prompt: Sequence[int], continuations: Sequence[Sequence[int]], block_size: int
) -> tuple[list[_Row], bool]:
    """The rows of one request, and whether its prompt was cut to fit ``block_size``."""
    if not prompt:
        raise ValueError(
            f"request {index}: empty prompt (start it with the tokenizer's "
            "encode_prompt, which never returns an empty list)"
        )
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError(f"request {index}: every continuation needs at least one token")
    extras = [len(c) - 1 for c in continuations]  # tokens each continuation adds to a row
    keep = min(len(prompt), block_size - max(extras))
    if keep < 1:
        raise ConfigError(
            f"request {index}: a continuation of {max(extras) + 1} tokens does not "
            f"fit the model's block_size {block_size}"
        )
    cut = keep < len(prompt)
    prompt = list(prompt[-keep:])
    rows: list[_Row] = []
    row: _Row | None = None
    for k, cont in enumerate(continuations):
        if row is None or len(row.tokens) + extras[k] > block_size:
            row = _Row(index, list(prompt), list(range(keep)), [0] * keep)
            rows.append(row)
        seg = max(row.seg) + 1
        start = len(row.tokens)
        row.tokens += cont[:-1]
        row.pos += range(keep, keep + extras[k])
        row.seg += [seg] * extras[k]
        # the first token is predicted by the prompt's last position, each later one by its
        # predecessor inside the segment
        cols = [keep - 1, *range(start, start + extras[k])]
        row.targets += [(col, tok, k) for col, tok in zip(cols, cont)]
    return rows, cut


def _segment_mask(seg: Tensor) -> Tensor:
    """(B, T) segment ids (0 prompt, k > 0 a continuation, -1 padding) -> (B, 1, T, T) bool.

    A query sees the keys at or before it that are prompt or its own segment; a padding query sees
    itself only, so that no attention row is empty (an empty row makes attention return NaN).
    """
    T = seg.size(1)
    idx = torch.arange(T, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T): key <= query
    sq, sk = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    allowed = causal[None] & (sk >= 0) & ((sk == 0) | (sk == sq))  # (B, T, T)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=seg.device)[None]
    return allowed[:, None]  # (B, 1, T, T)


@dataclass
class LoglikelihoodResult:
    """Summed log-probability of each continuation of each request; how many prompts were cut."""

    logprobs: list[list[float]]
    n_truncated: int


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module,
    requests: Sequence[Request],
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> LoglikelihoodResult:
    """``requests``: ``(prompt ids, [continuation ids, ...])``; returns, per request, the summed
    log-probability of each continuation given the prompt, in float32 whatever the model's dtype.

    ``batch_size`` counts rows (one per request unless its continuations overflow the block size).
    The model runs in eval mode on ``device`` (default: where its parameters are) and is put back
    in the mode it was in.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    block_size = model.config.block_size
    device = torch.device(device) if device is not None else model_device(model)
    rows: list[_Row] = []
    n_truncated = 0
    for i, (prompt, continuations) in enumerate(requests):
        request_rows, cut = _rows(i, prompt, continuations, block_size)
        rows += request_rows
        n_truncated += cut
    out = [[0.0] * len(c) for _, c in requests]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r].tokens))  # long first: OOM early
    head = output_layer(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start : start + batch_size]]
            for row, scores in zip(batch, _score_batch(model, head, batch, device)):
                for (_, _, k), s in zip(row.targets, scores):
                    out[row.request][k] += s
    finally:
        model.train(was_training)
    return LoglikelihoodResult(out, n_truncated)


def _score_batch(
    model: nn.Module, head: nn.Module | None, batch: list[_Row], device: torch.device
) -> list[list[float]]:
    """Log-probability of every target of every row of one right-padded batch."""
    B, T = len(batch), max(len(r.tokens) for r in batch)
    idx = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    for b, r in enumerate(batch):
        n = len(r.tokens)
        idx[b, :n] = torch.tensor(r.tokens)
        pos[b, :n] = torch.tensor(r.pos)
        seg[b, :n] = torch.tensor(r.seg)
    rows = torch.tensor([b for b, r in enumerate(batch) for _ in r.targets])
    cols = torch.tensor([c for r in batch for c, _, _ in r.targets])
    targets = torch.tensor([t for r in batch for _, t, _ in r.targets], device=device)
    idx = idx.to(device)
    if bool((seg > 0).any()):
        pos, mask = pos.to(device), _segment_mask(seg.to(device))
    else:  # prompts alone, right-padded: causal attention never reaches the padding
        pos, mask = None, None
    if head is not None:
        h = model.hidden_states(idx, pos=pos, mask=mask)  # (B, T, C)
        logits = head(h[rows.to(device), cols.to(device)])  # (N, vocab)
    else:
        logits = model(idx, pos=pos, mask=mask)[rows.to(device), cols.to(device)]  # (N, vocab)
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]  # (N,)
    logp = logp.tolist()
    out, i = [], 0
    for r in batch:
        out.append(logp[i : i + len(r.targets)])
        i += len(r.targets)
    return out
