"""Sampling from non-finite logits (a diverged model) is one clear error, never torch.multinomial's
"probability tensor contains either inf, nan or element < 0"."""

from __future__ import annotations

import pytest
import torch

from medlm.errors import MedlmError, NonFiniteLogits
from medlm.models.generation import generate, sample_logits
from medlm.models.gpt2 import GPT2, GPT2Config

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("temperature", [0, 1.0])
@pytest.mark.parametrize(
    "row, what",
    [
        ([1.0, NAN, 0.0], "nan next-token logits"),
        ([1.0, INF, 0.0], "inf next-token logits"),
        ([-INF, -INF, -INF], "no finite next-token logit (all -inf)"),
    ],
)
def test_non_finite_logits_are_a_clear_error(row: list, what: str, temperature: float) -> None:
    logits = torch.tensor([[0.5, 0.2, 0.1], row])
    with pytest.raises(NonFiniteLogits) as err:
        sample_logits(logits, temperature, top_k=2, top_p=0.9)
    assert f"the model gave {what} in batch row 1" in str(err.value)
    assert isinstance(err.value, MedlmError) and isinstance(err.value, ValueError)


def test_masked_tokens_are_fine() -> None:
    logits = torch.tensor([[1.0, -INF, 0.0], [-INF, -INF, 2.0]])
    assert sample_logits(logits, 0).tolist() == [0, 2]
    assert sample_logits(logits, 1.0, generator=torch.Generator().manual_seed(0))[1] == 2


def test_generate_names_the_token_where_the_logits_went_bad() -> None:
    torch.manual_seed(0)
    model = GPT2(GPT2Config(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    assert len(generate(model, [[1, 2, 3]], 4, temperature=1.0, seed=0)[0]) == 4
    with torch.no_grad():
        model.lm_head.weight.fill_(NAN)
    for temperature in (0, 1.0):
        with pytest.raises(NonFiniteLogits, match=r"batch row 0.*\(at generated token 1\)$"):
            generate(model, [[1, 2, 3], [4]], 4, temperature=temperature, seed=0)
