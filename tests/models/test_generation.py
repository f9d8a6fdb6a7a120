"""Sampling filters and batched, cached generation (with GPT2 as the model under the convention)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config as HFGPT2Config  # imported here: the lazy import takes seconds
from transformers import GPT2LMHeadModel

from medlm.errors import ConfigError
from medlm.models.generation import (
    generate,
    generate_text,
    sample_logits,
    top_p_filter,
)
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig

VOCAB, BLOCK = 50, 48
PROMPTS = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 9], [7, 9, 3, 2, 38]]  # unequal: left padding


def _sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Large random matrices and embeddings (norms and biases as initialised): varied greedy
    continuations with argmax margins > 0.05, so float noise cannot flip a greedy choice."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if name.endswith(("wte.weight", "wpe.weight")) else 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> GPT2:
    return _sharpen(
        GPT2(GPT2Config(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32))
    )


# ----------------------------------------------------------------------------------------------
# Sampling


# probabilities 1/2, 1/4, 1/8, 1/16, 1/16: exact in floating point, so the nucleus is exact
PROBS = torch.tensor([0.0625, 0.5, 0.125, 0.25, 0.0625])  # shuffled: sorting must map back
LOGITS = PROBS.log()[None]


@pytest.mark.parametrize(
    "top_p, nucleus",
    [
        (0.1, {1}),
        (0.5, {1}),
        (0.7, {1, 3}),
        (0.75, {1, 3}),
        (0.76, {1, 3, 2}),
        (0.875, {1, 3, 2}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_filter_keeps_the_smallest_set_reaching_p(top_p, nucleus):
    kept = torch.isfinite(top_p_filter(LOGITS, top_p))[0].nonzero().flatten().tolist()
    assert set(kept) == nucleus


def test_top_p_filter_works_per_row():
    logits = torch.stack([PROBS.log(), PROBS.roll(1).log()])  # (2, 5)
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept[0].nonzero().flatten().tolist() == [1, 3]
    assert kept[1].nonzero().flatten().tolist() == [2, 4]


def test_top_k_checks_its_value_and_a_k_beyond_the_vocabulary_keeps_it_all():
    with pytest.raises(ValueError, match="top_k"):
        sample_logits(LOGITS, top_k=0)
    g = torch.Generator().manual_seed(0)
    ids = sample_logits(LOGITS.expand(2000, 5), top_k=10, generator=g)
    assert set(ids.tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "kwargs, allowed, share",
    [
        (dict(top_p=0.7), {1, 3}, {1: 2 / 3, 3: 1 / 3}),
        (dict(top_k=3), {1, 3, 2}, {1: 4 / 7, 3: 2 / 7, 2: 1 / 7}),
        (dict(top_k=3, top_p=0.7), {1, 3}, {1: 2 / 3, 3: 1 / 3}),
    ],
)
def test_sampling_never_leaves_the_filtered_set(kwargs, allowed, share):
    counts = torch.zeros(5)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        ids = sample_logits(LOGITS.expand(500, 5), temperature=1.0, generator=g, **kwargs)
        counts += torch.bincount(ids, minlength=5)
    assert set(counts.nonzero().flatten().tolist()) == allowed
    for token, p in share.items():  # the filtered distribution is renormalised, not reshaped
        assert counts[token].item() / 10_000 == pytest.approx(p, abs=0.02)


def test_greedy_and_temperature():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 0.0]])
    assert sample_logits(logits, temperature=0).tolist() == [1, 0]
    assert sample_logits(logits, temperature=None, top_p=0.01).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    cold = sample_logits(logits[:1].expand(2000, 3), temperature=0.05, generator=g)
    hot = sample_logits(logits[:1].expand(2000, 3), temperature=5.0, generator=g)
    assert (cold == 1).float().mean() > 0.8  # nearly greedy
    assert (hot == 0).float().mean() > 0.2  # nearly uniform
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(logits, top_p=1.5)


# ----------------------------------------------------------------------------------------------
# Generation


def test_cache_equals_no_cache_greedy_batch(model):
    cached = generate(model, PROMPTS, 12, temperature=0)
    plain = generate(model, PROMPTS, 12, temperature=0, use_cache=False)
    assert cached == plain
    assert [len(r) for r in cached] == [12, 12, 12]
    assert len({tuple(r) for r in cached}) == 3


def test_cache_equals_no_cache_sampled(model):
    kw = dict(temperature=1.5, top_k=20, top_p=0.95, seed=7)
    assert generate(model, PROMPTS, 10, **kw) == generate(model, PROMPTS, 10, use_cache=False, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_equals_each_prompt_alone(model, use_cache):
    batched = generate(model, PROMPTS, 10, temperature=0, use_cache=use_cache, pad_id=VOCAB - 1)
    alone = [generate(model, [p], 10, temperature=0, use_cache=use_cache)[0] for p in PROMPTS]
    assert batched == alone


def test_padding_token_does_not_matter(model):
    a = generate(model, PROMPTS, 8, temperature=0, pad_id=0)
    b = generate(model, PROMPTS, 8, temperature=0, pad_id=17)
    assert a == b


def test_seeded_sampling_is_reproducible(model):
    kw = dict(temperature=2.0, seed=123)
    first = generate(model, PROMPTS, 16, **kw)
    assert generate(model, PROMPTS, 16, **kw) == first
    assert generate(model, PROMPTS, 16, temperature=2.0, seed=124) != first


def test_seed_leaves_the_global_rng_alone(model):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generate(model, PROMPTS, 6, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(1)  # without a seed, the global RNG decides
    first = generate(model, PROMPTS, 6, temperature=2.0)
    torch.manual_seed(1)
    assert generate(model, PROMPTS, 6, temperature=2.0) == first


def _truncate_after(tokens: list[int], stop: list[int]) -> list[int]:
    for i in range(len(stop), len(tokens) + 1):
        if tokens[i - len(stop) : i] == stop:
            return tokens[:i]
    return tokens


def test_eos_stops_a_row(model):
    ref = generate(model, PROMPTS, 12, temperature=0)
    eos = ref[0][4]
    out = generate(model, PROMPTS, 12, temperature=0, eos_id=eos)
    assert out == [_truncate_after(r, [eos]) for r in ref]
    assert out[0][-1] == eos and len(out[0]) <= 5


def test_batch_stops_when_every_row_is_done(model):
    ref = generate(model, PROMPTS[:1], 12, temperature=0)[0]
    eos = ref[2]
    calls = []
    hook = model.transformer.ln_f.register_forward_hook(lambda *_: calls.append(1))  # per step
    try:
        out = generate(model, PROMPTS[:1], 12, temperature=0, eos_id=eos)
    finally:
        hook.remove()
    assert out == [_truncate_after(ref, [eos])]
    assert len(calls) == len(out[0]) < 12


def test_stop_sequences(model):
    ref = generate(model, PROMPTS, 12, temperature=0)
    stop = ref[1][5:7]
    other = [VOCAB - 1, VOCAB - 1, VOCAB - 1]  # never completed: harmless
    out = generate(model, PROMPTS, 12, temperature=0, stop_sequences=[other, stop])
    assert out == [_truncate_after(r, stop) for r in ref]
    assert out[1][-2:] == stop and len(out[1]) <= 7


def test_on_token_streams_every_token_in_order(model):
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    ref = generate(model, PROMPTS, 9, temperature=0)
    eos = ref[2][3]
    out = generate(
        model, PROMPTS, 9, temperature=0, eos_id=eos, on_token=lambda b, t: seen[b].append(t)
    )
    assert [seen[b] for b in range(3)] == out


def test_block_size_overflow_names_both_numbers(model):
    with pytest.raises(
        ConfigError, match=r"40 tokens.*max_new_tokens 9.*49 > the model's block_size 48"
    ):
        generate(model, [[1] * 5, [1] * 40], 9)
    assert len(generate(model, [[1] * 40], 8, temperature=0)[0]) == 8  # exactly block_size fits


@pytest.mark.parametrize(
    "prompts, n, message",
    [
        ([], 3, "no prompts"),
        ([[1, 2], []], 3, "prompt 1 is empty"),
        ([[1, VOCAB]], 3, f"token id {VOCAB} is outside the vocabulary"),
        ([[1, 2]], -1, "max_new_tokens"),
    ],
)
def test_bad_inputs(model, prompts, n, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, n)


def test_zero_new_tokens(model):
    assert generate(model, PROMPTS, 0) == [[], [], []]


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(model, training):
    model.train(training)
    try:
        generate(model, PROMPTS, 2, temperature=0)
        assert model.training is training
    finally:
        model.eval()


def test_dropout_is_off_while_generating():
    m = _sharpen(
        GPT2(
            GPT2Config(
                block_size=BLOCK,
                vocab_size=VOCAB,
                n_layer=1,
                n_head=2,
                n_embd=16,
                embd_dropout=0.5,
                attn_dropout=0.5,
                resid_dropout=0.5,
            )
        )
    ).train()
    assert generate(m, PROMPTS, 8, temperature=0) == generate(m, PROMPTS, 8, temperature=0)


def test_matches_hf_greedy(tmp_path):
    torch.manual_seed(0)
    config = HFGPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=VOCAB,
        n_positions=BLOCK,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    hf = _sharpen(GPT2LMHeadModel(config))
    hf.save_pretrained(tmp_path)
    ours = GPT2.from_pretrained(tmp_path)
    prompt = PROMPTS[1]
    ref = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=15,
        min_new_tokens=15,
    )
    assert generate(ours, [prompt], 15, temperature=0) == [ref[0, len(prompt) :].tolist()]
    # and HF's left-padded batch, with its attention mask
    P = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in PROMPTS])
    ref = hf.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=10, min_new_tokens=10
    )
    assert generate(ours, PROMPTS, 10, temperature=0) == ref[:, P:].tolist()


# ----------------------------------------------------------------------------------------------
# Text in, text out


def _encode(s: str) -> list[int]:
    return [ord(c) - ord("A") for c in s]


def _decode(ids: list[int]) -> str:
    return "".join(chr(ord("A") + i) for i in ids)


def test_generate_text_cuts_at_the_first_stop_string(model):
    prompts = [_decode(p) for p in PROMPTS]
    full = generate_text(model, _encode, _decode, prompts, 12, temperature=0)
    assert full == [_decode(r) for r in generate(model, PROMPTS, 12, temperature=0)]
    stop = full[0][3:5]
    lengths = []
    out = generate_text(
        model,
        _encode,
        _decode,
        prompts,
        12,
        temperature=0,
        stop_strings=["zzz", stop],
        on_token=lambda b, t: lengths.append(b),
    )
    for text, ref in zip(out, full):
        i = ref.find(stop)
        assert text == (ref[:i] if i >= 0 else ref)
    assert out[0] == full[0][: full[0].find(stop)]
    assert lengths.count(0) == full[0].find(stop) + len(stop)  # row 0 stopped as soon as it matched


def test_generate_text_drops_the_final_eos(model):
    prompts = [_decode(p) for p in PROMPTS]
    ref = generate(model, PROMPTS, 10, temperature=0)
    eos = ref[0][3]
    out = generate_text(model, _encode, _decode, prompts, 10, temperature=0, eos_id=eos)
    assert out[0] == _decode(ref[0][:3])


# ----------------------------------------------------------------------------------------------
# Static cache, compiled steps, packed weights: the same tokens as the plain paths


def _llama() -> Llama:
    config = LlamaConfig(
        vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=BLOCK
    )
    return _sharpen(Llama(config))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_static_cache_equals_dynamic_cache(model, arch):
    m = model if arch == "gpt2" else _llama()
    ref = generate(m, PROMPTS, 12, temperature=0, packed=False)
    assert generate(m, PROMPTS, 12, temperature=0, static_cache=True, packed=False) == ref
    # more slots than needed (a fixed size for every call): the extra ones stay masked
    assert generate(m, PROMPTS, 12, temperature=0, static_cache=True, cache_len=BLOCK) == ref
    assert generate(m, PROMPTS, 12, temperature=0, use_cache=False) == ref
    kw = dict(temperature=1.5, top_k=20, seed=3)
    assert generate(m, PROMPTS, 10, static_cache=True, **kw) == generate(m, PROMPTS, 10, **kw)


def test_static_cache_needs_a_cache_and_room(model):
    with pytest.raises(ValueError, match="use_cache is False"):
        generate(model, PROMPTS, 4, static_cache=True, use_cache=False)
    with pytest.raises(ValueError, match="cache_len: 5"):
        generate(model, PROMPTS, 4, static_cache=True, cache_len=5)


@pytest.mark.parametrize("batch", [1, 3])
def test_packed_weights_give_the_same_tokens(model, batch):
    prompts = PROMPTS[:batch]
    plain = generate(model, prompts, 12, temperature=0, packed=False)
    assert generate(model, prompts, 12, temperature=0, packed=True) == plain
    kw = dict(temperature=1.5, top_p=0.9, seed=11)
    assert generate(model, prompts, 8, packed=True, **kw) == generate(
        model, prompts, 8, packed=False, **kw
    )


def test_only_the_last_position_reaches_the_output_layer(model):
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        generate(model, PROMPTS, 3, temperature=0, packed=False)
    finally:
        hook.remove()
    assert rows == [(3, 32)] * 3  # the prefill too: one position per row, not 7


@pytest.mark.slow
def test_compiled_static_steps_equal_eager_and_compile_once(model):
    """torch.compile (inductor, CPU) of the decoding step: the same tokens, and one graph for
    every step (the shapes never change, so nothing recompiles)."""
    import torch._dynamo

    torch._dynamo.reset()
    ref = generate(model, PROMPTS, 10, temperature=0)
    torch._dynamo.utils.counters.clear()
    assert generate(model, PROMPTS, 10, temperature=0, compile=True) == ref
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert generate(model, PROMPTS[:2], 10, temperature=0, compile=True, cache_len=BLOCK) == ref[:2]
