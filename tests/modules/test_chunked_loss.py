"""The chunked output layer + cross-entropy: the same loss and gradients as the plain path."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from medlm.errors import ConfigError
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig
from medlm.modules.causal_lm import CausalLM
from medlm.modules.chunked_loss import linear_cross_entropy

# float32: rounding only; bf16 autocast: both paths round the matmuls to bf16 (8 bits of mantissa)
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _inputs(n: int = 300, c: int = 24, v: int = 500) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    hidden, weight = torch.randn(n, c), torch.randn(v, c) * 0.2
    labels = torch.randint(0, v, (n,))
    labels[::5] = -100  # ignored tokens, as prompts and padding are
    labels[-40:] = -100  # and a whole chunk of them
    return hidden, weight, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 64, 1000])
def test_loss_and_gradients_equal_the_plain_path(dtype, chunk):
    hidden, weight, labels = _inputs()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        plain = F.cross_entropy((h1 @ w1.t()).float(), labels, reduction="sum")
        chunked = linear_cross_entropy(h2, w2, labels, chunk_tokens=chunk)
    (plain / 7).backward()
    (chunked / 7).backward()
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, **TOLERANCE[dtype])
    torch.testing.assert_close(h2.grad, h1.grad, **TOLERANCE[dtype])
    torch.testing.assert_close(w2.grad, w1.grad, **TOLERANCE[dtype])
    assert h2.grad.dtype == h1.grad.dtype and w2.grad.dtype == w1.grad.dtype


def test_without_gradients_only_the_loss_is_computed():
    hidden, weight, labels = _inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=64)
    ref = F.cross_entropy(hidden @ weight.t(), labels, reduction="sum")
    torch.testing.assert_close(loss, ref)
    assert not loss.requires_grad


def test_every_token_ignored_is_a_zero_loss_with_zero_gradients():
    hidden, weight, _ = _inputs()
    hidden.requires_grad_()
    loss = linear_cross_entropy(hidden, weight, torch.full((300,), -100))
    loss.backward()
    assert loss.item() == 0.0 and not hidden.grad.any()


def test_shapes_are_checked():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match=r"\(N, C\) and labels \(N,\)"):
        linear_cross_entropy(hidden[None], weight, labels)


def _module(net: torch.nn.Module, chunked: bool) -> CausalLM:
    return CausalLM(net, partial(torch.optim.AdamW, lr=1e-3), chunked_loss=chunked)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("packed", [False, True])
def test_causal_lm_chunked_loss_equals_the_plain_loss(arch, packed):
    """The module's loss with and without chunking, on packed documents (doc_ids) too: the same
    loss and the same gradient of every parameter (the tied embedding included)."""
    torch.manual_seed(0)
    if arch == "gpt2":
        net = GPT2(GPT2Config(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16))
    else:
        net = Llama(LlamaConfig(vocab_size=97, n_layer=2, n_head=2, n_embd=16, block_size=32))
    ids, labels = torch.randint(0, 97, (3, 32)), torch.randint(0, 97, (3, 32))
    labels[:, :6] = -100
    batch = {"input_ids": ids, "labels": labels}
    if packed:
        batch["doc_ids"] = torch.tensor([0] * 10 + [1] * 22).expand(3, 32)
    grads = []
    for chunked in (False, True):
        module = _module(net, chunked)
        assert module.chunked_loss is chunked
        net.zero_grad()
        loss, n = module.loss(batch)
        loss.backward()
        grads.append((loss.detach(), n, {k: p.grad.clone() for k, p in net.named_parameters()}))
    (plain, n_plain, g_plain), (chunked, n_chunked, g_chunked) = grads
    assert n_plain == n_chunked == (labels != -100).sum()
    torch.testing.assert_close(chunked, plain)
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], msg=name)


def test_chunked_loss_needs_a_plain_linear_head():
    net = GPT2(GPT2Config(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=8))
    assert _module(net, True).chunked_loss
    net.lm_head = torch.nn.Sequential(net.lm_head)  # not a plain nn.Linear: the plain loss
    assert not _module(net, True).chunked_loss
    assert all(k.startswith("net.") for k in _module(net, True).state_dict())  # no extra state


def test_switches_are_checked():
    net = GPT2(GPT2Config(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ConfigError, match="module.chunked_loss: 'yes' is not true or false"):
        _module(net, "yes")
