"""Training throughput and the memory of the loss: medlm's Lightning path against a plain PyTorch
loop, the chunked loss against the plain one, the compiled network against the uncompiled one.

Throughput (gpt2_tiny, block 128, batch 16 by default): every side trains the same GPT-2 (same
init) on the same PubMedQA blocks in the same order, with the same batch, AdamW param groups,
warm-up/cosine schedule and gradient clipping, timed over the same steps after a warm-up (which
holds the compilation of the compiled side), one run of every side per round; the median of the
rounds is reported. The sides:

- ``plain loop``: a hand-written loop, ``F.cross_entropy`` on the full logits (the reference);
- ``lightning``: ``medlm-train``'s path with its defaults (``module.chunked_loss: true``, the
  divergence guard on: one host sync and a gradient norm per step; ``--no-guard`` leaves it out);
- ``lightning, plain loss``: ``module.chunked_loss=false`` (the reference of the chunked loss);
- ``lightning, compiled``: ``module.compile=true`` (the reference: ``lightning``).

Memory of a training step (GPT-2 124M, block 1024, ``--memory-batch`` sequences, CPU): each path
runs in a fresh process (forward, backward, AdamW step; one warm-up step, then the timed ones,
random tokens) that reports its peak resident memory (``ru_maxrss``: weights, gradients, AdamW
state and the step's activations and logits) and its tokens/s; the paths alternate.

    make bench                                    # both, CPU, float32
    .venv/bin/python benchmarks/bench_train.py --repeats 5 --memory-batch 0     # throughput only
    .venv/bin/python benchmarks/bench_train.py --steps 40 --device cuda --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
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
SIDES = ("plain loop", "lightning", "lightning, plain loss", "lightning, compiled")
# (side, its reference) for the ratios
RATIOS = (
    ("lightning", "plain loop"),
    ("lightning", "lightning, plain loss"),
    ("lightning, compiled", "lightning"),
)


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


def lightning_run(
    args: argparse.Namespace, dm: PubMedQADataModule, chunked_loss: bool, compile: bool
) -> float:
    module = CausalLM(
        make_net(args),
        optimizer_factory(args),
        partial(warmup_cosine, warmup_steps=10, min_lr_ratio=0.1),
        chunked_loss=chunked_loss,
        compile=compile,
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


def run_side(side: str, args: argparse.Namespace, dm: PubMedQADataModule) -> float:
    if side == "plain loop":
        return plain_run(args, dm)
    return lightning_run(
        args, dm, chunked_loss=side != "lightning, plain loss", compile=side.endswith("compiled")
    )


def throughput(args: argparse.Namespace) -> None:
    dm = PubMedQADataModule(block_size=args.block_size, batch_size=args.batch_size, seed=1337)
    dm.prepare_data()
    dm.setup("fit")
    if len(dm.train_dataloader()) < args.warmup + args.steps:
        raise SystemExit(
            f"error: only {len(dm.train_dataloader())} batches per epoch; lower --steps/--warmup"
        )
    sides = [s for s in SIDES if not (args.skip_compile and s.endswith("compiled"))]
    results: dict[str, list[float]] = {s: [] for s in sides}
    for _ in range(args.repeats):  # alternate so that drift in machine load hits every side alike
        for side in sides:
            results[side].append(run_side(side, args, dm))
    print(
        f"\ntraining throughput: gpt2_tiny, block {args.block_size}, batch {args.batch_size}, "
        f"{args.device}, {args.precision}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps x {args.repeats} rounds (median)"
    )
    print(f"{'side':<24}{'tokens/s':>12}   runs")
    for side, runs in results.items():
        print(
            f"{side:<24}{statistics.median(runs):>12,.0f}   " + ", ".join(f"{r:,.0f}" for r in runs)
        )
    for side, ref in RATIOS:
        if side in results and ref in results:
            ratio = statistics.median(results[side]) / statistics.median(results[ref])
            print(f"ratio {side} / {ref}: {ratio:.3f}")


# ------------------------------------------------------------------------- memory of the loss


def memory_child(path: str, batch: int, block: int, steps: int) -> None:
    """One fresh process: GPT-2 124M training steps with the ``path`` loss; prints a JSON line."""
    torch.manual_seed(0)
    net = GPT2(GPT2Config(block_size=block))
    module = CausalLM(net, partial(torch.optim.AdamW), chunked_loss=path == "chunked")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    tokens = torch.randint(0, net.config.vocab_size, (batch, block + 1))
    data = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    start = 0.0
    for step in range(1 + steps):
        if step == 1:
            start = time.perf_counter()
        loss, _ = module.loss(data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"peak": peak, "tok_s": steps * batch * block / seconds, "loss": loss.item()}))


def memory(args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for _ in range(args.memory_repeats):
        for path in results:
            cmd = [sys.executable, __file__, "--memory-child", path]
            cmd += ["--memory-batch", str(args.memory_batch)]
            cmd += ["--memory-block", str(args.memory_block)]
            cmd += ["--memory-steps", str(args.memory_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[path].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\nmemory of a training step: GPT-2 124M, block {args.memory_block}, batch "
        f"{args.memory_batch}, cpu, float32, AdamW; {args.memory_steps} timed step(s) after one, "
        f"x {args.memory_repeats} fresh processes per path (median)"
    )
    print(f"{'loss':<10}{'peak RSS GB':>14}{'tokens/s':>12}   runs (GB; tokens/s)")
    med = {}
    for path, runs in results.items():
        peak = statistics.median(r["peak"] for r in runs)
        tok_s = statistics.median(r["tok_s"] for r in runs)
        med[path] = (peak, tok_s)
        detail = ", ".join(f"{r['peak'] / 1e9:.2f}; {r['tok_s']:.0f}" for r in runs)
        print(f"{path:<10}{peak / 1e9:>14.2f}{tok_s:>12.1f}   {detail}")
    losses = {path: runs[0]["loss"] for path, runs in results.items()}
    (peak_p, tok_p), (peak_c, tok_c) = med["plain"], med["chunked"]
    print(
        f"ratio chunked / plain loss: peak memory {peak_c / peak_p:.3f} "
        f"({(peak_p - peak_c) / 1e9:.2f} GB less), tokens/s {tok_c / tok_p:.3f}; "
        f"last loss plain {losses['plain']:.6f}, chunked {losses['chunked']:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the throughput sides")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled side")
    parser.add_argument(
        "--memory-batch", type=int, default=2, help="sequences per step (0: skip the memory part)"
    )
    parser.add_argument("--no-guard", action="store_true", help="without the divergence guard")
    parser.add_argument("--memory-block", type=int, default=1024)
    parser.add_argument("--memory-steps", type=int, default=1, help="timed steps per process")
    parser.add_argument("--memory-repeats", type=int, default=2, help="processes per path")
    parser.add_argument("--memory-child", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_batch, args.memory_block, args.memory_steps)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    throughput(args)
    if args.memory_batch > 0:
        memory(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
