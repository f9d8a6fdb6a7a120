"""medlm-generate and the Generator API: every kind of source, streaming, stop strings, bad
input."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medlm.cli import generate as cli
from medlm.data.tokenizer import Llama3Tokenizer, Tokenizer, load_tokenizer
from medlm.errors import ConfigError
from medlm.generator import Generator, _RowText
from medlm.loading import load_model
from medlm.models import generation
from medlm.models.checkpoint import NETWORK_KEY, load_network, network_spec
from medlm.models.generation import generate
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.models.llama import Llama, LlamaConfig

PROMPT = "The patient was diagnosed with"


# ----------------------------------------------------------------------------------------------
# Sources, built offline


def sharpen(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Large random weights: varied greedy continuations whose argmax margins float noise cannot
    flip."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(
                    0.0,
                    1.0 if "emb" in name or name.endswith(("wte.weight", "wpe.weight")) else 0.5,
                )
    return model.eval()


def write_medlm_ckpt(path: Path, net: torch.nn.Module, tokenizer: str | None = "gpt2") -> Path:
    """A checkpoint as CausalLM writes it: the net under ``net.``, its spec, the DataModule's
    hparams."""
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        NETWORK_KEY: network_spec(net),
        "epoch": 0,
        "global_step": 1,
    }
    if tokenizer is not None:
        ckpt["datamodule_hyper_parameters"] = {"tokenizer": tokenizer, "block_size": 64}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def tiny_gpt2(vocab_size: int = 50257, block_size: int = 64, bias: bool = True) -> GPT2:
    return sharpen(
        GPT2(
            GPT2Config(
                block_size=block_size,
                vocab_size=vocab_size,
                n_layer=2,
                n_head=2,
                n_embd=32,
                bias=bias,
            )
        )
    )


def write_bpe_file(path: Path) -> Path:
    """A Llama 3 style tokenizer.model: the 256 bytes plus a few merges."""
    merges = [
        b"he",
        b"ll",
        b"hell",
        b"hello",
        b" w",
        b"or",
        b" wor",
        b"ld",
        b" world",
        b"th",
        b" th",
        b"e ",
    ]
    tokens = [bytes([b]) for b in range(256)] + merges
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    return path


@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_medlm_ckpt(tmp_path_factory.mktemp("ckpt") / "last.ckpt", tiny_gpt2())


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta's layout: params.json, consolidated.00.pth and tokenizer.model (268 ranks + 256
    specials)."""
    d = tmp_path_factory.mktemp("meta")
    write_bpe_file(d / "tokenizer.model")
    params = {
        "dim": 32,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "vocab_size": 524,
        "multiple_of": 16,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_seq_len": 64,
    }
    net = sharpen(
        Llama(
            LlamaConfig(
                vocab_size=524,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_kv_head=2,
                multiple_of=16,
                block_size=64,
            )
        )
    )
    torch.save(net.state_dict(), d / "consolidated.00.pth")
    (d / "params.json").write_text(json.dumps(params))
    return d


@pytest.fixture(scope="module")
def hf_llama_gpt2_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers Llama over GPT-2's vocabulary, without tokenizer files."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf_llama")
    LlamaForCausalLM(
        HFLlamaConfig(
            vocab_size=50257,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    ).save_pretrained(d)
    return d


def run_main(
    main: Callable[[list[str]], None], args: list, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """A console script's ``main`` in this process: exit status, stdout, stderr."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    return run_main(cli.main, args, capsys)


def greedy_text(model: torch.nn.Module, prompt: str, n: int) -> str:
    """The reference: generate() on GPT-2 tokens, cut at <|endoftext|>."""
    tok = load_tokenizer("gpt2")
    out = generate(model, [tok.encode(prompt)], n, temperature=0, eos_id=tok.eot_id)[0]
    return tok.decode([t for t in out if t != tok.eot_id])


# ----------------------------------------------------------------------------------------------
# The command line


class _Recorder:
    """A stdout that notes how many tokens had been sampled at each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int]] = []
        self.steps = 0

    def write(self, s: str) -> int:
        self.writes.append((s, self.steps))
        return len(s)

    def flush(self) -> None:
        pass


def test_checkpoint_streams_tokens_as_they_are_generated(
    gpt2_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    sample = generation.sample_logits

    def counting(*args, **kwargs):
        recorder.steps += 1
        return sample(*args, **kwargs)

    monkeypatch.setattr(generation, "sample_logits", counting)
    monkeypatch.setattr(sys, "stdout", recorder)
    cli.main([str(gpt2_ckpt), "--prompt", PROMPT, "--max-new-tokens", "16", "--temperature", "0"])
    text = "".join(s for s, _ in recorder.writes)
    assert text == PROMPT + greedy_text(load_network(gpt2_ckpt), PROMPT, 16) + "\n"
    # written piece by piece while the tokens were sampled, not all at the end
    during = {steps for s, steps in recorder.writes if s.strip() and steps < 16}
    assert len(during) >= 5, recorder.writes


def test_checkpoint_sampling_settings_and_no_cache(
    gpt2_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    base = [gpt2_ckpt, "--prompt", PROMPT, "--max-new-tokens", "12"]
    code, cached, _ = run_cli(base + ["--temperature", "0"], capsys)
    assert code == 0
    assert run_cli(base + ["--temperature", "0", "--no-cache"], capsys)[1] == cached
    sampled = [
        run_cli(
            base + ["--temperature", "1.0", "--top-k", "50", "--top-p", "0.9", "--seed", str(s)],
            capsys,
        )[1]
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1] != sampled[2]
    code, only_new, _ = run_cli(base + ["--temperature", "0", "--no-echo"], capsys)
    assert PROMPT + only_new == cached


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights(
    gpt2_ckpt: Path, dtype: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dtype: the model generates in that dtype (the same text with and without the cache)."""
    seen = []
    real = generation.last_logits

    def spy(model, *args, **kwargs):
        seen.append(next(model.parameters()).dtype)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(generation, "last_logits", spy)
    base = [gpt2_ckpt, "--prompt", PROMPT, "--max-new-tokens", "6", "--temperature", "0"]
    code, cached, err = run_cli(base + ["--dtype", dtype], capsys)
    assert code == 0, err
    assert set(seen) == {getattr(torch, dtype)}
    assert run_cli(base + ["--dtype", dtype, "--no-cache"], capsys)[1] == cached
    assert cached.startswith(PROMPT) and len(cached) > len(PROMPT) + 1


def test_generator_refuses_an_unknown_dtype(gpt2_ckpt: Path) -> None:
    with pytest.raises(ConfigError, match="dtype: 'half' is not one of float32, bfloat16"):
        Generator.build(gpt2_ckpt, None, 32, 1, dtype="half")


@pytest.mark.slow
def test_compiled_decoding_gives_the_same_text(
    gpt2_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    base = [gpt2_ckpt, "--prompt", PROMPT, "--prompt", "Aspirin", "--max-new-tokens", "8"]
    base += ["--temperature", "0"]
    code, plain, _ = run_cli(base, capsys)
    code, compiled, err = run_cli(base + ["--compile"], capsys)
    assert code == 0, err
    assert compiled == plain


def test_stop_string_ends_the_output_before_it(
    gpt2_ckpt: Path, capsys: pytest.CaptureFixture
) -> None:
    full = greedy_text(load_network(gpt2_ckpt), PROMPT, 20)
    stop = full[6:9]
    code, out, _ = run_cli(
        [
            gpt2_ckpt,
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "20",
            "--temperature",
            "0",
            "--stop",
            "@@@never",
            "--stop",
            stop,
            "--no-echo",
        ],
        capsys,
    )
    assert code == 0 and out == full[: full.find(stop)] + "\n"


def test_hf_directory_with_a_prompt_file(
    tiny_hf_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = ["Aspirin is used to treat", "Question: Does smoking cause cancer?", "Diabetes"]
    path = tmp_path / "prompts.txt"
    path.write_text(f"{prompts[0]}\n\n{prompts[1]}\n{prompts[2]}\n")
    code, out, err = run_cli(
        [
            tiny_hf_gpt2,
            "--prompt-file",
            path,
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
            "--batch-size",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    model = GPT2.from_pretrained(tiny_hf_gpt2)
    expected = [p + greedy_text(model, p, 6) for p in prompts]
    assert out == f"\n{cli.SEPARATOR}\n".join(expected) + "\n"


def test_hf_llama_with_gpt2_vocabulary(
    hf_llama_gpt2_vocab: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(
        [hf_llama_gpt2_vocab, "--prompt", PROMPT, "--max-new-tokens", "5", "--temperature", "0"],
        capsys,
    )
    assert code == 0, err
    loaded = load_model(hf_llama_gpt2_vocab)
    model, tok = loaded.net, loaded.tokenizer
    assert isinstance(model, Llama) and tok.name == "gpt2"
    assert out == PROMPT + greedy_text(model, PROMPT, 5) + "\n"


def test_meta_directory_with_its_tokenizer(meta_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        meta_dir,
        "--prompt",
        "hello world",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--no-echo",
    ]
    code, out, err = run_cli(args + ["--tokenizer", meta_dir / "tokenizer.model"], capsys)
    assert code == 0, err
    assert run_cli(args, capsys)[1] == out  # found beside params.json
    model = Llama.from_meta(meta_dir).eval()
    bos = 268  # <|begin_of_text|> after the 268 ranks
    ids = generate(model, [[bos, 259, 264]], 8, temperature=0, stop_sequences=[[269], [277]])[
        0
    ]  # hello, " world"
    assert (
        out
        == Llama3Tokenizer(meta_dir / "tokenizer.model").decode(
            [t for t in ids if t not in (269, 277)]
        )
        + "\n"
    )


def _meta_missing_weights(meta_dir: Path, tmp: Path) -> list:
    (tmp / "m").mkdir()
    (tmp / "m" / "params.json").write_text((meta_dir / "params.json").read_text())
    return [tmp / "m", "--prompt", "hi"]


def _meta_bad_field(meta_dir: Path, tmp: Path) -> list:
    d = tmp / "m"
    d.mkdir()
    for name in ("consolidated.00.pth", "tokenizer.model"):
        (d / name).write_bytes((meta_dir / name).read_bytes())
    (d / "params.json").write_text(
        json.dumps({**json.loads((meta_dir / "params.json").read_text()), "n_heads": "4"})
    )
    return [d, "--prompt", "hi"]


def _meta_no_tokenizer(meta_dir: Path, tmp: Path) -> list:
    d = tmp / "m"
    d.mkdir()
    for name in ("consolidated.00.pth", "params.json"):
        (d / name).write_bytes((meta_dir / name).read_bytes())
    return [d, "--prompt", "hi"]


def _not_a_model_dir(meta_dir: Path, tmp: Path) -> list:
    return [tmp, "--prompt", "hi"]


def _hf_unknown_type(meta_dir: Path, tmp: Path) -> list:
    (tmp / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return [tmp, "--prompt", "hi"]


def _hf_bad_json(meta_dir: Path, tmp: Path) -> list:
    (tmp / "config.json").write_text('{"model_type": "gpt2",')
    return [tmp, "--prompt", "hi"]


def _hf_no_weights(meta_dir: Path, tmp: Path) -> list:
    (tmp / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    return [tmp, "--prompt", "hi"]


def _not_medlm_ckpt(meta_dir: Path, tmp: Path) -> list:
    torch.save({"weights": torch.zeros(2)}, tmp / "x.ckpt")
    return [tmp / "x.ckpt", "--prompt", "hi"]


def _classifier_ckpt(meta_dir: Path, tmp: Path) -> list:
    from medlm.models.classifier import SequenceClassifier

    write_medlm_ckpt(tmp / "clf.ckpt", SequenceClassifier(tiny_gpt2(vocab_size=96), num_labels=2))
    return [tmp / "clf.ckpt", "--prompt", "hi"]


def _garbage_ckpt(meta_dir: Path, tmp: Path) -> list:
    (tmp / "x.ckpt").write_bytes(b"not a checkpoint")
    return [tmp / "x.ckpt", "--prompt", "hi"]


def _wrong_tokenizer(meta_dir: Path, tmp: Path) -> list:
    return [meta_dir, "--tokenizer", "gpt2", "--prompt", "hi"]


def _empty_prompt_file(meta_dir: Path, tmp: Path) -> list:
    (tmp / "p.txt").write_text("\n  \n")
    return [meta_dir, "--prompt-file", tmp / "p.txt"]


def _binary_prompt_file(meta_dir: Path, tmp: Path) -> list:
    (tmp / "p.txt").write_bytes(b"\xff\xfe\x00abc")
    return [meta_dir, "--prompt-file", tmp / "p.txt"]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda m, t: [t / "missing.ckpt", "--prompt", "hi"],
            "missing.ckpt: no such checkpoint file or model directory",
        ),
        (_meta_missing_weights, "no consolidated.00.pth"),
        (_meta_bad_field, "params.json: field 'n_heads' must be int"),
        (_meta_no_tokenizer, "no tokenizer.model beside params.json"),
        (_not_a_model_dir, "not a model directory"),
        (_hf_unknown_type, "model_type 'bert' is not one medlm runs"),
        (_hf_bad_json, "config.json: malformed JSON"),
        (_hf_no_weights, "no weights"),
        (_not_medlm_ckpt, "not a medlm checkpoint (no 'medlm_network' entry)"),
        (_classifier_ckpt, "holds a SequenceClassifier, not a causal language model"),
        (
            _garbage_ckpt,
            "cannot be read as a weights-only checkpoint: truncated, or not a torch file",
        ),
        (_wrong_tokenizer, "tokenizer gpt2 has 50257 tokens but the model"),
        (lambda m, t: [m, "--prompt-file", t / "nope.txt"], "nope.txt: prompt file not found"),
        (_empty_prompt_file, "no prompts"),
        (_binary_prompt_file, "not UTF-8"),
        (
            lambda m, t: [m, "--prompt", "hi", "--max-new-tokens", "100"],
            "that is 103 > max_seq_len 64",
        ),
        (
            lambda m, t: [
                m,
                "--prompt",
                "hi",
                "--prompt",
                "hello " * 40,
                "--batch-size",
                "1",
                "--max-new-tokens",
                "8",
            ],
            "prompt 1 has 81 tokens; with max_gen_len 8 that is 89 > max_seq_len 64",
        ),
        (
            lambda m, t: [m, "--prompt", "hi", "--max-seq-len", "65"],
            "max_seq_len: 65 exceeds the model's context of 64",
        ),
        (
            lambda m, t: [m, "--prompt", "hi", "--max-new-tokens", "4", "--top-p", "1.5"],
            "top_p: 1.5 is not in (0, 1]",
        ),
        (
            lambda m, t: [m, "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "-1"],
            "temperature: -1.0 is not a number >= 0",
        ),
        (
            lambda m, t: [m, "--prompt", "hi", "--max-new-tokens", "4", "--top-k", "0"],
            "top_k: 0 is not a positive integer",
        ),
        (lambda m, t: [m, "--prompt", "hi", "--batch-size", "0"], "--batch-size: 0"),
        (
            lambda m, t: [m, "--prompt", "hi", "--device", "gpu0"],
            "device: 'gpu0' is not a torch device",
        ),
        (lambda m, t: [m], "one of the arguments --prompt --prompt-file is required"),
        (lambda m, t: [m, "--prompt", "hi", "--max-new-tokens", "ten"], "invalid int value: 'ten'"),
        (lambda m, t: [m, "--prompt", "hi", "--dtype", "fp8"], "invalid choice: 'fp8'"),
        (
            lambda m, t: [m, "--prompt", "hi", "--compile", "--no-cache"],
            "--compile decodes with a static KV cache; it cannot go with --no-cache",
        ),
    ],
    ids=[
        "missing-ckpt",
        "meta-no-weights",
        "params-wrong-field",
        "meta-no-tokenizer",
        "not-a-model-dir",
        "hf-unknown-type",
        "hf-bad-json",
        "hf-no-weights",
        "not-medlm-ckpt",
        "classifier-ckpt",
        "garbage-ckpt",
        "wrong-tokenizer",
        "missing-prompt-file",
        "empty-prompt-file",
        "binary-prompt-file",
        "beyond-context",
        "second-batch-too-long",
        "max-seq-len",
        "top-p",
        "temperature",
        "top-k",
        "batch-size",
        "device",
        "no-prompt",
        "not-an-int",
        "dtype",
        "compile-no-cache",
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    make_args, message: str, meta_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(make_args(meta_dir, tmp_path), capsys)
    assert code == 2
    assert out == ""  # nothing echoed before the error
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_console_script_streams_and_reports_errors(gpt2_ckpt: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("medlm-generate")
    ok = subprocess.run(
        [exe, gpt2_ckpt, "--prompt", PROMPT, "--max-new-tokens", "8", "--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == PROMPT + greedy_text(load_network(gpt2_ckpt), PROMPT, 8) + "\n"
    bad = subprocess.run(
        [exe, tmp_path / "nope.ckpt", "--prompt", "x"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")


# ----------------------------------------------------------------------------------------------
# The Generator API


def test_generator_text_completion_meta_shape(meta_dir: Path) -> None:
    g = Generator.build(meta_dir, meta_dir / "tokenizer.model", max_seq_len=48, max_batch_size=3)
    prompts = ["hello world", "the", "The patient was diagnosed with"]
    results = g.text_completion(prompts, max_gen_len=6, temperature=0.7, top_p=0.9)
    assert isinstance(results, list) and len(results) == 3
    assert all(set(r) == {"generation"} and isinstance(r["generation"], str) for r in results)
    greedy = g.text_completion(prompts, max_gen_len=6, temperature=0)
    assert greedy == g.text_completion(prompts, max_gen_len=6, temperature=0, use_cache=False)
    echoed = g.text_completion(prompts, max_gen_len=6, temperature=0, echo=True)
    for prompt, plain, full in zip(
        prompts, greedy, echoed
    ):  # Meta's echo: the prompt's tokens, bos included
        assert full["generation"] == "<|begin_of_text|>" + prompt + plain["generation"]


def test_generator_greedy_matches_generate_on_a_checkpoint(gpt2_ckpt: Path) -> None:
    g = Generator.build(gpt2_ckpt, None, max_seq_len=None, max_batch_size=2)
    assert g.max_seq_len == 64
    prompts = [PROMPT, "Aspirin"]
    out = g.text_completion(prompts, temperature=0, max_gen_len=10)
    model = load_network(gpt2_ckpt)
    assert [r["generation"] for r in out] == [greedy_text(model, p, 10) for p in prompts]
    # max_gen_len None fills max_seq_len after the longest prompt
    g = Generator.build(gpt2_ckpt, "gpt2", max_seq_len=20, max_batch_size=1)
    [r] = g.text_completion([PROMPT], temperature=0)
    assert r["generation"] == greedy_text(
        model, PROMPT, 20 - len(load_tokenizer("gpt2").encode(PROMPT))
    )


def test_generator_seed_reproduces_the_sequence_of_calls(gpt2_ckpt: Path) -> None:
    def calls(seed: int) -> list:
        g = Generator.build(gpt2_ckpt, None, 64, 2, seed=seed)
        return [
            g.text_completion([PROMPT, "Aspirin"], temperature=1.0, max_gen_len=8) for _ in range(2)
        ]

    first, again, other = calls(1), calls(1), calls(2)
    assert first == again
    assert first[0] != first[1]  # a second call samples afresh
    assert other != first


def test_generator_streams_every_row_with_stops(gpt2_ckpt: Path) -> None:
    g = Generator.build(gpt2_ckpt, None, 64, 4, seed=3)
    prompts = [PROMPT, "Aspirin", "Question:", ""]  # "" starts from <|endoftext|>
    full = g.text_completion(prompts, temperature=0, max_gen_len=16)
    stops = [full[0]["generation"][4:6], full[2]["generation"][5:8]]
    pieces: dict[int, list[str]] = {i: [] for i in range(4)}
    out = g.text_completion(
        prompts,
        temperature=0,
        max_gen_len=16,
        stop=stops,
        on_text=lambda row, piece: pieces[row].append(piece),
    )
    for i, (r, ref) in enumerate(zip(out, full)):
        text = ref["generation"]
        cut = min([j for j in (text.find(s) for s in stops) if j >= 0], default=len(text))
        assert r["generation"] == text[:cut]
        assert "".join(pieces[i]) == r["generation"]  # the stream spells out the result
    assert len(pieces[1]) > 3  # piece by piece


def test_generator_limits_are_clear_errors(gpt2_ckpt: Path) -> None:
    g = Generator.build(gpt2_ckpt, None, max_seq_len=32, max_batch_size=2)
    with pytest.raises(ConfigError, match="3 prompts > max_batch_size 2"):
        g.text_completion(["a", "b", "c"], max_gen_len=4)
    n = len(load_tokenizer("gpt2").encode(PROMPT))
    with pytest.raises(
        ConfigError,
        match=rf"prompt 1 has {n} tokens; with max_gen_len 30 that is {n + 30} > max_seq_len 32",
    ):
        g.text_completion(["a", PROMPT], max_gen_len=30)
    with pytest.raises(ConfigError, match="leaves no room to generate within max_seq_len 32"):
        g.text_completion([" the" * 32])
    with pytest.raises(
        ConfigError, match="max_seq_len: 65 exceeds the model's context of 64 tokens"
    ):
        Generator.build(gpt2_ckpt, None, max_seq_len=65, max_batch_size=1)
    with pytest.raises(ConfigError, match="max_batch_size: 0"):
        Generator.build(gpt2_ckpt, None, max_seq_len=8, max_batch_size=0)


class _ByteTokenizer(Tokenizer):
    """Tokens that are byte strings of our choosing: half characters and stop strings on demand."""

    def __init__(self, pieces: dict[int, bytes], stop_ids: tuple[int, ...]) -> None:
        self.pieces, self.stop_ids = pieces, stop_ids

    def decode(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _byte_tokenizer(pieces: dict[int, bytes], stop_ids: tuple[int, ...] = (0,)) -> Tokenizer:
    return _ByteTokenizer(pieces, stop_ids)


def test_streamed_text_never_takes_anything_back() -> None:
    # 1 "ab", 2 "\n", 3 "c", 4/5 the two halves of "✓", 6 "\nX"
    tok = _byte_tokenizer({1: b"ab", 2: b"\n", 3: b"c", 4: b"\xe2\x9c", 5: b"\x93", 6: b"\nX"})
    sent: list[str] = []
    row = _RowText(tok, ["\n\n", "END"], sent.append)
    for t in (1, 2):
        row.add(t)
    assert sent == ["ab"]  # "\n" might begin "\n\n": held back
    row.add(3)
    row.add(4)
    assert "".join(sent) == "ab\nc"  # half a character is held back
    row.add(5)
    row.add(6)  # "\nX": no stop string completed
    assert "".join(sent) == "ab\nc✓\nX" and not row.done
    row.add(2)
    row.add(2)  # "\n\n" completes: the row ends before it
    assert row.done and row.text == "ab\nc✓\nX" and "".join(sent) == row.text
    row.add(1)  # a done row ignores what comes after
    assert row.text == "ab\nc✓\nX"

    sent.clear()
    row = _RowText(tok, ["END"], sent.append)
    row.add(1)
    row.add(0)  # a stop token ends the row and is not text
    assert row.done and row.text == "ab" and sent == ["ab"]


def test_diverged_checkpoint_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    net = tiny_gpt2()
    with torch.no_grad():
        net.lm_head.weight.fill_(float("nan"))  # what a run that diverged leaves in its weights
    ckpt = write_medlm_ckpt(tmp_path / "nan.ckpt", net)
    for temperature in ("0", "0.8"):
        args = [ckpt, "--prompt", PROMPT, "--max-new-tokens", "8", "--temperature", temperature]
        code, out, err = run_cli(args, capsys)
        assert code == 2 and out == "", err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("error: the model gave nan next-token logits in batch row 0"), err
