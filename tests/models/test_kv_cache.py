"""The calling convention's shared pieces: the static cache, masks at given columns, logits at the
last position only."""

from __future__ import annotations

import pytest
import torch

from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.kv_cache import (
    StaticKVCache,
    causal_mask_at,
    last_logits,
    output_layer,
    padded_causal_mask,
)
from medlm.models.llama import Llama, LlamaConfig


def _models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        GPT2(GPT2Config(block_size=32, vocab_size=40, n_layer=2, n_head=2, n_embd=16)).eval(),
        Llama(LlamaConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=32)).eval(),
    ]


@pytest.mark.parametrize("model", _models(), ids=["gpt2", "llama"])
def test_last_logits_equal_the_last_column_of_forward(model):
    idx = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(last_logits(model, idx), model(idx)[:, -1])
    assert output_layer(model) is (model.lm_head if isinstance(model, GPT2) else model.output)


def test_last_logits_of_a_model_without_hidden_states():
    class Plain(torch.nn.Module):
        def forward(self, idx, pos=None, mask=None, cache=None):
            return torch.arange(3.0).expand(*idx.shape, 3) + idx[..., None]

    assert output_layer(Plain()) is None
    assert last_logits(Plain(), torch.tensor([[1, 5]])).tolist() == [[5.0, 6.0, 7.0]]


@pytest.mark.parametrize("model", _models(), ids=["gpt2", "llama"])
def test_static_cache_steps_equal_one_pass(model):
    """Prefill 5 tokens, then one at a time, into a static cache of 12 slots (more than used):
    the logits of every step equal a pass over the whole sequence."""
    idx = torch.randint(0, 40, (2, 10))
    valid = torch.ones(2, 12, dtype=torch.bool)
    pos = torch.arange(12)[None].expand(2, 12)
    cache = model.new_cache(2, 12, static=True)
    assert isinstance(cache, StaticKVCache) and cache.max_len == 12
    steps = []
    with torch.no_grad():
        full = model(idx)
        for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, 10)]:
            cache.slots = torch.arange(start, end)
            mask = causal_mask_at(valid, start, end)
            steps.append(model(idx[:, start:end], pos[:, start:end], mask, cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_static_cache_needs_positions_and_a_mask_over_every_slot():
    model = _models()[0]
    cache = model.new_cache(1, 8, static=True)
    idx = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="explicit pos and mask"):
        model(idx, cache=cache)
    with pytest.raises(ValueError, match="mask covers 2 keys, expected 8 slots"):
        model(idx, pos=torch.arange(2)[None], mask=torch.ones(1, 1, 2, 2, dtype=bool), cache=cache)


def test_causal_mask_at_generalises_the_padded_mask():
    valid = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    torch.testing.assert_close(causal_mask_at(valid, 3), padded_causal_mask(valid, 2))
    m = causal_mask_at(valid, 1, 3)  # queries at columns 1 and 2 of 5 keys
    assert m.shape == (2, 1, 2, 5)
    assert m[0, 0].tolist() == [
        [False, True, False, False, False],
        [False, True, True, False, False],
    ]
