"""Speed of the token-shard pipeline: tokenising into shards, and reading batches while training.

1. Tokenising: the same documents (real medical text: PubMedQA abstracts + answers and MedQuAD
   answers from $MEDLM_DATA_DIR, repeated ``--repeat`` times) encoded
   - by plain tiktoken, ``encode_ordinary`` one document at a time, and ``encode_ordinary_batch``
     with 1 and with all cores' threads (the ceiling: no end-of-text, no arrays, no files);
   - by medlm's shard tokenising (end-of-text + tokens into uint16 arrays, in order) with 1 worker
     and with all cores, in memory;
   - by ``prepare_shards`` end to end (sources read; shards, checksums, manifest written) with 1
     and all workers.
2. Loading: the ShardDataModule's time per training batch (B x T windows from memory-mapped shards,
   collated) against the time of one training step (forward, backward, AdamW) of a small GPT-2 on
   that batch; the target is < 1 %. Also the loader's time for gpt2_fineweb's 64 x 1024 batch.
"of best" compares each rate with the fastest plain tiktoken row (the ceiling).

    make bench
    .venv/bin/python benchmarks/bench_shards.py --repeat 3 --batch-size 16 --block-size 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medlm.data.shard_datamodule import ShardDataModule
from medlm.data.shard_sources import open_sources
from medlm.data.shard_writer import chunks, default_workers, encoded_chunks, prepare_shards
from medlm.data.tokenizer import load_tokenizer
from medlm.models.gpt2 import GPT2, GPT2Config


def best_of(fn, repeats: int) -> tuple[float, object]:
    """The shortest wall time of ``repeats`` calls (and the last result)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def tokenising(texts: list[str], sources: list[str], repeats: int, workers: int) -> None:
    tok = load_tokenizer("gpt2")
    enc = tok._enc
    n_tokens = sum(len(enc.encode_ordinary(t)) + 1 for t in texts)  # + end-of-text each
    chars = sum(len(t) for t in texts)
    print(
        f"\n== tokenising {len(texts):,} documents, {chars / 1e6:.1f} M characters, "
        f"{n_tokens:,} tokens "
        f"(with end-of-text), {workers} cores =="
    )
    rows = []
    t, _ = best_of(lambda: [enc.encode_ordinary(x) for x in texts], repeats)
    rows.append(("tiktoken encode_ordinary, one by one", 1, t))
    for threads in sorted({1, workers}):
        t, _ = best_of(lambda n=threads: enc.encode_ordinary_batch(texts, num_threads=n), repeats)
        rows.append(("tiktoken encode_ordinary_batch", threads, t))
    for w in sorted({1, workers}):

        def medlm_tokens(w: int = w) -> int:
            return sum(len(a) for a, _ in encoded_chunks(chunks(iter(texts), 1 << 18), tok, w))

        t, got = best_of(medlm_tokens, repeats)
        assert got == n_tokens, (got, n_tokens)
        rows.append(("medlm shard tokenising (workers, in memory)", w, t))
    for w in sorted({1, workers}):

        def prepare(w: int = w) -> None:
            with tempfile.TemporaryDirectory() as out:
                prepare_shards(
                    sources, out, shard_tokens=max(1, n_tokens // 8), workers=w, progress=False
                )

        t, _ = best_of(prepare, repeats)
        rows.append(("medlm prepare_shards (read sources, write files)", w, t))
    ceiling = max(n_tokens / t for name, _, t in rows if name.startswith("tiktoken"))
    print(f"{'':47s} {'procs':>5s} {'tokens/s':>12s} {'per proc':>12s} {'of best':>10s}")
    for name, procs, t in rows:
        rate = n_tokens / t
        print(f"{name:47s} {procs:5d} {rate:12,.0f} {rate / procs:12,.0f} {rate / ceiling:10.0%}")


def loader_time(
    out: str, batch_size: int, block_size: int, batches: int, repeats: int
) -> tuple[float, list]:
    """Seconds per batch of the ShardDataModule's training loader (the batches, for training)."""
    dm = ShardDataModule(out, block_size=block_size, batch_size=batch_size)
    dm.setup("fit")
    loader = dm.train_dataloader()
    n = min(batches, len(loader))

    def read_batches() -> list:
        it = iter(loader)
        return [next(it) for _ in range(n)]

    t, got = best_of(read_batches, repeats)
    return t / n, got


def loading(sources: list[str], batch_size: int, block_size: int, steps: int, repeats: int) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        prepare_shards(sources, out, shard_tokens=200_000, val_tokens=20_000, progress=False)
        per_batch, batches = loader_time(out, batch_size, block_size, steps, repeats)
        net = GPT2(
            GPT2Config(block_size=block_size, vocab_size=50257, n_layer=4, n_head=4, n_embd=64)
        )
        opt = torch.optim.AdamW(net.parameters(), lr=3e-4)

        def train_steps() -> None:
            for batch in batches:
                logits = net(batch["input_ids"])
                loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        train_steps()  # warm-up
        t_step, _ = best_of(train_steps, repeats)
        per_step = t_step / len(batches)
        big, _ = loader_time(out, 64, 1024, 4, repeats)
    print(
        f"\n== loading: batch {batch_size} x {block_size} tokens from memory-mapped shards; "
        f"GPT-2 4 layers x 64 (gpt2_tiny), {torch.get_num_threads()} threads =="
    )
    print(f"loader  {per_batch * 1e3:9.3f} ms per batch")
    print(f"train   {per_step * 1e3:9.3f} ms per step (forward, backward, AdamW)")
    print(f"loader / step = {per_batch / per_step:.3%} (target < 1 %)")
    print(f"loader at gpt2_fineweb's micro-batch, 64 x 1024: {big * 1e3:.3f} ms per batch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(
        os.environ.get("MEDLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=[f"pubmedqa:{data / 'pubmedqa'}", f"medquad:{data / 'medquad' / 'xml'}"],
    )
    p.add_argument("--repeat", type=int, default=1, help="repeat the documents this many times")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    texts = [
        t for s in open_sources(args.sources) for t in s.documents() if t.strip()
    ] * args.repeat
    sources = args.sources
    if args.repeat > 1:  # prepare_shards reads files: write the repeated documents as one JSONL
        tmp = Path(tempfile.mkdtemp())
        import json

        (tmp / "docs.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8"
        )
        sources = [str(tmp / "docs.jsonl")]
    tokenising(texts, sources, args.repeats, args.workers)
    loading(sources, args.batch_size, args.block_size, args.steps, args.repeats)


if __name__ == "__main__":
    main()
