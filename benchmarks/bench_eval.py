"""PubMedQA scoring speed: the authors' 500 test questions, GPT-2 124M, likelihood mode.

The model is GPT-2 small's architecture (``GPT2(GPT2Config())``, 124M parameters) with random
weights: the cost of scoring does not depend on what the weights are. The questions are the
official PQA-L test split read from ``--data-dir`` (default ``$MEDLM_DATA_DIR/pubmedqa``),
asked in the default template (reasoning-required: question + context, then " yes"/" no"/
" maybe"). Prints the total seconds and questions per second, float32 under ``torch.no_grad``.

``--naive N`` also times the plain way on the first N questions (three forward passes per
question, one per answer, over the whole vocabulary at every position), for comparison.

    python benchmarks/bench_eval.py                       # all 500, every core torch sees
    python benchmarks/bench_eval.py --threads 2 --batch-size 8 --naive 20
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from medlm.data.pubmedqa import LABELS, PubMedQADataModule
from medlm.eval.pubmedqa import score_pubmedqa
from medlm.models.gpt2 import GPT2, GPT2Config


def naive_seconds(model: GPT2, tokenizer, records, device: torch.device) -> float:
    """Three full forward passes per question (prompt + answer), logits at every position."""
    start = time.perf_counter()
    with torch.no_grad():
        for r in records:
            prompt = tokenizer.encode(f"Question: {r.question}\nContext: {r.context}\nDecision:")
            for label in LABELS:
                (answer,) = tokenizer.encode(" " + label)
                ids = (prompt + [answer])[-model.config.block_size :]
                logits = model(torch.tensor([ids], device=device))  # (1, T, vocab)
                torch.log_softmax(logits[0, -2].float(), -1)[answer].item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="a folder holding ori_pqal.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--limit", type=int, default=None, help="score the first N questions")
    parser.add_argument("--setting", default="reasoning_required")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    parser.add_argument(
        "--naive", type=int, default=0, metavar="N", help="also time the plain way on N questions"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    path = args.data_dir or os.path.join(os.environ.get("MEDLM_DATA_DIR", "."), "pubmedqa")
    dm = PubMedQADataModule(path=path)
    records = dm.official_test_split()[: args.limit]
    torch.manual_seed(0)
    model = GPT2(GPT2Config()).to(device).eval()  # GPT-2 124M, random weights
    n_prompt = sum(
        len(dm.tokenizer.encode(f"Question: {r.question}\nContext: {r.context}\nDecision:"))
        for r in records
    )
    print(
        f"GPT-2 124M ({model.num_params(non_embedding=False) / 1e6:.1f}M parameters), {device}, "
        f"{torch.get_num_threads()} threads, {len(records)} questions, {n_prompt:,} prompt "
        f"tokens, batch size {args.batch_size}, {args.setting}"
    )

    start = time.perf_counter()
    result = score_pubmedqa(
        model,
        dm.tokenizer,
        records,
        setting=args.setting,
        batch_size=args.batch_size,
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"scored {len(records)} questions in {seconds:.1f} s: {len(records) / seconds:.2f} "
        f"questions/s, {n_prompt / seconds:,.0f} tokens/s (acc {result.metrics['acc']:.3f} "
        f"with random weights; majority baseline {result.baseline['acc']:.3f})"
    )
    if args.naive:
        subset = records[: args.naive]
        naive = naive_seconds(model, dm.tokenizer, subset, device)
        print(
            f"plain way (3 passes per question, full logits): {len(subset)} questions in "
            f"{naive:.1f} s: {len(subset) / naive:.2f} questions/s"
        )


if __name__ == "__main__":
    main()
