"""Generation speed: medlm's ``generate`` with its KV cache, without it, and transformers'
``generate``.

Both libraries run the same weights: a GPT-2 124M-shaped model (and a Llama of similar size) with
random weights, built offline by transformers, saved and loaded into medlm. Same prompts, greedy,
exactly ``--new-tokens`` new tokens (no end-of-text stop), float32 on the CPU under
``torch.inference_mode``. Each timing is the median of ``--repeats`` runs after a warm-up run, the
three ways alternating so that a busy machine slows them alike; the greedy tokens of medlm (cache)
and transformers are compared too.

    .venv/bin/python benchmarks/bench_generate.py                  # both models, 128 new tokens
    .venv/bin/python benchmarks/bench_generate.py --threads 1 --repeats 5 --models gpt2
    --batch-size 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medlm.data.tokenizer import load_tokenizer
from medlm.models.generation import generate
from medlm.models.gpt2 import GPT2
from medlm.models.llama import Llama

PROMPT = (
    "Question: Do preoperative statins reduce atrial fibrillation after coronary artery bypass "
    "grafting? "
    "Context: Atrial fibrillation is a common complication after cardiac surgery and prolongs "
    "hospital stay."
)


def build_models(name: str, directory: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(medlm model, transformers model) with the same random weights."""
    import transformers

    torch.manual_seed(0)
    if name == "gpt2":  # GPT-2 small, 124M
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    elif (
        name == "llama"
    ):  # 12 layers of 768, 12 query / 4 key-value heads, SwiGLU 2048, untied: 153M
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=50257,
                hidden_size=768,
                intermediate_size=2048,
                num_hidden_layers=12,
                num_attention_heads=12,
                num_key_value_heads=4,
                max_position_embeddings=1024,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            )
        )
    else:
        raise SystemExit(f"error: unknown model {name!r} (gpt2, llama)")
    hf.save_pretrained(directory / name)
    ours = (GPT2 if name == "gpt2" else Llama).from_pretrained(directory / name)
    return ours.eval(), hf.eval()


def timed(fn: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, args: argparse.Namespace, directory: Path) -> dict:
    ours, hf = build_models(name, directory)
    prompt = load_tokenizer("gpt2").encode(PROMPT)[: args.prompt_tokens]
    prompts = [prompt] * args.batch_size
    n = args.new_tokens
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def medlm(use_cache: bool) -> Callable[[], list[list[int]]]:
        return lambda: generate(ours, prompts, n, temperature=0, use_cache=use_cache)

    def transformers_generate() -> list[list[int]]:
        out = hf.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            use_cache=True,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=0,
        )
        return out[:, ids.size(1) :].tolist()

    ways = {"medlm, KV cache": medlm(True), "transformers generate": transformers_generate}
    if not args.skip_no_cache:
        ways["medlm, no cache"] = medlm(False)
    times: dict[str, list[float]] = {w: [] for w in ways}
    outputs: dict[str, list[list[int]]] = {}
    with torch.inference_mode():
        for way in (
            "medlm, KV cache",
            "transformers generate",
        ):  # warm-up; no cache runs the same code
            ways[way]()
        for _ in range(args.repeats):
            for way, fn in ways.items():
                seconds, out = timed(fn)
                times[way].append(seconds)
                outputs.setdefault(way, out)
    tokens = args.batch_size * n
    return {
        "model": name,
        "params": sum(p.numel() for p in hf.parameters()),
        "tok_s": {w: tokens / statistics.median(t) for w, t in times.items()},
        "same_tokens": outputs["medlm, KV cache"] == outputs["transformers generate"],
        "cache_equals_no_cache": outputs.get("medlm, no cache", outputs["medlm, KV cache"])
        == outputs["medlm, KV cache"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch CPU threads for both libraries (default: torch's, one per core)",
    )
    p.add_argument(
        "--skip-no-cache", action="store_true", help="leave out the slow run without a KV cache"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} "
        "thread(s), "
        f"batch {args.batch_size}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new "
        "tokens, greedy, "
        f"float32, median of {args.repeats}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench(name.strip(), args, Path(tmp)))
    print("\n| model | way | tokens/s | vs transformers |\n|---|---|---:|---:|")
    for r in rows:
        ref = r["tok_s"]["transformers generate"]
        label = f"{r['model']} ({r['params'] / 1e6:.0f}M)"
        for way, tok_s in r["tok_s"].items():
            print(f"| {label} | {way} | {tok_s:.1f} | {tok_s / ref:.2f}x |")
    for r in rows:
        print(
            f"{r['model']}: greedy tokens of medlm (cache) and transformers identical: "
            f"{r['same_tokens']}; "
            f"medlm cache == no cache: {r['cache_equals_no_cache']}"
        )


if __name__ == "__main__":
    main()
