"""Generation speed: medlm's ``generate`` against transformers' ``generate``, and against the
machine's memory-bandwidth ceiling.

Both libraries run the same weights: a GPT-2 124M-shaped model (and, with ``--models gpt2,llama``,
a Llama of similar size) with random weights, built offline by transformers, saved and loaded into
medlm. Same prompts, greedy, exactly ``--new-tokens`` new tokens (no end-of-text stop), float32 on
the CPU under ``torch.inference_mode``. Each timing is the median of ``--repeats`` runs after a
warm-up run, every way once per round so that a busy machine slows them alike; the greedy tokens of
the ways are compared too.

The ways: ``medlm`` (KV cache; the output layer on the last position only; weights packed for the
batch where that pays), ``medlm, unpacked`` (the same without packed weights), ``medlm, static
cache`` (the fixed-shape cache that ``compile`` captures, run eagerly), optionally ``medlm, no
cache`` and ``medlm, compiled`` (``torch.compile`` of the static step; compilation is in the
warm-up run), and ``transformers generate``.

The ceiling: decoding one token at batch 1 reads every weight once, so it cannot be faster than
memory bandwidth / bytes of weights read per token (the output layer and the blocks; an embedding
table only where it is also the output layer). The bandwidth is measured here, with the same
threads, in every round: the best of a copy of a 1 GiB float32 tensor (bytes read + written) and
a sum over it (bytes read); the median over rounds is used.

    make bench                                                     # GPT-2, batch 1 and 8, 1 thread
    .venv/bin/python benchmarks/bench_generate.py --threads 1 --batch-sizes 1,8 --repeats 5
    .venv/bin/python benchmarks/bench_generate.py --models gpt2,llama --no-cache --compile

Last, a table of one decoding step's linear layers (GPT-2 124M's weights) with and without packed
weights, per batch size: where packing starts to pay.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

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
REFERENCE = "transformers generate"


def build_models(name: str, directory: Path) -> tuple[nn.Module, nn.Module]:
    """(medlm model, transformers model) with the same random weights."""
    import transformers

    torch.manual_seed(0)
    if name == "gpt2":  # GPT-2 small, 124M
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    elif name == "llama":  # 12 layers of 768, 12 query / 4 key-value heads, SwiGLU 2048: 153M
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


def bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights that decoding one token reads: every parameter once, except embedding
    tables (one row each) unless a table is also a linear layer's weight (GPT-2's tied head)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - linear
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in embedding)


def bandwidth() -> float:
    """Bytes per second: the best of copying a 1 GiB float32 tensor (read + write) and summing
    it (read), each the best of 3 after a first touch."""
    x = torch.ones(2**28)  # 1 GiB, beyond any cache
    y = torch.empty_like(x)
    y.copy_(x)
    size = x.numel() * x.element_size()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        y.copy_(x)
        best = max(best, 2 * size / (time.perf_counter() - start))
        start = time.perf_counter()
        x.sum()
        best = max(best, size / (time.perf_counter() - start))
    return best


def timed(fn: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(name: str, batch: int, args: argparse.Namespace, directory: Path) -> dict:
    ours, hf = build_models(name, directory)
    prompt = load_tokenizer("gpt2").encode(PROMPT)[: args.prompt_tokens]
    prompts = [prompt] * batch
    n = args.new_tokens
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def medlm(**kw) -> Callable[[], list[list[int]]]:
        return lambda: generate(ours, prompts, n, temperature=0, **kw)

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

    ways = {
        "medlm": medlm(),
        "medlm, unpacked": medlm(packed=False),
        "medlm, static cache": medlm(static_cache=True),
        REFERENCE: transformers_generate,
    }
    if args.no_cache:
        ways["medlm, no cache"] = medlm(use_cache=False)
    if args.compile:
        ways["medlm, compiled"] = medlm(compile=True)
    times: dict[str, list[float]] = {w: [] for w in ways}
    outputs: dict[str, list[list[int]]] = {}
    bandwidths = []
    with torch.inference_mode():
        for way, fn in ways.items():  # warm-up (and compilation)
            if way != "medlm, no cache":
                fn()
        for _ in range(args.repeats):
            bandwidths.append(bandwidth())
            for way, fn in ways.items():
                seconds, out = timed(fn)
                times[way].append(seconds)
                outputs.setdefault(way, out)
    weight_bytes = bytes_per_token(ours)
    bw = statistics.median(bandwidths)
    return {
        "model": name,
        "batch": batch,
        "params": sum(p.numel() for p in hf.parameters()),
        "tok_s": {w: batch * n / statistics.median(t) for w, t in times.items()},
        "runs": {w: [batch * n / s for s in t] for w, t in times.items()},
        "same_tokens": {w: out == outputs[REFERENCE] for w, out in outputs.items()},
        "bandwidth": bw,
        "weight_bytes": weight_bytes,
        "ceiling": bw / weight_bytes,  # tokens/s at batch 1
    }


def packing_table(model: nn.Module, batches: list[int], repeats: int = 7) -> None:
    """One decoding step's linear layers, on the model's own weights, through ``F.linear`` and
    through the weights packed for the batch (``medlm.models.packed_linear``), alternating: where
    packing starts to pay (``packed_linear.MIN_BATCH``)."""
    import torch.nn.functional as F

    from medlm.models import packed_linear

    if not packed_linear.available():
        print("\npacked weights: this torch has no MKL packed linear ops")
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    print(
        f"\none decoding step's {len(linears)} linear layers (median of {repeats}, alternating; "
        f"packed_linear.MIN_BATCH = {packed_linear.MIN_BATCH})"
    )
    print(
        "| batch | F.linear ms | packed ms | F.linear / packed | packing ms | steps to repay |"
        "\n|---:|---:|---:|---:|---:|---:|"
    )
    with torch.inference_mode():
        for batch in batches:
            xs = [torch.randn(batch, m.in_features) for m in linears]
            start = time.perf_counter()
            packed = [torch.ops.mkl._mkl_reorder_linear_weight(m.weight, batch) for m in linears]
            pack = time.perf_counter() - start

            def plain(xs: list = xs) -> None:
                for m, x in zip(linears, xs):
                    F.linear(x, m.weight, m.bias)

            def fast(xs: list = xs, packed: list = packed, batch: int = batch) -> None:
                for m, x, w in zip(linears, xs, packed):
                    torch.ops.mkl._mkl_linear(x, w, m.weight, m.bias, batch)

            plain(), fast()
            t_plain, t_fast = [], []
            for _ in range(repeats):
                t_plain.append(timed(plain)[0])
                t_fast.append(timed(fast)[0])
            a, b = statistics.median(t_plain), statistics.median(t_fast)
            repay = f"{pack / (a - b):.1f}" if a > b else "never"
            print(
                f"| {batch} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f} | {pack * 1e3:.0f} | "
                f"{repay} |"
            )


def report(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        "\n| model | batch | way | tokens/s | vs transformers | of the batch-1 ceiling | runs |"
        "\n|---|---:|---|---:|---:|---:|---|"
    )
    for r in rows:
        ref = r["tok_s"][REFERENCE]
        label = f"{r['model']} ({r['params'] / 1e6:.0f}M)"
        for way, tok_s in r["tok_s"].items():
            share = f"{tok_s / r['ceiling']:.0%}" if r["batch"] == 1 else ""
            runs = ", ".join(f"{x:.1f}" for x in r["runs"][way])
            print(
                f"| {label} | {r['batch']} | {way} | {tok_s:.1f} | {tok_s / ref:.2f}x | {share} | "
                f"{runs} |"
            )
    print()
    for r in rows:
        if r["batch"] == 1:
            print(
                f"{r['model']}: bandwidth {r['bandwidth'] / 1e9:.1f} GB/s (median of the rounds), "
                f"{r['weight_bytes'] / 1e6:.0f} MB of weights read per token: ceiling "
                f"{r['ceiling']:.1f} tokens/s at batch 1"
            )
    for r in rows:
        same = ", ".join(f"{w}: {s}" for w, s in r["same_tokens"].items() if w != REFERENCE)
        print(f"{r['model']} batch {r['batch']}: greedy tokens equal to transformers' -- {same}")
    print("\nfigures of merit (goal: >= 1.5x transformers at batch 8, >= 60% of the ceiling at 1)")
    for r in rows:
        ours, ref = r["tok_s"]["medlm"], r["tok_s"][REFERENCE]
        extra = f", {ours / r['ceiling']:.0%} of the ceiling" if r["batch"] == 1 else ""
        print(f"  {r['model']} batch {r['batch']}: medlm / transformers {ours / ref:.2f}x{extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2", help="comma-separated: gpt2, llama")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch CPU threads for both libraries (default: torch's, one per core)",
    )
    p.add_argument("--no-cache", action="store_true", help="also time medlm without a KV cache")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument(
        "--skip-packing-table", action="store_true", help="leave out the per-layer packing table"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} "
        f"thread(s), prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, "
        f"float32, median of {args.repeats}; load average before: {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                rows.append(bench(name.strip(), batch, args, Path(tmp)))
    report(rows, args)
    if not args.skip_packing_table:
        with tempfile.TemporaryDirectory() as tmp:
            packing_table(build_models("gpt2", Path(tmp))[0], [1, 2, 3, 4, 8])
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
