"""``module.compile``: the network's blocks through torch.compile; a CPU training step works."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.modules.causal_lm import CausalLM
from medlm.modules.compile import compile_network


def _net() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=16))


def test_blocks_are_compiled_in_place_and_names_stay():
    net = _net()
    names = list(net.state_dict())
    compile_network(net)
    assert all(block._compiled_call_impl is not None for block in net.transformer.h)
    assert net._compiled_call_impl is None  # the blocks only: embeddings and head stay eager
    assert list(net.state_dict()) == names  # checkpoints load into compiled and plain alike
    whole = compile_network(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert whole._compiled_call_impl is not None  # no module list: all of it


@pytest.mark.slow
def test_a_compiled_tiny_model_trains_a_step_on_the_cpu():
    """One optimizer step with the blocks compiled (inductor, gcc) changes the weights as the
    same step does eagerly."""
    batch = {"input_ids": torch.randint(0, 97, (4, 16)), "labels": torch.randint(0, 97, (4, 16))}
    results = []
    for compile in (False, True):
        module = CausalLM(_net(), partial(torch.optim.SGD, lr=0.1), compile=compile)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, DataLoader([batch], batch_size=None))
        assert trainer.global_step == 1
        results.append({k: v.clone() for k, v in module.net.state_dict().items()})
    eager, compiled = results
    assert not torch.equal(
        eager["transformer.h.0.attn.c_attn.weight"],
        _net().state_dict()["transformer.h.0.attn.c_attn.weight"],
    )
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-5, rtol=1e-4, msg=name)
