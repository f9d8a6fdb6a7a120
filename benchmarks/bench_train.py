"""Training throughput of medlm's Lightning path against a plain PyTorch loop.

Both train the same GPT-2 (same init), on the same PubMedQA blocks in the same order, with the same
batch, AdamW param groups, warm-up/cosine schedule and gradient clipping. Each is timed over the
same steps after a warm-up, alternating runs; the median of the repeats is reported. The Lightning
path runs the divergence guard, on by default in medlm-train (one host sync and a gradient norm
per step); ``--no-guard`` leaves it out, to see what it costs.

    make bench                                   # gpt2_tiny, block 128, batch 16, CPU
    .venv/bin/python benchmarks/bench_train.py --steps 40 --repeats 3 --device cuda --precision
    bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import lightning.pytorch as L
import torch
import torch.nn.functional as F

from medlm.callbacks.divergence import DivergenceGuard
from medlm.data.pubmedqa import PubMedQADataModule
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.modules.causal_lm import CausalLM
from medlm.modules.schedule import warmup_cosine

TINY = dict(block_size=128, vocab_size=50257, n_layer=4, n_head=4, n_embd=64)


class StepTimer(L.Callback):
    """Wall-clock time from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def make_net(args: argparse.Namespace) -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(**{**TINY, "block_size": args.block_size}))


def optimizer_factory(args: argparse.Namespace):
    return partial(
        torch.optim.AdamW,
        lr=3e-3,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        fused=True if args.device == "cuda" else None,
    )


def lightning_run(args: argparse.Namespace, dm: PubMedQADataModule) -> float:
    module = CausalLM(
        make_net(args),
        optimizer_factory(args),
        partial(warmup_cosine, warmup_steps=10, min_lr_ratio=0.1),
    )
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[timer] if args.no_guard else [timer, DivergenceGuard()],
    )
    trainer.fit(module, datamodule=dm)
    return args.steps * args.batch_size * args.block_size / (timer.end - timer.start)


def plain_run(args: argparse.Namespace, dm: PubMedQADataModule) -> float:
    device = torch.device(args.device)
    net = make_net(args).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = optimizer_factory(args)(groups)
    scheduler = warmup_cosine(optimizer, total_steps=args.warmup + args.steps, warmup_steps=10)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"
    )
    net.train()
    start = 0.0
    for step, batch in enumerate(dm.train_dataloader()):
        x, y = batch["input_ids"].to(device), batch["labels"].to(device)
        with autocast:
            logits = net(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step + 1 == args.warmup:
            start = time.perf_counter()
        if step + 1 == args.warmup + args.steps:
            break
    return args.steps * args.batch_size * args.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--no-guard", action="store_true", help="without the divergence guard")
    args = parser.parse_args()

    dm = PubMedQADataModule(block_size=args.block_size, batch_size=args.batch_size, seed=1337)
    dm.prepare_data()
    dm.setup("fit")
    if len(dm.train_dataloader()) < args.warmup + args.steps:
        parser.error(f"only {len(dm.train_dataloader())} batches per epoch; lower --steps/--warmup")
    results: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(args.repeats):  # alternate so that drift in machine load hits both alike
        results["plain"].append(plain_run(args, dm))
        results["lightning"].append(lightning_run(args, dm))
    lit, plain = statistics.median(results["lightning"]), statistics.median(results["plain"])
    print(
        f"\ntraining throughput: gpt2_tiny, block {args.block_size}, batch {args.batch_size}, "
        f"{args.device}, {args.precision}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps x {args.repeats} repeats (median)"
    )
    print(f"{'path':<12}{'tokens/s':>12}   runs")
    for name, runs in results.items():
        print(
            f"{name:<12}{statistics.median(runs):>12,.0f}   " + ", ".join(f"{r:,.0f}" for r in runs)
        )
    print(f"{'ratio':<12}{lit / plain:>12.3f}   lightning / plain")


if __name__ == "__main__":
    main()
