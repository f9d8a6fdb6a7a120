"""medlm's Llama against transformers' LlamaForCausalLM on the same random weights, through the
Hugging Face layout, Meta's original layout (written here from the HF weights) and ``to_hf``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medlm.errors import ConfigError, MedlmError
from medlm.models.checkpoint import write_hf_checkpoint
from medlm.models.kv_cache import document_causal_mask, document_positions, padded_causal_mask
from medlm.models.llama import Llama, LlamaConfig, RopeScaling

transformers = pytest.importorskip("transformers")

# head_dim 16 with theta 10000 has wavelengths 6.3, 20, 63, 199, ... : with an original context of
# 32 (high band < 8, low band > 32) one frequency is kept, one blended and the rest slowed down.
SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
TOL = 1e-4


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that logits are O(1): a wrong rotation or head order shows up
    clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in name or "tok_embeddings" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def _hf_model(
    tie: bool,
    scaling: dict | None = SCALING,
    rope_theta: float = 10000.0,
    intermediate_size: int = 80,
    max_positions: int = 128,
):
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        tie_word_embeddings=tie,
        rope_scaling=None if scaling is None else dict(scaling),
    )  # transformers edits the dict it gets
    model = transformers.LlamaForCausalLM(config).eval()
    _randomize(model)
    return model


def _hf_logits(model, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=idx, position_ids=pos).logits


def _ours(model: Llama, idx: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(idx, **kwargs)


def _tiny(tie: bool = False, scaling: dict | None = SCALING, **kw) -> Llama:
    config = LlamaConfig(
        vocab_size=96,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        ffn_hidden_dim=80,
        rope_theta=10000.0,
        rope_scaling=scaling,
        block_size=128,
        tie_embeddings=tie,
        **kw,
    )
    model = Llama(config).eval()
    _randomize(model, seed=1)
    return model


IDX = torch.randint(0, 96, (2, 64), generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- Hugging Face layout


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_from_pretrained_matches_transformers(tmp_path: Path, tie: bool) -> None:
    hf = _hf_model(tie)
    hf.save_pretrained(tmp_path)
    model = Llama.from_pretrained(tmp_path).eval()
    assert model.config.n_kv_head == 2 and model.config.tie_embeddings is tie
    assert model.config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 32)
    expected = _hf_logits(hf, IDX)
    assert expected.std() > 0.5  # a test that can fail: logits are far from zero
    assert (_ours(model, IDX) - expected).abs().max() <= TOL
    # the rope scaling matters at these lengths: without it the logits are clearly different
    unscaled = Llama.from_pretrained(tmp_path, rope_scaling=None).eval()
    assert (_ours(unscaled, IDX) - expected).abs().max() > 1e-2


def test_from_pretrained_sharded_safetensors(tmp_path: Path) -> None:
    hf = _hf_model(tie=False)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = Llama.from_pretrained(tmp_path).eval()
    assert (_ours(model, IDX) - _hf_logits(hf, IDX)).abs().max() <= TOL


def test_from_pretrained_overrides_and_unknown_key(tmp_path: Path) -> None:
    _hf_model(tie=False).save_pretrained(tmp_path)
    model = Llama.from_pretrained(tmp_path, block_size=64, dropout=0.1)
    assert model.config.block_size == 64 and model.config.dropout == 0.1
    with pytest.raises(ConfigError, match="model.n_layers: unknown Llama override"):
        Llama.from_pretrained(tmp_path, n_layers=3)  # the old name of n_layer
    with pytest.raises(MedlmError, match=r"layers.0.attention.wk.weight has shape \(32, 64\)"):
        Llama.from_pretrained(tmp_path, n_kv_head=4)
    with pytest.raises(MedlmError, match="tie_embeddings is set but the output weights differ"):
        Llama.from_pretrained(tmp_path, tie_embeddings=True)  # would silently drop lm_head


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model_type", "mistral", "model_type"),
        ("attention_bias", True, "attention_bias"),
        ("hidden_act", "gelu", "hidden_act"),
        ("head_dim", 32, "head_dim"),
        (
            "rope_parameters",
            {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
            "rope_type 'yarn'",
        ),
        ("num_attention_heads", 3, "n_head"),
    ],
)
def test_from_pretrained_refuses_unsupported_config(
    tmp_path: Path, key: str, value, message: str
) -> None:
    _hf_model(tie=False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message) as err:
        Llama.from_pretrained(tmp_path)
    assert "config.json" in str(err.value)


def test_from_pretrained_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MedlmError, match="config.json"):
        Llama.from_pretrained(tmp_path)
    _hf_model(tie=False).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(MedlmError, match="no weights"):
        Llama.from_pretrained(tmp_path)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_to_hf_round_trip(tmp_path: Path, tie: bool) -> None:
    model = _tiny(tie=tie)
    write_hf_checkpoint(tmp_path, *model.to_hf())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["tie_word_embeddings"] is tie
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    expected = _ours(model, IDX)
    assert (_hf_logits(hf, IDX) - expected).abs().max() <= TOL
    assert (_ours(Llama.from_pretrained(tmp_path).eval(), IDX) - expected).abs().max() == 0


def test_to_hf_tied_writes_no_lm_head() -> None:
    _, state = _tiny(tie=True).to_hf()
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    _, state = _tiny(tie=False).to_hf()
    assert "lm_head.weight" in state


# ----------------------------------------------------------------------------- Meta layout


def _interleave_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate-half rows (HF) -> Meta's interleaved RoPE pairs: the inverse of HF's ``permute``."""
    out, inp = w.shape
    return w.view(heads, 2, out // heads // 2, inp).transpose(1, 2).reshape(out, inp)


def _write_meta(directory: Path, hf, params: dict, n_shards: int = 2, embed_split: int = 0) -> None:
    """Meta's files from HF weights: params.json and model-parallel consolidated.NN.pth shards."""
    sd, c = hf.state_dict(), hf.config
    H, H_kv = c.num_attention_heads, c.num_key_value_heads
    full: dict[
        str, tuple[torch.Tensor, int | None]
    ] = {  # name -> (tensor, split dim or None: copy)
        "tok_embeddings.weight": (sd["model.embed_tokens.weight"], embed_split),
        "norm.weight": (sd["model.norm.weight"], None),
    }
    if not c.tie_word_embeddings:
        full["output.weight"] = (sd["lm_head.weight"], 0)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        full |= {
            f"layers.{i}.attention.wq.weight": (
                _interleave_rows(sd[p + "self_attn.q_proj.weight"], H),
                0,
            ),
            f"layers.{i}.attention.wk.weight": (
                _interleave_rows(sd[p + "self_attn.k_proj.weight"], H_kv),
                0,
            ),
            f"layers.{i}.attention.wv.weight": (sd[p + "self_attn.v_proj.weight"], 0),
            f"layers.{i}.attention.wo.weight": (sd[p + "self_attn.o_proj.weight"], 1),
            f"layers.{i}.feed_forward.w1.weight": (sd[p + "mlp.gate_proj.weight"], 0),
            f"layers.{i}.feed_forward.w2.weight": (sd[p + "mlp.down_proj.weight"], 1),
            f"layers.{i}.feed_forward.w3.weight": (sd[p + "mlp.up_proj.weight"], 0),
            f"layers.{i}.attention_norm.weight": (sd[p + "input_layernorm.weight"], None),
            f"layers.{i}.ffn_norm.weight": (sd[p + "post_attention_layernorm.weight"], None),
        }
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        shard = {
            name: (t.clone() if dim is None else t.chunk(n_shards, dim=dim)[s].clone())
            for name, (t, dim) in full.items()
        }
        shard["rope.freqs"] = torch.zeros(8)  # Llama 2 checkpoints carry this buffer; it is skipped
        torch.save(shard, directory / f"consolidated.{s:02d}.pth")
    (directory / "params.json").write_text(json.dumps(params))


# dim 64: Meta's ffn size int(1.3 * int(2 * 256 / 3)) = 221, rounded up to a multiple of 32 = 224
META_PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 96,
    "multiple_of": 32,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
}
# Meta's constants (factor 8, bands 1 and 4, original 8192) with theta 500000 on head_dim 16 put one
# wavelength in each band; positions near 4000 make the scaling matter.
META_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
META_POS = (4000 + torch.arange(48)).expand(2, 48)


def _hf_meta_model(tie: bool = False):
    return _hf_model(
        tie, scaling=META_SCALING, rope_theta=500000.0, intermediate_size=224, max_positions=16384
    )


@pytest.mark.parametrize(
    "tie, embed_split",
    [(False, 0), (True, 0), (False, 1)],
    ids=["untied-vocab-split", "tied-vocab-split", "untied-dim-split"],
)
def test_from_meta_matches_transformers(tmp_path: Path, tie: bool, embed_split: int) -> None:
    hf = _hf_meta_model(tie)
    _write_meta(tmp_path, hf, META_PARAMS, n_shards=2, embed_split=embed_split)
    model = Llama.from_meta(tmp_path).eval()
    c = model.config
    assert (c.ffn_hidden_dim, c.tie_embeddings, c.block_size) == (224, tie, 131072)
    assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
    idx = IDX[:, :48]
    expected = _hf_logits(hf, idx, META_POS)
    assert expected.std() > 0.5
    assert (_ours(model, idx, pos=META_POS) - expected).abs().max() <= TOL
    unscaled = Llama.from_meta(tmp_path, rope_scaling=None).eval()
    assert (_ours(unscaled, idx, pos=META_POS) - expected).abs().max() > 1e-2


def test_from_meta_single_shard_and_llama2_params(tmp_path: Path) -> None:
    """One shard, no n_kv_heads/rope_theta (Llama 2: theta 10000) and vocab_size -1 (from the
    weights)."""
    hf_config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    _randomize(hf)
    params = {
        "dim": 64,
        "n_layers": 1,
        "n_heads": 4,
        "vocab_size": -1,
        "multiple_of": 32,
        "norm_eps": 1e-5,
    }
    _write_meta(tmp_path, hf, params, n_shards=1)
    model = Llama.from_meta(tmp_path).eval()
    assert (model.config.vocab_size, model.config.n_kv_head, model.config.rope_theta) == (
        96,
        4,
        10000.0,
    )
    assert model.config.block_size == 4096
    idx = IDX[:, :32]
    assert (_ours(model, idx) - _hf_logits(hf, idx)).abs().max() <= TOL


def test_from_meta_rope_scaling_factor_and_max_seq_len(tmp_path: Path) -> None:
    _write_meta(
        tmp_path, _hf_meta_model(), {**META_PARAMS, "rope_scaling_factor": 32.0, "max_seq_len": 512}
    )
    c = Llama.from_meta(tmp_path).config
    assert (c.rope_scaling, c.block_size) == (RopeScaling(32.0, 1.0, 4.0, 8192), 512)


def test_from_meta_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MedlmError, match="params.json") as err:
        Llama.from_meta(tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "params.json").write_text(json.dumps(META_PARAMS))
    with pytest.raises(MedlmError, match="consolidated.00.pth") as err:
        Llama.from_meta(tmp_path)
    assert str(tmp_path) in str(err.value)
    hf = _hf_meta_model()
    _write_meta(tmp_path, hf, META_PARAMS, n_shards=2)
    (tmp_path / "consolidated.01.pth").rename(tmp_path / "consolidated.02.pth")
    with pytest.raises(MedlmError, match="consolidated.01.pth is missing"):
        Llama.from_meta(tmp_path)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_context", 8192, "unknown field 'max_context'"),
        ("n_heads", "4", "field 'n_heads' must be int"),
        ("dim", True, "field 'dim' must be int"),
        ("use_scaled_rope", 1, "field 'use_scaled_rope' must be bool"),
        ("norm_eps", None, "field 'norm_eps'"),
        ("n_kv_heads", 3, "model.n_kv_head: 3 does not divide n_head 4"),
    ],
)
def test_from_meta_bad_params(tmp_path: Path, field: str, value, message: str) -> None:
    hf = _hf_meta_model()
    _write_meta(tmp_path, hf, {**META_PARAMS, field: value})
    with pytest.raises(ConfigError, match=message) as err:
        Llama.from_meta(tmp_path)
    assert "params.json" in str(err.value)


def test_from_meta_params_missing_field_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text(
        json.dumps({k: v for k, v in META_PARAMS.items() if k != "n_layers"})
    )
    with pytest.raises(ConfigError, match="params.json: field 'n_layers' is missing"):
        Llama.from_meta(tmp_path)
    (tmp_path / "params.json").write_text("{dim: 64")
    with pytest.raises(ConfigError, match="params.json: not valid JSON"):
        Llama.from_meta(tmp_path)


class _Payload:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def test_from_meta_refuses_pickled_objects(tmp_path: Path) -> None:
    (tmp_path / "params.json").write_text(json.dumps(META_PARAMS))
    torch.save(
        {"tok_embeddings.weight": torch.zeros(96, 64), "x": _Payload()},
        tmp_path / "consolidated.00.pth",
    )
    with pytest.raises(MedlmError, match="consolidated.00.pth: cannot be read as a weights-only"):
        Llama.from_meta(tmp_path)


# ----------------------------------------------------------------------------- calling convention


def test_kv_cache_matches_full_forward() -> None:
    model = _tiny()
    idx = IDX[:, :40]  # past the original context of 32, where the rope scaling acts
    full = _ours(model, idx)
    cache = model.new_cache(batch_size=2, max_len=48)
    steps = [_ours(model, idx[:, :20], cache=cache)]  # the prefix
    steps.append(_ours(model, idx[:, 20:23], cache=cache))  # several tokens after a filled cache
    for t in range(23, 40):  # then one at a time
        steps.append(_ours(model, idx[:, t : t + 1], cache=cache))
    assert cache.length == 40
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL
    assert full.std() > 0.5


def test_block_size_and_cache_limits() -> None:
    model = _tiny()
    with pytest.raises(ConfigError, match="exceeds block_size 128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ConfigError, match="KV cache of 200 positions exceeds block_size 128"):
        model.new_cache(1, 200)
    cache = model.new_cache(1, 128)
    model(torch.zeros(1, 100, dtype=torch.long), cache=cache)
    with pytest.raises(ConfigError, match="29 tokens after 100 cached ones"):
        model(torch.zeros(1, 29, dtype=torch.long), cache=cache)


def test_packed_documents_match_separate_forwards() -> None:
    """Per-document positions and a block-diagonal mask make a packed row equal its documents
    alone."""
    model = _tiny()
    lengths = [10, 25, 13]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]  # (1, 48)
    idx = IDX[:1, :48]
    packed = _ours(model, idx, pos=document_positions(doc_ids), mask=document_causal_mask(doc_ids))
    start = 0
    for n in lengths:
        alone = _ours(model, idx[:, start : start + n])
        assert (packed[:, start : start + n] - alone).abs().max() <= TOL
        start += n


def test_left_padded_batch_matches_unpadded() -> None:
    model = _tiny()
    idx = IDX[:, :30].clone()
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :12] = False  # row 1 is an 18-token prompt, left-padded
    pos = (valid.cumsum(dim=1) - 1).clamp(min=0)
    batched = _ours(model, idx, pos=pos, mask=padded_causal_mask(valid, 30))
    alone = _ours(model, idx[1:, 12:])
    assert (batched[1:, 12:] - alone).abs().max() <= TOL
    assert (batched[:1] - _ours(model, idx[:1])).abs().max() <= TOL


def test_mask_must_cover_cached_keys() -> None:
    model = _tiny()
    cache = model.new_cache(1, 16)
    model(IDX[:1, :4], cache=cache)
    with pytest.raises(ValueError, match="mask covers 2 keys, expected 6"):
        model(IDX[:1, 4:6], mask=torch.ones(1, 1, 2, 2, dtype=torch.bool), cache=cache)


def test_hidden_states_feed_the_output_layer() -> None:
    model = _tiny(tie=True)
    with torch.no_grad():
        h = model.hidden_states(IDX)
        assert h.shape == (2, 64, 64)
        assert torch.equal(model.output(h), model(IDX))
    assert model.output.weight is model.tok_embeddings.weight


def test_bfloat16_keeps_float32_rope_frequencies() -> None:
    """RoPE sees relative distances: at ~4000 positions apart, bf16-rounded frequencies would be
    off by
    radians (mean error ~7% of the logits here); fp32 ones keep a bf16 model within bf16 noise
    (~1%)."""
    model = _tiny(scaling=None)
    pos = torch.cat([torch.arange(4), 4000 + torch.arange(28)]).expand(2, 32)
    idx = IDX[:, :32]
    expected = _ours(model, idx, pos=pos)
    low = _ours(model.to(torch.bfloat16), idx, pos=pos).float()
    assert (low - expected).abs().mean() < 0.03 * expected.abs().mean()
    cache = model.new_cache(2, 32)
    assert cache.k.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- config


def test_config_resolves_meta_sizes() -> None:
    # Llama 2 7B and Llama 3 8B feed-forward sizes from Meta's formula
    assert LlamaConfig(vocab_size=32000, n_embd=4096, n_layer=1, n_head=32).ffn_hidden_dim == 11008
    c = LlamaConfig(
        vocab_size=128256,
        n_embd=4096,
        n_layer=1,
        n_head=32,
        n_kv_head=8,
        multiple_of=1024,
        ffn_dim_multiplier=1.3,
    )
    assert (c.ffn_hidden_dim, c.n_kv_head, c.head_dim) == (14336, 8, 128)
    assert LlamaConfig(vocab_size=8, n_embd=16, n_layer=1, n_head=4).n_kv_head == 4


@pytest.mark.parametrize("tie", [False, True])
def test_num_params_matches_transformers(tie: bool) -> None:
    hf = _hf_model(tie)
    model = _tiny(tie=tie)
    n_hf = sum(p.numel() for p in hf.parameters())
    assert (
        model.config.num_params(non_embedding=False)
        == model.num_params(non_embedding=False)
        == n_hf
    )
    assert model.config.num_params() == model.num_params() == n_hf - (0 if tie else 96 * 64)
    assert model.config.flops_per_token(10) == 6 * model.num_params() + 12 * 2 * 4 * 16 * 10


BASE = dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"vocab_size": 0}, "model.vocab_size"),
        ({"n_embd": "64"}, "model.n_embd"),
        ({"n_layer": True}, "model.n_layer"),
        ({"n_head": 3}, "model.n_head"),
        ({"n_kv_head": 3}, "model.n_kv_head"),
        ({"n_embd": 12, "n_head": 4}, "model.n_head"),  # head size 3 is odd
        ({"ffn_hidden_dim": -1}, "model.ffn_hidden_dim"),
        ({"ffn_dim_multiplier": 0}, "model.ffn_dim_multiplier"),
        ({"norm_eps": 0.0}, "model.norm_eps"),
        ({"rope_theta": -1.0}, "model.rope_theta"),
        ({"block_size": 0}, "model.block_size"),
        ({"tie_embeddings": "yes"}, "model.tie_embeddings"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"rope_scaling": 8.0}, "model.rope_scaling"),
        ({"rope_scaling": {**SCALING, "beta": 1.0}}, "model.rope_scaling.beta"),
        (
            {"rope_scaling": {k: v for k, v in SCALING.items() if k != "factor"}},
            "model.rope_scaling.factor",
        ),
        ({"rope_scaling": {**SCALING, "rope_type": "yarn"}}, "model.rope_scaling.rope_type"),
        (
            {"rope_scaling": {**SCALING, "high_freq_factor": 1.0}},
            "model.rope_scaling.high_freq_factor",
        ),
        (
            {"rope_scaling": {**SCALING, "original_max_position_embeddings": 0.5}},
            "model.rope_scaling.original_max_position_embeddings",
        ),
    ],
)
def test_config_validation_names_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        LlamaConfig(**{**BASE, **changes})
    assert str(err.value).startswith(key + ":"), str(err.value)


def test_config_accepts_rope_scaling_mapping_without_rope_type() -> None:
    c = LlamaConfig(**BASE, rope_scaling={k: v for k, v in SCALING.items() if k != "rope_type"})
    assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 32)


def test_generation_with_cache_equals_without_then_trains() -> None:
    """medlm's generate() on Llama: same tokens with and without the KV cache, for left-padded
    prompts
    of different lengths; the model still trains afterwards (RoPE tables made under
    inference_mode)."""
    from medlm.models.generation import generate

    model = _tiny()
    prompts = [IDX[0, :5].tolist(), IDX[1, :11].tolist()]
    cached = generate(model, prompts, 20, temperature=None)
    uncached = generate(model, prompts, 20, temperature=None, use_cache=False)
    assert cached == uncached and all(len(row) == 20 for row in cached)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(IDX[:, :-1]).flatten(0, 1), IDX[:, 1:].flatten())
    loss.backward()
    assert model.layers[0].attention.wq.weight.grad is not None


def test_configs_name_the_same_sizes_as_gpt2() -> None:
    """One name per concept: a sweep or a script reads n_layer/n_head/n_embd off either model."""
    from dataclasses import fields

    from medlm.models.gpt2 import GPT2Config

    shared = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd"}
    assert shared <= {f.name for f in fields(LlamaConfig)} & {f.name for f in fields(GPT2Config)}
