"""LoRA: the layer equals PEFT's, merging changes nothing, only adapters train, adapters
round-trip."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from medlm.errors import ConfigError, MedlmError
from medlm.models.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    trainable_parameter_summary,
    unmerge_lora,
)


class TinyNet(nn.Module):
    """Names like GPT-2's: two c_proj in different parents, a c_attn, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleDict(dict(c_attn=nn.Linear(8, 24), c_proj=nn.Linear(8, 8)))
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(8, 32), c_proj=nn.Linear(32, 8)))
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.attn["c_attn"](x)[..., :8]
        x = x + self.attn["c_proj"](q)
        x = x + self.mlp["c_proj"](torch.relu(self.mlp["c_fc"](x)))
        return self.head(x)


def _randomize_b(model: nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, std)


def test_layer_init_forward_and_merge():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0)
    assert layer.scale == 2.0
    assert (layer.lora_B.weight == 0).all()  # a fresh adapter changes nothing
    bound = 1 / math.sqrt(
        16
    )  # kaiming_uniform_(a=sqrt(5)) = nn.Linear's default bound 1/sqrt(fan_in)
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), base(x))
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    expected = base(x) + 2.0 * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)
    w0 = base.weight.clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), expected)


def test_layer_equals_peft_lora_linear():
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    ref = peft.get_peft_model(
        nn.Sequential(nn.Linear(16, 12)),
        peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["0"]),
    )
    ref_layer = ref.base_model.model[0]
    with torch.no_grad():
        ref_layer.lora_B["default"].weight.normal_()
    ours = LoRALinear(nn.Linear(16, 12), r=8, alpha=32, dropout=0.1)
    ours.load_state_dict({k.replace(".default", ""): v for k, v in ref_layer.state_dict().items()})
    assert ours.scale == ref_layer.scaling["default"] == 4.0
    ref.eval(), ours.eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5
        assert (ours(x) - ours.base_layer(x)).abs().max() > 1e-2
        torch.testing.assert_close(ours.delta_weight(), ref_layer.get_delta_weight("default"))


def test_apply_lora_targets_freezing_and_summary():
    torch.manual_seed(0)
    model = TinyNet()
    total = sum(p.numel() for p in model.parameters())
    apply_lora(model, ["c_attn", "c_proj"], r=2, alpha=4, dropout=0.0, modules_to_save=["head"])
    assert sorted(lora_layers(model)) == ["attn.c_attn", "attn.c_proj", "mlp.c_proj"]
    assert isinstance(model.mlp["c_fc"], nn.Linear)  # not a target
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        f"{m}.lora_{ab}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_proj") for ab in "AB"
    } | {"head.weight"}
    n_lora = 2 * (8 + 24) + 2 * (8 + 8) + 2 * (32 + 8)
    summary = trainable_parameter_summary(model)
    trainable_n, total_n, share = summary  # a plain tuple too
    assert (trainable_n, total_n) == (n_lora + 24, total + n_lora)
    assert share == pytest.approx(trainable_n / total_n)
    assert str(summary) == (
        f"trainable params: {trainable_n:,} || all params: {total_n:,} || "
        f"trainable%: {100 * share:.4f}"
    )

    x = torch.randn(4, 8)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n

    regex = apply_lora(TinyNet(), [r"mlp\..*"], r=2, alpha=4)
    assert sorted(lora_layers(regex)) == ["mlp.c_fc", "mlp.c_proj"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"targets": ["q_proj"]}, r"lora.targets \['q_proj'\] match no nn.Linear"),
        ({"targets": []}, "lora.targets"),
        ({"r": 0}, "lora.r"),
        ({"alpha": -1}, "lora.alpha"),
        ({"dropout": 1.0}, "lora.dropout"),
        ({"modules_to_save": ["classifier"]}, "lora.modules_to_save"),
        ({"targets": ["c_attn["]}, "not a valid regular expression"),
    ],
)
def test_bad_lora_config_is_named(kwargs, message):
    args = {"targets": ["c_attn"], "r": 2, "alpha": 4, "dropout": 0.0} | kwargs
    model = TinyNet()
    with pytest.raises(ConfigError, match=message):
        apply_lora(model, **args)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_merge_equals_unmerged_and_unwrap():
    torch.manual_seed(0)
    model = apply_lora(
        TinyNet(), ["c_attn", "c_proj", "c_fc"], r=4, alpha=16, dropout=0.1, modules_to_save="head"
    ).eval()
    _randomize_b(model)
    x = torch.randn(5, 8)
    with torch.no_grad():
        unmerged = model(x)
        without = copy.deepcopy(model)
        _randomize_b(without, std=0.0)
        assert (unmerged - without(x)).abs().max() > 1e-3  # the adapters matter
        merge_lora(model)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)
        merge_lora(model, unwrap=True)
        assert not lora_layers(model) and isinstance(model.attn["c_attn"], nn.Linear)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)


def test_lora_state_dict_round_trip_and_errors():
    torch.manual_seed(0)
    src = apply_lora(
        TinyNet(), ["c_attn", "c_proj"], r=2, alpha=4, dropout=0.0, modules_to_save=["head"]
    )
    _randomize_b(src)
    sd = lora_state_dict(src)
    assert set(sd) == {
        f"{m}.lora_{ab}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_proj") for ab in "AB"
    } | {"head.weight"}
    dst = apply_lora(
        TinyNet(), ["c_attn", "c_proj"], r=2, alpha=4, dropout=0.0, modules_to_save=["head"]
    )
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k not in sd}, strict=False)
    merge_lora(dst)  # a merged model takes a new adapter correctly too
    load_lora_state_dict(dst, sd)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), atol=1e-5, rtol=1e-5)

    with pytest.raises(
        MedlmError,
        match=r"adapter.ckpt: adapter tensors do not match the model: "
        r"missing \['head.weight'\]",
    ):
        load_lora_state_dict(
            dst, {k: v for k, v in sd.items() if k != "head.weight"}, source="adapter.ckpt"
        )
    bad = dict(sd)
    bad["attn.c_attn.lora_A.weight"] = torch.zeros(3, 8)
    with pytest.raises(MedlmError, match=r"attn.c_attn.lora_A.weight has shape \(3, 8\)"):
        load_lora_state_dict(dst, bad)
    with pytest.raises(MedlmError, match="no LoRA layers"):
        lora_state_dict(TinyNet())
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(src, ["c_fc"])


def test_gpt2_lm_with_lora_equals_peft(tmp_path):
    """LoRA on medlm's GPT2 language model gives PEFT's logits on HF's GPT2LMHeadModel."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from medlm.models.gpt2 import GPT2

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=300)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    idx = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        base_logits = hf(input_ids=idx).logits
    ref = peft.get_peft_model(
        hf,
        peft.LoraConfig(
            r=8,
            lora_alpha=32,
            lora_dropout=0.1,
            target_modules=["c_attn", "c_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    ours = apply_lora(
        GPT2.from_pretrained(tmp_path), ["c_attn", "c_proj"], r=8, alpha=32, dropout=0.1
    )
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    adapter = {
        k.removeprefix("base_model.model."): v
        for k, v in peft.get_peft_model_state_dict(ref).items()
    }
    load_lora_state_dict(ours, adapter)
    ref.eval(), ours.eval()
    ref_sum = ref.get_nb_trainable_parameters()
    assert tuple(trainable_parameter_summary(ours))[:2] == ref_sum

    with torch.no_grad():
        expected = ref(input_ids=idx).logits
        assert (expected - base_logits).abs().max() > 1e-3  # the adapter matters
        got = ours(idx)
        assert (got - expected).abs().max() <= 1e-4
        merge_lora(ours)
        assert (ours(idx) - expected).abs().max() <= 1e-4
