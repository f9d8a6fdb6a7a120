"""medlm-export: medlm checkpoints -> Hugging Face directories that transformers loads with the same
logits, and Hugging Face directories -> medlm with the same logits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from medlm.cli import export as cli
from medlm.data.tokenizer import load_tokenizer
from medlm.loading import load_model
from medlm.models.classifier import SequenceClassifier
from medlm.models.generation import generate
from medlm.models.gpt2 import GPT2
from medlm.models.llama import Llama, LlamaConfig
from tests.cli.test_generate import run_main, sharpen, tiny_gpt2, write_medlm_ckpt

encode = load_tokenizer("gpt2").encode

TOL = 1e-4
IDS = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))


def run_export(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    return run_main(cli.main, args, capsys)


def hf_logits(directory: Path, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos).logits


def our_logits(
    model: torch.nn.Module, ids: torch.Tensor, pos: torch.Tensor | None = None
) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids, pos=pos)


def tiny_llama(vocab_size: int = 96, tie: bool = False, rope_scaling: dict | None = None) -> Llama:
    return sharpen(
        Llama(
            LlamaConfig(
                vocab_size=vocab_size,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_kv_head=2,
                ffn_hidden_dim=96,
                rope_theta=10000.0,
                block_size=256,
                tie_embeddings=tie,
                rope_scaling=rope_scaling,
            )
        ),
        seed=1,
    )


# Llama 3.1 scaling with a short original context: on head_dim 16 and theta 10000 the wavelengths
# fall in all three bands (kept, blended, slowed), so transformers must read it to agree.
SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize(
    "make, arch",
    [
        (lambda: tiny_gpt2(vocab_size=96), "GPT2LMHeadModel"),
        (lambda: tiny_gpt2(vocab_size=96, bias=False), "GPT2LMHeadModel"),
        (lambda: tiny_llama(), "LlamaForCausalLM"),
        (lambda: tiny_llama(tie=True), "LlamaForCausalLM"),
        (lambda: tiny_llama(rope_scaling=SCALING), "LlamaForCausalLM"),
    ],
    ids=["gpt2", "gpt2-no-bias", "llama", "llama-tied", "llama-rope-scaling"],
)
def test_export_loads_in_transformers_with_the_same_logits(
    make, arch: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    net = make()
    ckpt = write_medlm_ckpt(tmp_path / "run" / "last.ckpt", net)
    code, out, err = run_export([ckpt, tmp_path / "hf"], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'hf'}: config.json, model.safetensors")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [arch]
    assert (
        config["bos_token_id"] is None and config["eos_token_id"] is None
    )  # not GPT-2's vocabulary
    assert not (tmp_path / "hf" / "vocab.json").exists()
    pos = (
        (100 + torch.arange(40)).expand(2, 40) if isinstance(net, Llama) else None
    )  # past the original 64
    expected = our_logits(net, IDS, pos)
    assert expected.std() > 0.5
    assert (hf_logits(tmp_path / "hf", IDS, pos) - expected).abs().max() <= TOL
    if isinstance(net, Llama) and net.config.rope_scaling is not None:  # the scaling mattered
        plain = Llama(replace(net.config, rope_scaling=None))
        plain.load_state_dict(net.state_dict())
        assert (our_logits(plain, IDS, pos) - expected).abs().max() > 1e-2


@pytest.mark.parametrize(
    "make", [tiny_gpt2, lambda: tiny_llama(vocab_size=50257, tie=True)], ids=["gpt2", "llama"]
)
def test_gpt2_vocabulary_exports_tokenizer_and_generation_config(
    make, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    net = make()
    ckpt = write_medlm_ckpt(tmp_path / "last.ckpt", net)
    out_dir = tmp_path / "hf"
    assert run_export([ckpt, out_dir], capsys)[0] == 0
    assert {p.name for p in out_dir.iterdir()} == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    }
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    text = "Question: Does aspirin reduce the risk of myocardial infarction?\nAnswer: yes — 37.5°C"
    assert tok(text)["input_ids"] == encode(text)
    assert tok.eos_token_id == 50256
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert hf.generation_config.eos_token_id == hf.config.eos_token_id == 50256
    prompt = encode("The patient was diagnosed with")
    ids = torch.tensor([prompt])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
    ours = generate(net, [prompt], 8, temperature=0, eos_id=50256)
    assert ours == [ref[0, len(prompt) :].tolist()]
    # and medlm reads the exported directory back, GPT-2 tokenizer included
    loaded = load_model(out_dir)
    model, text_tok = loaded.net, loaded.tokenizer
    assert type(model) is type(net) and text_tok.name == "gpt2"
    assert (our_logits(model, ids) - our_logits(net, ids)).abs().max() <= TOL


def _hf_gpt2(tmp: Path) -> Path:
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    )
    sharpen(model).save_pretrained(tmp)
    return tmp


def _hf_llama(tmp: Path) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=10000.0,
        )
    )
    sharpen(model).save_pretrained(tmp)
    return tmp


@pytest.mark.parametrize("make", [_hf_gpt2, _hf_llama], ids=["gpt2", "llama"])
def test_hf_directory_loads_into_medlm_with_the_same_logits(make, tmp_path: Path) -> None:
    directory = make(tmp_path)
    model = (GPT2 if make is _hf_gpt2 else Llama).from_pretrained(directory)
    expected = hf_logits(directory, IDS)
    assert expected.std() > 0.5
    assert (our_logits(model, IDS) - expected).abs().max() <= TOL


def test_force_writes_into_a_non_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = write_medlm_ckpt(tmp_path / "last.ckpt", tiny_llama())
    out_dir = tmp_path / "hf"
    out_dir.mkdir()
    (out_dir / "README.md").write_text("keep me")
    code, _, err = run_export([ckpt, out_dir], capsys)
    assert code == 2 and "directory is not empty (pass --force" in err
    assert not (out_dir / "config.json").exists()
    assert run_export([ckpt, out_dir, "--force"], capsys)[0] == 0
    assert (out_dir / "model.safetensors").is_file() and (
        out_dir / "README.md"
    ).read_text() == "keep me"


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: [t / "missing.ckpt", t / "out"], "missing.ckpt: checkpoint not found"),
        (
            lambda t: [_write(t / "x.ckpt", {"state_dict": {}}), t / "out"],
            "not a medlm checkpoint (no 'medlm_network'",
        ),
        (
            lambda t: [_write(t / "x.ckpt", [1, 2]), t / "out"],
            "x.ckpt: holds a list, not the dict of a checkpoint",
        ),
        (
            lambda t: [write_medlm_ckpt(t / "x.ckpt", tiny_llama()), t / "x.ckpt"],
            "exists and is not a directory",
        ),
        (
            lambda t: [write_medlm_ckpt(t / "x.ckpt", tiny_llama()), t / "out", "--merged"],
            "is a causal-LM checkpoint, not a LoRA classifier",
        ),
        (lambda t: [t], "the following arguments are required: out_dir"),
    ],
    ids=["missing", "not-medlm", "not-a-dict", "out-is-a-file", "merged-causal-lm", "usage"],
)
def test_bad_input_is_one_line_and_exit_2(
    make_args, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_export(make_args(tmp_path), capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_classifier_checkpoints_go_to_the_classifier_exporter(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier checkpoint is read once, its network rebuilt and handed to
    ``export_classifier(model, out_dir, merged, source)`` (tested with real files in
    tests/experiments/test_lora_question_pairs.py)."""
    calls = []

    def export_classifier(model, out_dir: Path, merged: bool, source: str) -> list[Path]:
        calls.append((model, out_dir, merged, source))
        return [out_dir / "adapter_model.safetensors"]

    monkeypatch.setattr(cli, "export_classifier", export_classifier)
    net = SequenceClassifier(tiny_gpt2(vocab_size=96), num_labels=3, pad_token_id=0)
    ckpt = write_medlm_ckpt(tmp_path / "clf.ckpt", net)
    code, out, _ = run_export([ckpt, tmp_path / "a"], capsys)
    assert code == 0 and out == f"wrote {tmp_path / 'a'}: adapter_model.safetensors\n"
    assert run_export([ckpt, tmp_path / "b", "--merged"], capsys)[0] == 0
    assert [c[1:] for c in calls] == [
        (tmp_path / "a", False, str(ckpt)),
        (tmp_path / "b", True, str(ckpt)),
    ]
    model = calls[0][0]
    assert isinstance(model, SequenceClassifier) and model.num_labels == 3 and not model.training
    torch.testing.assert_close(model.state_dict(), net.state_dict())
