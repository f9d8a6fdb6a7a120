"""The CausalLM module's loss, optimizer groups and schedule, without a Trainer."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.modules.causal_lm import CausalLM
from medlm.modules.schedule import warmup_cosine, warmup_cosine_factor


def tiny_module(**optim) -> CausalLM:
    torch.manual_seed(0)
    net = GPT2(GPT2Config(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=16))
    return CausalLM(net, partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1, **optim))


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    f = partial(warmup_cosine_factor, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    decay = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_schedule_steps_the_optimizer_learning_rate() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, total_steps=4, warmup_steps=2, min_lr_ratio=0.25)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(
        [1.0, 2.0, 2.0, 2.0 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi / 2))), 0.5]
    )


def test_weight_decay_applies_to_matrices_only_and_fused_is_chosen_by_device() -> None:
    module = tiny_module(fused=None)
    opt = module.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(
        p.dim() < 2 for p in plain["params"]
    )
    n_trainable = sum(p.numel() for p in module.net.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_trainable
    assert opt.defaults["fused"] is False  # on the CPU: no fused kernel asked for


def test_loss_is_the_mean_over_labelled_tokens_only() -> None:
    module = tiny_module()
    ids = torch.randint(0, 97, (2, 8))
    labels = torch.randint(0, 97, (2, 8))
    labels[0, :5] = -100
    loss, n = module.loss({"input_ids": ids, "labels": labels})
    logits = module.net(ids)
    keep = labels != -100
    assert n == keep.sum()
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], labels[keep]))
