"""The LoRA GPT-2 classifier equals PEFT's LoRA on HF's GPT2ForSequenceClassification, and its
PEFT and merged exports load in PEFT and transformers with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from medlm.errors import ConfigError, MedlmError
from medlm.models.classifier import SequenceClassifier, lora_classifier
from medlm.models.convert_classifier import export_merged_hf, export_peft
from medlm.models.lora import load_lora_state_dict, merge_lora, trainable_parameter_summary

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

PAD = 50256
TOL = 1e-4


@pytest.fixture
def hf_base(tmp_path):
    """A tiny random HF GPT2ForSequenceClassification saved offline, and its directory."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=50257,
        num_labels=3,
        pad_token_id=PAD,
    )
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path / "hf_base")
    return model, tmp_path / "hf_base"


@pytest.fixture
def batch():
    """Right-padded, left-padded and unpadded rows, with their attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[0, 7:], mask[0, 7:] = PAD, 0
    ids[1, :4], mask[1, :4] = PAD, 0
    return ids, mask


def _peft_reference(hf_model):
    ref = peft.get_peft_model(
        hf_model,
        peft.LoraConfig(
            r=8,
            lora_alpha=32,
            lora_dropout=0.1,
            target_modules=["c_attn", "c_proj"],
            task_type="SEQ_CLS",
        ),
    )
    with torch.no_grad():  # non-zero adapters and a trained-looking head
        for name, p in ref.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.normal_(0, 0.05)
    return ref.eval()


@pytest.fixture
def trained(hf_base, batch):
    """medlm's LoRA classifier carrying the random adapters and head of a PEFT model; its logits."""
    hf_model, base_dir = hf_base
    ours = lora_classifier(base_dir, num_labels=3).eval()
    load_lora_state_dict(ours, _to_medlm(peft.get_peft_model_state_dict(_peft_reference(hf_model))))
    with torch.no_grad():
        return ours, ours(*batch)


def _to_medlm(peft_state: dict) -> dict:
    """PEFT adapter keys -> medlm keys: the backbone sits under ``backbone.``, the head at the
    top."""
    out = {}
    for key, t in peft_state.items():
        key = key.removeprefix("base_model.model.")
        out[key if key.startswith("score.") else "backbone." + key] = t
    return out


def test_lora_classifier_equals_peft_before_and_after_merge(hf_base, batch):
    hf_model, base_dir = hf_base
    ids, mask = batch
    with torch.no_grad():
        base_logits = hf_model(input_ids=ids, attention_mask=mask).logits
    ref = _peft_reference(hf_model)
    ours = lora_classifier(base_dir, num_labels=3).eval()
    assert ours.pad_token_id == PAD
    load_lora_state_dict(ours, _to_medlm(peft.get_peft_model_state_dict(ref)))
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits  # (3, 3)
        assert (expected - base_logits).abs().max() > 1e-3  # the adapter and head matter
        unmerged = ours(ids, mask)
        assert unmerged.shape == (3, 3)
        assert (unmerged - expected).abs().max() <= TOL
        # without a mask both score the last token that is not padding (right-padded rows only)
        no_mask = ref(input_ids=ids[[0, 2]]).logits
        assert (ours(ids[[0, 2]]) - no_mask).abs().max() <= TOL
        merge_lora(ours)
        merged = ours(ids, mask)
        assert (merged - expected).abs().max() <= TOL
        assert (merged - unmerged).abs().max() <= TOL


def test_only_adapters_and_head_train(hf_base, batch):
    hf_model, base_dir = hf_base
    ref = _peft_reference(hf_model)
    ours = lora_classifier(base_dir, num_labels=3)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable - {"score.weight"})
    assert (
        len(trainable) == 2 * 3 * 2 + 1
    )  # A, B of c_attn, attn.c_proj, mlp.c_proj per layer; the head
    summary = trainable_parameter_summary(ours)
    ref_trainable, ref_total = ref.get_nb_trainable_parameters()
    assert summary.trainable == ref_trainable
    assert (
        summary.total == ref_total - ours.score.weight.numel()
    )  # PEFT also counts its frozen head copy
    assert f"trainable params: {ref_trainable:,}" in str(summary)
    assert 0 < summary.share < 0.01

    ids, mask = batch
    loss = torch.nn.functional.cross_entropy(ours(ids, mask), torch.tensor([0, 1, 2]))
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in ours.parameters())


def test_peft_export_loads_in_peft(hf_base, batch, trained, tmp_path):
    base_dir = hf_base[1]
    ids, mask = batch
    ours, expected = trained
    out = export_peft(
        ours, tmp_path / "adapter"
    )  # base written from the model's own frozen weights
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "base",
    ]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (
        cfg["peft_type"],
        cfg["task_type"],
        cfg["r"],
        cfg["lora_alpha"],
        cfg["lora_dropout"],
    ) == ("LORA", "SEQ_CLS", 8, 32, 0.1)
    assert cfg["target_modules"] == ["c_attn", "c_proj"] and cfg["modules_to_save"] == ["score"]
    assert cfg["fan_in_fan_out"] is True  # HF GPT-2's Conv1D
    from safetensors.torch import load_file

    keys = set(load_file(out / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.score.weight" in keys and len(keys) == 13

    for base in (out / "base", base_dir):  # our base export and the original HF directory
        hf = transformers.GPT2ForSequenceClassification.from_pretrained(base)
        loaded = peft.PeftModel.from_pretrained(hf, out).eval()
        with torch.no_grad():
            assert (loaded(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= TOL

    merge_lora(ours)  # exporting a merged model still writes the unmerged base and the same adapter
    export_peft(ours, tmp_path / "adapter2", base_dir)
    assert not (tmp_path / "adapter2" / "base").exists()
    cfg2 = json.loads((tmp_path / "adapter2" / "adapter_config.json").read_text())
    assert cfg2["base_model_name_or_path"] == str(base_dir.resolve())
    loaded = peft.PeftModel.from_pretrained(
        transformers.GPT2ForSequenceClassification.from_pretrained(base_dir), tmp_path / "adapter2"
    ).eval()
    with torch.no_grad():
        assert (loaded(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= TOL


def test_merged_export_loads_in_transformers_and_medlm(batch, trained, tmp_path):
    ids, mask = batch
    ours, expected = trained
    out = export_merged_hf(ours, tmp_path / "merged")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"] and cfg["pad_token_id"] == PAD
    assert len(cfg["id2label"]) == 3
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(hf, transformers.GPT2ForSequenceClassification) and hf.config.num_labels == 3
    back = SequenceClassifier.from_pretrained(out, num_labels=3).eval()
    with torch.no_grad():
        assert (hf(input_ids=ids, attention_mask=mask).logits - expected).abs().max() <= TOL
        assert (back(ids, mask) - expected).abs().max() <= TOL
    assert (
        ours.backbone.transformer.h[0].attn.c_attn.merged is False
    )  # the export left the model alone
    with pytest.raises(MedlmError, match="score.weight has shape"):
        SequenceClassifier.from_pretrained(out, num_labels=2)


def test_plain_classifier_from_lm_checkpoint(tmp_path, batch):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50257)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    model = SequenceClassifier.from_pretrained(
        tmp_path
    ).eval()  # fresh head; pad defaults to <|endoftext|>
    assert model.pad_token_id == PAD and model.score.weight.shape == (2, 16)
    ids, mask = batch
    with torch.no_grad():
        logits = model(ids, mask)
        # padding after the last real token changes nothing
        assert (model(ids[:1, :7]) - logits[:1]).abs().max() <= 1e-5
    with pytest.raises(MedlmError, match="no LoRA adapters"):
        export_peft(model, tmp_path / "x")
    with pytest.raises(ConfigError, match="num_labels"):
        SequenceClassifier(model.backbone, num_labels=0)
