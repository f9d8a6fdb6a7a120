"""GPT2 against Hugging Face's GPT2LMHeadModel on the same tiny random weights, and its loaders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel
from transformers import GPT2Config as HFGPT2Config  # imported here: the lazy import takes seconds

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import write_hf_checkpoint
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.kv_cache import padded_causal_mask

TINY = {  # two shapes: several heads, and few heads with an odd head size
    "l2h4d64": dict(n_layer=2, n_head=4, n_embd=64, vocab_size=101, n_positions=32),
    "l3h2d48": dict(n_layer=3, n_head=2, n_embd=48, vocab_size=67, n_positions=24),
}


def _hf_model(
    n_layer: int, n_head: int, n_embd: int, vocab_size: int, n_positions: int, seed: int = 0
):
    """A tiny HF GPT-2 whose every weight (biases and LayerNorms too) is random, so a missed
    transpose or a dropped bias shows in the logits."""
    torch.manual_seed(seed)
    config = HFGPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _write_legacy_bin(model, directory: Path) -> None:
    """pytorch_model.bin as the hub's gpt2 files: bare GPT2Model names, Conv1D layout, mask
    buffers."""
    directory.mkdir(parents=True)
    state = {
        k.removeprefix("transformer."): v.clone()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }
    n = model.config.n_positions
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, directory / "pytorch_model.bin")
    model.config.to_json_file(directory / "config.json")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict:
    """name -> (HF model, safetensors dir, pytorch_model.bin dir)."""
    out = {}
    for name, shape in TINY.items():
        model = _hf_model(**shape)
        root = tmp_path_factory.mktemp(name)
        model.save_pretrained(root / "st")
        _write_legacy_bin(model, root / "bin")
        out[name] = (model, root / "st", root / "bin")
    return out


def _ids(vocab: int, B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Logits equal HF


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", list(TINY))
def test_logits_match_hf(hf_dirs, name, fmt):
    hf, st_dir, bin_dir = hf_dirs[name]
    directory = st_dir if fmt == "safetensors" else bin_dir
    assert {p.name for p in directory.glob("*.bin")} == (
        {"pytorch_model.bin"} if fmt == "bin" else set()
    )
    model = GPT2.from_pretrained(directory).eval()
    idx = _ids(hf.config.vocab_size, 2, hf.config.n_positions)
    with torch.no_grad():
        ours, ref = model(idx), hf(idx).logits
    assert ours.shape == (2, hf.config.n_positions, hf.config.vocab_size)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_hidden_states_are_after_ln_f_and_feed_lm_head(hf_dirs):
    hf, st_dir, _ = hf_dirs["l2h4d64"]
    model = GPT2.from_pretrained(st_dir).eval()
    idx = _ids(101, 2, 10)
    with torch.no_grad():
        h = model.hidden_states(idx)
        ref = hf.transformer(idx).last_hidden_state
        assert h.shape == (2, 10, 64)
        assert (h - ref).abs().max().item() <= 1e-4
        torch.testing.assert_close(model.lm_head(h), model(idx))


def test_left_padded_batch_matches_hf_attention_mask(hf_dirs):
    """Our mask + positions on left padding give HF's logits at every real token."""
    hf, st_dir, _ = hf_dirs["l3h2d48"]
    model = GPT2.from_pretrained(st_dir).eval()
    idx = _ids(67, 3, 12)
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[0, :5] = False
    valid[2, :1] = False
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(idx, pos=pos, mask=padded_causal_mask(valid, 12))
        ref = hf(idx, attention_mask=valid.long(), position_ids=pos).logits
    assert (ours - ref)[valid].abs().max().item() <= 1e-4
    # and a padded row equals the same tokens run alone, without padding
    with torch.no_grad():
        alone = model(idx[0:1, 5:])
    assert (ours[0, 5:] - alone[0]).abs().max().item() <= 1e-4


def test_kv_cache_chunks_equal_one_pass(hf_dirs):
    """Prefill 5, then 4 (explicit causal mask over the cached prefix), then 1 by 1."""
    _, st_dir, _ = hf_dirs["l2h4d64"]
    model = GPT2.from_pretrained(st_dir).eval()
    idx = _ids(101, 2, 12)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, 12)
        parts = [model(idx[:, :5], cache=cache), model(idx[:, 5:9], cache=cache)]
        parts += [model(idx[:, t : t + 1], cache=cache) for t in range(9, 12)]
    assert cache.length == 12
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------
# from_pretrained: config, overrides, errors


def test_config_and_overrides(hf_dirs):
    _, st_dir, _ = hf_dirs["l3h2d48"]
    plain = GPT2.from_pretrained(st_dir)
    c = plain.config
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd) == (24, 67, 3, 2, 48)
    assert (c.embd_dropout, c.attn_dropout, c.resid_dropout) == (
        0.1,
        0.1,
        0.1,
    )  # HF's pdrop defaults
    c = GPT2.from_pretrained(st_dir, dropout=0.6).config
    assert (c.embd_dropout, c.attn_dropout, c.resid_dropout) == (0.6, 0.6, 0.6)
    c = GPT2.from_pretrained(st_dir, dropout=0.6, attn_dropout=0.0).config  # a named field wins
    assert (c.embd_dropout, c.attn_dropout, c.resid_dropout) == (0.6, 0.0, 0.6)
    torch.testing.assert_close(
        GPT2.from_pretrained(st_dir, dropout=0.6).state_dict(), plain.state_dict()
    )


def test_smaller_block_size_crops_position_embeddings(hf_dirs):
    hf, st_dir, _ = hf_dirs["l2h4d64"]
    model = GPT2.from_pretrained(st_dir, block_size=16).eval()
    assert model.transformer.wpe.weight.shape == (16, 64)
    idx = _ids(101, 1, 16)
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= 1e-4
    with pytest.raises(ConfigError, match="exceeds block_size 16"):
        model(_ids(101, 1, 17))


def test_unknown_override_is_named(hf_dirs):
    with pytest.raises(ConfigError, match="n_heads"):
        GPT2.from_pretrained(hf_dirs["l2h4d64"][1], n_heads=4)


def test_bad_override_value_is_named(hf_dirs):
    with pytest.raises(ConfigError, match="model.embd_dropout: 1.5"):
        GPT2.from_pretrained(hf_dirs["l2h4d64"][1], dropout=1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_head=5, n_embd=64), "model.n_head: 5 does not divide n_embd 64"),
        (dict(n_layer=0), "model.n_layer: 0"),
        (dict(block_size=-1), "model.block_size: -1"),
        (dict(vocab_size=3.5), "model.vocab_size: 3.5"),
        (dict(n_embd=True), "model.n_embd: True"),
        (dict(attn_dropout=1.0), "model.attn_dropout: 1.0"),
        (dict(resid_dropout=-0.1), "model.resid_dropout: -0.1"),
        (dict(embd_dropout="0.1"), "model.embd_dropout: '0.1'"),
        (dict(bias="yes"), "model.bias: 'yes'"),
        (dict(layer_norm_eps=0), "model.layer_norm_eps: 0"),
    ],
)
def test_config_validation_names_the_key(kwargs, message):
    with pytest.raises(ConfigError) as err:
        GPT2Config(**kwargs)
    assert message in str(err.value)


def test_missing_weights_file(tmp_path, hf_dirs):
    shutil.copy(hf_dirs["l2h4d64"][1] / "config.json", tmp_path / "config.json")
    with pytest.raises(MedlmError, match="no weights"):
        GPT2.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path, hf_dirs):
    with pytest.raises(MedlmError, match=r"transformer\.wte\.weight has shape \(101, 64\)"):
        GPT2.from_pretrained(hf_dirs["l2h4d64"][1], vocab_size=100)
    with pytest.raises(MedlmError, match=r"transformer\.wpe\.weight"):
        GPT2.from_pretrained(hf_dirs["l2h4d64"][1], block_size=64)
    # a checkpoint whose config.json disagrees with its tensors
    d = tmp_path / "bad"
    shutil.copytree(hf_dirs["l2h4d64"][1], d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | {"n_embd": 32, "n_head": 2}))
    with pytest.raises(MedlmError, match=r"tensor transformer\.\S+ has shape"):
        GPT2.from_pretrained(d)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"activation_function": "relu"}, "activation_function"),
        ({"n_inner": 100}, "n_inner"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"model_type": "llama"}, "model_type"),
    ],
)
def test_unsupported_hf_config_is_refused(tmp_path, hf_dirs, change, key):
    d = tmp_path / "m"
    shutil.copytree(hf_dirs["l2h4d64"][1], d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ConfigError, match=key):
        GPT2.from_pretrained(d)


def test_untied_output_layer_is_refused(tmp_path, hf_dirs):
    hf, _, _ = hf_dirs["l2h4d64"]
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1.0
    write_hf_checkpoint(tmp_path, hf.config.to_dict() | {"tie_word_embeddings": False}, state)
    with pytest.raises(MedlmError, match="lm_head.weight differs"):
        GPT2.from_pretrained(tmp_path)
    # an lm_head.weight equal to wte (as some exports write it) is fine
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    write_hf_checkpoint(tmp_path, hf.config.to_dict(), state)
    GPT2.from_pretrained(tmp_path)


def test_missing_local_directory(tmp_path):
    with pytest.raises(MedlmError, match="no such model directory"):
        GPT2.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "model.safetensors").touch()
    with pytest.raises(MedlmError, match="not a directory"):
        GPT2.from_pretrained(tmp_path / "model.safetensors")


def test_hub_id_offline_says_to_pass_a_directory(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-medlm-hf-home")
    with pytest.raises(MedlmError, match="could not download.*pass a local directory"):
        GPT2.from_pretrained("medlm-test/gpt2-not-cached")


def test_hub_id_downloads_safetensors_then_bin(monkeypatch, tmp_path, hf_dirs):
    """The hub path asks for config + safetensors first and falls back to pytorch_model.bin."""
    import huggingface_hub

    hf, st_dir, bin_dir = hf_dirs["l2h4d64"]
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(bin_dir / "config.json", only_config / "config.json")
    calls = []

    def fake_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        if repo_id == "gpt2":
            return str(st_dir)
        return str(only_config if "pytorch_model.bin" not in allow_patterns else bin_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    idx = _ids(101, 1, 8)
    with torch.no_grad():
        ref = hf(idx).logits
        assert (GPT2.from_pretrained("gpt2").eval()(idx) - ref).abs().max().item() <= 1e-4
        assert calls == [("gpt2", calls[0][1])] and "model.safetensors" in calls[0][1]
        assert "pytorch_model.bin" not in calls[0][1]
        calls.clear()
        assert (
            GPT2.from_pretrained("someone/old-gpt2").eval()(idx) - ref
        ).abs().max().item() <= 1e-4
        assert [c[0] for c in calls] == ["someone/old-gpt2"] * 2 and "pytorch_model.bin" in calls[
            1
        ][1]


# ----------------------------------------------------------------------------------------------
# to_hf: export that transformers loads


def _random_gpt2(bias: bool) -> GPT2:
    torch.manual_seed(3)
    model = GPT2(
        GPT2Config(block_size=20, vocab_size=53, n_layer=2, n_head=2, n_embd=32, bias=bias)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_to_hf_round_trip(tmp_path, bias):
    model = _random_gpt2(bias)
    write_hf_checkpoint(tmp_path, *model.to_hf())
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    idx = _ids(53, 2, 20)
    with torch.no_grad():
        assert (hf.eval()(idx).logits - model(idx)).abs().max().item() <= 1e-4
    back = GPT2.from_pretrained(tmp_path)  # HF's GPT-2 always has biases: zeros were written
    assert back.config == GPT2Config(**{**vars(model.config), "bias": True})
    with torch.no_grad():
        assert (back.eval()(idx) - model(idx)).abs().max().item() <= 1e-5


def test_to_hf_config_keys():
    config, state = _random_gpt2(True).to_hf()
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (
        config["n_positions"],
        config["vocab_size"],
        config["n_layer"],
        config["n_head"],
        config["n_embd"],
    ) == (20, 53, 2, 2, 32)
    assert "bos_token_id" not in config  # token ids are the tokenizer's: the exporter writes them
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    assert state["transformer.h.1.mlp.c_proj.weight"].shape == (128, 32)


# ----------------------------------------------------------------------------------------------
# Model details


def test_num_params_and_flops_of_gpt2_small():
    c = GPT2Config()  # GPT-2 124M, counted without building it
    assert c.num_params(non_embedding=False) == 124_439_808
    assert c.num_params() == 124_439_808 - 1024 * 768
    assert c.flops_per_token() == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024
    assert c.flops_per_token(128) == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 128


@pytest.mark.parametrize("bias", [True, False])
def test_num_params_counts_the_tied_weight_once(bias):
    c = GPT2Config(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=24, bias=bias)
    model = GPT2(c)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params(non_embedding=False) == c.num_params(non_embedding=False)
    assert model.num_params() == c.num_params() == c.num_params(non_embedding=False) - 16 * 24


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(block_size=16, vocab_size=64, n_layer=8, n_head=4, n_embd=128))
    c_proj = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    )
    c_fc = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("c_fc.weight")]
    )
    assert c_proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("which", ["embd_dropout", "attn_dropout", "resid_dropout"])
def test_each_dropout_acts_only_in_training(which):
    torch.manual_seed(0)
    model = GPT2(
        GPT2Config(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16, **{which: 0.5})
    )
    idx = _ids(40, 2, 16)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(idx), model(idx))
        model.eval()
        assert torch.equal(model(idx), model(idx))


def test_too_long_input_names_the_sizes():
    model = GPT2(GPT2Config(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    with pytest.raises(ConfigError, match="17 positions.*block_size 16"):
        model(_ids(40, 1, 17))
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(_ids(40, 1, 14), cache=cache)
        with pytest.raises(ConfigError, match="3 tokens after 14 cached.*block_size 16"):
            model(_ids(40, 1, 3), cache=cache)
    with pytest.raises(ConfigError, match="17 positions exceeds block_size 16"):
        model.new_cache(1, 17)


def test_new_cache_follows_the_model():
    model = GPT2(GPT2Config(block_size=16, vocab_size=40, n_layer=3, n_head=2, n_embd=16)).to(
        torch.float64
    )
    cache = model.new_cache(4, 10)
    assert cache.k.shape == (3, 4, 2, 10, 8) and cache.k.dtype == torch.float64
    assert model.new_cache(1, 5, dtype=torch.float32).v.dtype == torch.float32


def test_mask_of_wrong_width_is_refused():
    model = GPT2(GPT2Config(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="mask covers 5 keys, expected 6"):
        model(_ids(40, 1, 6), mask=torch.ones(1, 1, 6, 5, dtype=torch.bool))


def test_cache_of_another_dtype():
    """A bf16 model with an fp32 cache (new_cache(dtype=...)): keys meet queries in the model's
    dtype."""
    model = GPT2(GPT2Config(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = _ids(40, 2, 8)
    with torch.no_grad():
        ref = model(idx)
        model.to(torch.bfloat16)
        cache = model.new_cache(2, 8, dtype=torch.float32)
        stepped = torch.cat(
            [model(idx[:, :5], cache=cache)]
            + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 8)],
            dim=1,
        )
    assert cache.k.dtype == torch.float32 and stepped.dtype == torch.bfloat16
    torch.testing.assert_close(stepped.float(), ref, atol=0.05, rtol=0.05)
