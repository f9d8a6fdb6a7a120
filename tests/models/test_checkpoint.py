"""models/checkpoint.py: the one format (NETWORK_KEY), the one reader (read_checkpoint) and the one
loader (load_network) on every kind of source, with the same outputs as the network saved."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
import transformers

import medlm
from medlm.errors import MedlmError
from medlm.models.checkpoint import (
    NETWORK_KEY,
    build_network,
    load_network,
    network_spec,
    read_checkpoint,
)
from medlm.models.classifier import SequenceClassifier
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig
from medlm.models.lora import apply_lora, lora_layers
from tests.models.test_llama import META_PARAMS, _hf_meta_model, _write_meta

IDS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
SRC = Path(medlm.__file__).parent


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def _gpt2() -> GPT2:
    config = GPT2Config(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=16, bias=False)
    return _randomize(GPT2(config))


def _llama() -> Llama:
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    }
    config = LlamaConfig(
        vocab_size=96,
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_kv_head=2,
        ffn_hidden_dim=48,
        rope_theta=10000.0,
        rope_scaling=scaling,
        block_size=32,
        tie_embeddings=True,
    )
    return _randomize(Llama(config))


def _lora_classifier() -> SequenceClassifier:
    net = apply_lora(
        SequenceClassifier(_gpt2(), num_labels=3, pad_token_id=0),
        ["c_attn"],
        r=2,
        alpha=4.0,
        dropout=0.0,
        modules_to_save=["score"],
    )
    return _randomize(net, seed=1)  # non-zero adapters


def _write_ckpt(path: Path, net: torch.nn.Module, entry: dict | None = None) -> Path:
    """As a medlm LightningModule saves it: the network under ``net.`` and its description."""
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, NETWORK_KEY: entry or network_spec(net)}, path)
    return path


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(IDS), b(IDS), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# medlm checkpoints


@pytest.mark.parametrize("make", [_gpt2, _llama, _lora_classifier], ids=["gpt2", "llama", "lora"])
def test_medlm_checkpoint_round_trip(make, tmp_path: Path) -> None:
    net = make()
    spec = network_spec(net)
    # plain values only: a weights-only load of the spec alone gives it back
    torch.save(spec, tmp_path / "spec.pt")
    assert torch.load(tmp_path / "spec.pt", weights_only=True) == spec
    back = load_network(_write_ckpt(tmp_path / "net.ckpt", net))
    assert type(back) is type(net) and not back.training
    assert next(back.parameters()).device.type == "cpu"
    _same_outputs(back, net)
    trains = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n for n, p in back.named_parameters() if p.requires_grad} == trains


def test_classifier_spec_names_backbone_lora_and_what_trains() -> None:
    net = _lora_classifier()
    spec = network_spec(net)
    assert spec["target"] == "medlm.models.classifier.SequenceClassifier"
    assert spec["config"]["backbone"]["target"] == "medlm.models.gpt2.GPT2"
    assert (spec["config"]["num_labels"], spec["config"]["pad_token_id"]) == (3, 0)
    assert spec["lora"]["targets"] == ["c_attn"] and spec["lora"]["r"] == 2
    assert "score.weight" in spec["trainable"]
    assert all("lora_" in n or n == "score.weight" for n in spec["trainable"])
    assert network_spec(_gpt2())["trainable"] is None and network_spec(_gpt2())["lora"] is None
    rebuilt = build_network(spec)
    assert sorted(lora_layers(rebuilt)) == sorted(lora_layers(net))


def test_frozen_backbone_is_rebuilt_frozen(tmp_path: Path) -> None:
    probe = SequenceClassifier(_gpt2(), num_labels=2)
    probe.backbone.requires_grad_(False)
    back = load_network(_write_ckpt(tmp_path / "probe.ckpt", probe))
    assert [n for n, p in back.named_parameters() if p.requires_grad] == ["score.weight"]


def test_checkpoints_written_before_one_key_still_load(tmp_path: Path) -> None:
    """``medlm_model`` (Llama's sizes then named dim/n_layers/n_heads/n_kv_heads) and
    ``medlm_classifier`` checkpoints of earlier runs."""
    llama = _llama()
    old_names = {
        "n_embd": "dim",
        "n_layer": "n_layers",
        "n_head": "n_heads",
        "n_kv_head": "n_kv_heads",
    }
    old_config = {old_names.get(k, k): v for k, v in network_spec(llama)["config"].items()}
    state = {f"net.{k}": v for k, v in llama.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "medlm_model": {"target": "medlm.models.llama.Llama", "config": old_config},
        },
        tmp_path / "lm.ckpt",
    )
    _same_outputs(load_network(tmp_path / "lm.ckpt"), llama)

    clf = _lora_classifier()
    spec = network_spec(clf)
    old = {
        "backbone": spec["config"]["backbone"],
        "num_labels": 3,
        "pad_token_id": 0,
        "lora": spec["lora"],
        "trainable": spec["trainable"],
    }
    state = {f"net.{k}": v for k, v in clf.state_dict().items()}
    torch.save({"state_dict": state, "medlm_classifier": old}, tmp_path / "clf.ckpt")
    _same_outputs(load_network(tmp_path / "clf.ckpt"), clf)


@pytest.mark.parametrize(
    "entry, message",
    [
        (None, "not a medlm checkpoint (no 'medlm_network' entry)"),
        (
            {"target": "os.system", "config": {}},
            "network class 'os.system' is not one medlm builds",
        ),
        (
            {"target": "medlm.models.gpt2.GPT2", "config": {"n_layers": 2}},
            "network description does not fit medlm's networks (TypeError:",
        ),
        ({"target": "medlm.models.gpt2.GPT2", "config": {"n_head": 0}}, "model.n_head: 0"),
    ],
    ids=["no-entry", "foreign-class", "unknown-field", "bad-value"],
)
def test_a_checkpoint_that_describes_no_medlm_network(entry, message: str, tmp_path: Path) -> None:
    ckpt = {"state_dict": {}} if entry is None else {"state_dict": {}, NETWORK_KEY: entry}
    torch.save(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(MedlmError, match=re.escape(message)) as err:
        load_network(tmp_path / "x.ckpt")
    assert str(err.value).startswith(f"{tmp_path / 'x.ckpt'}: ") and "\n" not in str(err.value)


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    net = _gpt2()
    path = _write_ckpt(
        tmp_path / "x.ckpt",
        net,
        network_spec(
            GPT2(
                GPT2Config(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16, bias=False)
            )
        ),
    )
    with pytest.raises(MedlmError, match=r"tensor transformer\.wte\.weight has shape \(96, 16\)"):
        load_network(path)


# ----------------------------------------------------------------------------------------------
# Hugging Face and Meta directories


HF_GPT2 = dict(vocab_size=96, n_positions=32, n_embd=16, n_layer=2, n_head=2)


def _hf_logits(model, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids, position_ids=pos).logits


def test_hf_gpt2_and_llama_directories(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_GPT2))
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )
    for name, hf, cls in (("gpt2", gpt2, GPT2), ("llama", llama, Llama)):
        _randomize(hf).save_pretrained(tmp_path / name)
        net = load_network(tmp_path / name)
        assert type(net) is cls and not net.training
        with torch.no_grad():
            torch.testing.assert_close(net(IDS), _hf_logits(hf, IDS), rtol=0, atol=1e-4)


def test_hf_gpt2_sequence_classifier_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(**HF_GPT2, num_labels=3, pad_token_id=0)
    hf = transformers.GPT2ForSequenceClassification(config)
    _randomize(hf).save_pretrained(tmp_path / "clf")
    net = load_network(tmp_path / "clf")
    assert isinstance(net, SequenceClassifier) and (net.num_labels, net.pad_token_id) == (3, 0)
    ids, mask = IDS.clamp(min=1), torch.ones_like(IDS)  # HF finds the last token by pad id 0
    ids[0, 9:], mask[0, 9:] = 0, 0
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(net(ids, mask), expected, rtol=0, atol=1e-4)


def test_meta_directory(tmp_path: Path) -> None:
    hf = _hf_meta_model()
    _write_meta(tmp_path, hf, META_PARAMS, n_shards=2)
    net = load_network(tmp_path)
    assert isinstance(net, Llama) and not net.training
    with torch.no_grad():
        torch.testing.assert_close(net(IDS), _hf_logits(hf, IDS), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nope", "nope: no such checkpoint file or model directory"),
        (
            lambda d: d,
            "not a model directory (no config.json of Hugging Face, no params.json of Meta)",
        ),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert"})) and d,
            "config.json: model_type 'bert' is not one medlm runs (gpt2, llama)",
        ),
        (
            lambda d: (
                (d / "config.json").write_text(
                    json.dumps(
                        {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}
                    )
                )
                and d
            ),
            "a llama sequence classifier; medlm loads GPT-2 ones",
        ),
    ],
    ids=["missing", "empty-dir", "unknown-type", "llama-classifier"],
)
def test_directories_medlm_does_not_load(make, message: str, tmp_path: Path) -> None:
    with pytest.raises(MedlmError, match=re.escape(message)):
        load_network(make(tmp_path))


# ----------------------------------------------------------------------------------------------
# read_checkpoint: one clear line for every file it cannot read


class _Payload:
    """Stands for arbitrary pickled code: a weights-only load refuses it."""


def _zip_cut(path: Path) -> Path:
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _legacy(path: Path, obj) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "x.pt: checkpoint not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "truncated, or not a torch file"),
        (lambda p: (p.write_bytes(b"not a checkpoint"), p)[1], "truncated, or not a torch file"),
        (_zip_cut, "truncated, or not a torch file"),
        (
            lambda p: (torch.save({"w": torch.zeros(2), "x": _Payload()}, p), p)[1],
            "it holds a pickled tests.models.test_checkpoint._Payload object",
        ),
        (
            lambda p: _legacy(p, {"x": _Payload()}),
            "it holds a pickled tests.models.test_checkpoint._Payload",
        ),
        (
            lambda p: (torch.save([1, 2], p), p)[1],
            "x.pt: holds a list, not the dict of a checkpoint",
        ),
    ],
    ids=["missing", "empty", "garbage", "truncated", "pickled", "pickled-legacy", "not-a-dict"],
)
def test_read_checkpoint_errors_are_one_clear_line(make, message: str, tmp_path: Path) -> None:
    with pytest.raises(MedlmError) as err:
        read_checkpoint(make(tmp_path / "x.pt"))
    text = str(err.value)
    assert message in text and text.startswith(str(tmp_path / "x.pt")), text
    assert "\n" not in text and "weights_only=False" not in text and "\x1b" not in text


def test_read_checkpoint_maps_zip_files_and_reads_legacy_ones(tmp_path: Path) -> None:
    torch.save({"w": torch.arange(4.0), "n": 3}, tmp_path / "new.pt")
    assert zipfile.is_zipfile(tmp_path / "new.pt")
    ckpt = read_checkpoint(tmp_path / "new.pt")
    assert ckpt["n"] == 3 and torch.equal(ckpt["w"], torch.arange(4.0))
    old = read_checkpoint(_legacy(tmp_path / "old.pt", {"w": torch.ones(2)}))
    assert torch.equal(old["w"], torch.ones(2))


# ----------------------------------------------------------------------------------------------
# The layering this module stands for


def test_torch_load_is_called_in_one_module() -> None:
    callers = {
        p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "torch.load(" in p.read_text()
    }
    assert callers == {"models/checkpoint.py"}


def test_models_import_nothing_from_higher_layers() -> None:
    higher = re.compile(r"^\s*(from|import)\s+medlm\.(data|modules|cli|callbacks|eval)\b", re.M)
    offenders = {p.name for p in (SRC / "models").glob("*.py") if higher.search(p.read_text())}
    assert not offenders
    lightning = re.compile(r"^\s*(from|import)\s+lightning\b", re.M)
    assert not [p.name for p in (SRC / "models").glob("*.py") if lightning.search(p.read_text())]
