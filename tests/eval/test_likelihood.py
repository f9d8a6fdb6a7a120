"""Continuation log-likelihoods with shared prompts equal one plain forward pass per (prompt,
continuation), for GPT-2 and Llama, batched or not, with rows split and prompts cut."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError
from medlm.eval.likelihood import check_vocab, continuation_logprobs
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig

V = 97
BLOCK = 24


def gpt2() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(block_size=BLOCK, vocab_size=V, n_layer=2, n_head=2, n_embd=32)).eval()


def llama() -> Llama:
    torch.manual_seed(0)
    return Llama(
        LlamaConfig(
            block_size=BLOCK,
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            ffn_hidden_dim=64,
        )
    ).eval()


class LogitsOnly(nn.Module):
    """A causal LM seen only through ``forward``: no ``hidden_states``, no named output layer."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, idx, pos=None, mask=None, cache=None):
        return self.inner(idx, pos=pos, mask=mask, cache=cache)


def requests() -> list[tuple[list[int], list[list[int]]]]:
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(0, V, (n,), generator=g).tolist()

    return [
        (ids(5), [ids(1), ids(3), ids(2)]),  # single- and multi-token continuations
        (ids(9), [ids(4), ids(1)]),
        (ids(1), [ids(1)]),  # a one-token prompt
        (ids(12), [ids(7), ids(8), ids(6)]),  # segments overflow BLOCK: split over two rows
        (ids(30), [ids(3), ids(3)]),  # a prompt longer than BLOCK: cut from the left
        (ids(7), [ids(2), ids(2), ids(2), ids(2)]),
    ]


def reference(model: nn.Module, prompt: list[int], cont: list[int], keep: int) -> float:
    """Summed log-probability of ``cont`` after the last ``keep`` prompt tokens, one plain pass."""
    x = torch.tensor([prompt[-keep:] + cont[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).float(), -1)[0]  # (T, V)
    start = keep - 1
    return sum(logp[start + j, t].item() for j, t in enumerate(cont))


def expected(model: nn.Module) -> list[list[float]]:
    out = []
    for prompt, conts in requests():
        keep = min(len(prompt), BLOCK - max(len(c) - 1 for c in conts))  # one cut for all answers
        out.append([reference(model, prompt, c, keep) for c in conts])
    return out


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_shared_prompt_rows_equal_one_pass_per_continuation(build, batch_size: int) -> None:
    model = build()
    result = continuation_logprobs(model, requests(), batch_size=batch_size)
    want = expected(model)
    assert result.n_truncated == 1
    for got, ref in zip(result.logprobs, want):
        assert got == pytest.approx(ref, abs=1e-4)


def test_a_model_without_hidden_states_is_called_through_forward() -> None:
    model = gpt2()
    got = continuation_logprobs(LogitsOnly(model), requests(), batch_size=3).logprobs
    for row, ref in zip(got, expected(model)):
        assert row == pytest.approx(ref, abs=1e-4)


def test_the_model_is_scored_in_eval_mode_and_its_mode_restored() -> None:
    torch.manual_seed(0)
    model = GPT2(
        GPT2Config(
            block_size=BLOCK,
            vocab_size=V,
            n_layer=1,
            n_head=2,
            n_embd=16,
            embd_dropout=0.5,
            attn_dropout=0.5,
            resid_dropout=0.5,
        )
    )
    model.train()
    first = continuation_logprobs(model, requests()[:2]).logprobs
    assert model.training
    assert continuation_logprobs(model, requests()[:2]).logprobs == first  # no dropout


def test_bad_requests() -> None:
    model = gpt2()
    with pytest.raises(ValueError, match="empty prompt"):
        continuation_logprobs(model, [([], [[1]])])
    with pytest.raises(ValueError, match="at least one token"):
        continuation_logprobs(model, [([1], [[1], []])])
    with pytest.raises(ConfigError, match="does not fit the model's block_size 24"):
        continuation_logprobs(model, [([1, 2], [list(range(BLOCK + 1))])])
    with pytest.raises(ConfigError, match="batch_size"):
        continuation_logprobs(model, requests(), batch_size=0)


def test_vocabulary_must_fit_the_tokenizer() -> None:
    tok = load_tokenizer("gpt2")
    for vocab in (50257, 50304):  # exact, and padded as nanoGPT pads it
        model = GPT2(GPT2Config(block_size=8, vocab_size=vocab, n_layer=1, n_head=1, n_embd=8))
        check_vocab(model, tok)
    for vocab in (1000, 128256):  # too small for GPT-2's ids; another tokenizer's model
        small = GPT2(GPT2Config(block_size=8, vocab_size=vocab, n_layer=1, n_head=1, n_embd=8))
        with pytest.raises(
            ConfigError,
            match=rf"vocabulary \({vocab:,} tokens\) does not fit the "
            r"tokenizer 'gpt2' \(50,257 tokens\)",
        ):
            check_vocab(small, tok)
    with pytest.raises(ConfigError, match="no config.vocab_size"):
        check_vocab(nn.Linear(2, 2), tok)
