"""Sampling and autoregressive generation for every causal LM that follows the calling convention
of :mod:`medlm.models.kv_cache` (``model(idx, pos, mask, cache)``, ``model.new_cache``,
``model.config.block_size``, ``model.config.vocab_size``).

Prompts of different lengths are left-padded into one batch that shares one prefill; the padding
is masked out of attention and skipped by the positions, so that every row generates exactly what
it would alone. Only the last position of each call goes through the output layer
(:func:`medlm.models.kv_cache.last_logits`).

Three ways to decode, the same tokens from each: without a cache (every step recomputes every
position), with a :class:`~medlm.models.kv_cache.KVCache` (the default), and with a
:class:`~medlm.models.kv_cache.StaticKVCache` whose fixed shapes let ``torch.compile`` capture
one decoding step (``compile=True``; worth it on a GPU, where CUDA graphs replay the step).
On an x86 CPU in float32, the cached decoding steps run the linear layers on weights packed once
for the batch (:mod:`medlm.models.packed_linear`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from medlm.errors import ConfigError, NonFiniteLogits
from medlm.models.kv_cache import causal_mask_at, last_logits, padded_causal_mask
from medlm.models.packed_linear import packed_linears, packing_pays

# ----------------------------------------------------------------------------------------------
# Sampling


def check_top_k(top_k: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: {top_k!r} is not a positive integer")


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """(B, V) logits with everything outside the nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probabilities sum to at least
    ``top_p``: a token stays if the tokens more likely than it sum to less than ``top_p``, so the
    most likely token always stays.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: {top_p!r} is not in (0, 1]")
    if top_p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.float().softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens more likely than each one
    drop_sorted = before >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def check_finite_logits(logits: Tensor) -> None:
    """Raise NonFiniteLogits unless every row of (B, V) ``logits`` has a finite maximum (the
    maximum is NaN if any logit is, +inf if any is, -inf if all are)."""
    row_max = logits.amax(dim=-1)  # (B,)
    bad = ~torch.isfinite(row_max)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        worst = float(row_max[row])  # nan, inf, or -inf when every logit of the row is -inf
        kind = (
            "no finite next-token logit (all -inf)" if worst < 0 else f"{worst} next-token logits"
        )
        raise NonFiniteLogits(
            f"the model gave {kind} in batch row {row}: its weights have probably diverged, "
            "so there is nothing to sample from"
        )


def sample_logits(
    logits: Tensor,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, V) next-token logits -> (B,) token ids. Temperature 0 or None is greedy (argmax).

    Raises :class:`~medlm.errors.NonFiniteLogits` when a row has a NaN or +inf logit, or no finite
    one (a diverged model): neither argmax nor sampling means anything there. -inf alone is a
    masked token and fine.
    """
    check_finite_logits(logits)
    if not temperature:
        return logits.argmax(dim=-1)
    if temperature < 0:
        raise ValueError(f"temperature: {temperature!r} is negative")
    logits = logits.float() / temperature
    candidates = None  # (B, k) token ids when only the k likeliest can be drawn
    if top_k is not None:
        check_top_k(top_k)
        if top_k < logits.size(-1):
            # sort and sample k candidates, not the whole vocabulary: the same distribution, a
            # fraction of the time (top-p then sorts k values)
            logits, candidates = torch.topk(logits, top_k, dim=-1)  # (B, k), descending
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V) or (B, k)
    drawn = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
    return (drawn if candidates is None else candidates.gather(-1, drawn)).squeeze(-1)  # (B,)


# ----------------------------------------------------------------------------------------------
# Generation


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    pad_id: int = 0,
    on_token: Callable[[int, int], None] | None = None,
    static_cache: bool = False,
    compile: bool = False,
    cache_len: int | None = None,
    packed: bool | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; return only the new tokens.

    A row stops after it produces ``eos_id`` or ends with one of ``stop_sequences`` (the stopping
    tokens are part of its result); the batch stops when every row has. ``on_token(row, token)``
    is called for every token as soon as it is chosen, for streaming: the calls of a row spell
    out its result. ``seed`` makes sampling reproducible; without it the global RNG is used.

    ``static_cache`` decodes with a fixed-shape cache of ``cache_len`` slots (default: the longest
    prompt plus ``max_new_tokens``; a fixed value lets one compiled step serve calls with other
    prompt lengths); ``compile`` (implies ``static_cache``) runs the decoding steps through
    ``torch.compile``. ``packed`` (None: when it pays, see :func:`packing_pays`) runs the cached
    decoding steps on weights packed for the batch.
    """
    return _generate(
        model,
        prompts,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        stop_sequences=stop_sequences,
        seed=seed,
        use_cache=use_cache,
        pad_id=pad_id,
        on_token=on_token,
        stop_fn=None,
        static_cache=static_cache,
        compile=compile,
        cache_len=cache_len,
        packed=packed,
    )


def generate_text(
    model: torch.nn.Module,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    stop_strings: Sequence[str] | None = None,
    eos_id: int | None = None,
    **kwargs,
) -> list[str]:
    """Text in, text out: ``generate`` on the encoded prompts, decoded, cut before the first stop
    string (a row stops as soon as its decoded text contains one) and without the final eos."""
    stops = [s for s in (stop_strings or []) if s]

    def stop_fn(row: int, tokens: list[int]) -> bool:
        text = decode(tokens)
        return any(s in text for s in stops)

    out = _generate(
        model,
        [encode(p) for p in prompts],
        max_new_tokens,
        eos_id=eos_id,
        stop_fn=stop_fn if stops else None,
        **kwargs,
    )
    texts = []
    for tokens in out:
        if eos_id is not None and tokens and tokens[-1] == eos_id:
            tokens = tokens[:-1]
        text = decode(tokens)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
        texts.append(text[:cut])
    return texts


def _generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    stop_sequences: Sequence[Sequence[int]] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    pad_id: int = 0,
    on_token: Callable[[int, int], None] | None = None,
    stop_fn: Callable[[int, list[int]], bool] | None = None,
    static_cache: bool = False,
    compile: bool = False,
    cache_len: int | None = None,
    packed: bool | None = None,
) -> list[list[int]]:
    """``generate``, plus ``stop_fn(row, new_tokens) -> bool`` checked after every token."""
    block_size, vocab_size = model.config.block_size, model.config.vocab_size
    _check_inputs(prompts, max_new_tokens, block_size, vocab_size, stop_sequences)
    static_cache = static_cache or compile
    if static_cache and not use_cache:
        raise ValueError("static_cache / compile: they decode with a cache; use_cache is False")
    stops = [list(s) for s in (stop_sequences or [])]
    B = len(prompts)
    out: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens == 0:
        return out

    device = next(model.parameters()).device
    P = max(len(p) for p in prompts)
    total = P + max_new_tokens
    n_slots = total - 1 if cache_len is None else cache_len  # the last token is never fed in
    if n_slots < total - 1:
        raise ValueError(f"cache_len: {cache_len} < prompt + new tokens - 1 = {total - 1}")
    tokens = torch.full((B, total), pad_id, dtype=torch.long, device=device)  # left-padded prompts
    valid = torch.ones(B, max(total, n_slots), dtype=torch.bool, device=device)  # real tokens
    for b, p in enumerate(prompts):
        tokens[b, P - len(p) : P] = torch.tensor(list(p), dtype=torch.long)
        valid[b, : P - len(p)] = False  # every token after the prompt is generated: real
    padded = not bool(valid[:, :P].all())
    pos = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, total): padding does not count
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    done = [False] * B
    if packed is None:
        packed = use_cache and not compile and packing_pays(model, B, max_new_tokens - 1)
    decode_step = _compiled_step(device) if compile else last_logits

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), packed_linears(model, B) if packed else nullcontext():
            cache = model.new_cache(B, n_slots, static=static_cache) if use_cache else None
            for step in range(max_new_tokens):
                end = P + step  # tokens[:, :end] are known
                start = end - 1 if use_cache and step > 0 else 0  # with a cache, only the new
                if static_cache:  # every slot is a key; those after the query are masked
                    cache.slots = torch.arange(start, end, device=device)
                    mask = causal_mask_at(valid[:, :n_slots], start, end)  # (B, 1, T, n_slots)
                    step_fn = decode_step if step > 0 else last_logits  # prefill: eager
                    logits = step_fn(model, tokens[:, start:end], pos[:, start:end], mask, cache)
                else:
                    mask = padded_causal_mask(valid[:, :end], end - start) if padded else None
                    logits = last_logits(
                        model,
                        tokens[:, start:end],
                        pos=pos[:, start:end] if padded else None,
                        mask=mask,
                        cache=cache,
                    )  # (B, vocab)
                try:
                    next_ids = sample_logits(logits, temperature, top_k, top_p, generator)  # (B,)
                except NonFiniteLogits as err:
                    raise NonFiniteLogits(f"{err} (at generated token {step + 1})") from None
                tokens[:, end] = next_ids
                for b, t in enumerate(next_ids.tolist()):
                    if done[b]:
                        continue
                    out[b].append(t)
                    if on_token is not None:
                        on_token(b, t)
                    done[b] = (
                        t == eos_id
                        or any(out[b][-len(s) :] == s for s in stops)
                        or (stop_fn is not None and stop_fn(b, out[b]))
                    )
                if all(done):
                    break
    finally:
        model.train(was_training)
    return out


_COMPILED: dict[str, Callable] = {}


def _compiled_step(device: torch.device) -> Callable:
    """``last_logits`` through ``torch.compile``, one per device type (its cache of graphs is
    kept across calls: the same model, batch and cache size reuse the graph). On CUDA the mode is
    ``reduce-overhead``: the step is replayed as a CUDA graph."""
    if device.type not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[device.type] = torch.compile(last_logits, mode=mode, dynamic=False)
    return _COMPILED[device.type]


def _check_inputs(
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    block_size: int,
    vocab_size: int,
    stop_sequences: Sequence[Sequence[int]] | None,
) -> None:
    if len(prompts) == 0:
        raise ValueError("generate: no prompts")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens: {max_new_tokens!r} is not a non-negative integer")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(
                f"prompt {i} is empty: generation needs at least one token to start from"
            )
        if len(p) + max_new_tokens > block_size:
            raise ConfigError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} that is "
                f"{len(p) + max_new_tokens} > the model's block_size {block_size}"
            )
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"prompt {i}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
            )
    for i, s in enumerate(stop_sequences or []):
        if len(s) == 0:
            raise ValueError(f"stop_sequences[{i}] is empty")
