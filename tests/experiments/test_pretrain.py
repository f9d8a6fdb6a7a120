"""The pre-training experiments end to end at CPU scale, on shards that ``medlm-prepare shards``
makes here from real PubMedQA and MedQuAD text: gpt2_fineweb's global batch in tokens (gradient
accumulation derived), its validation, HellaSwag and checkpoints every N optimizer steps and after
the last, its schedule; llama_medical_pretrain from the medical shards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medlm.cli.prepare import main as prepare_main
from medlm.training import train
from tests.callbacks.test_hellaswag import write_items
from tests.helpers import compose_train, mlflow_runs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_data_dir")]


@pytest.fixture(scope="module")
def medical_shards(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """PubMedQA's abstracts and answers, then MedQuAD's answers, as GPT-2 shards."""
    out = tmp_path_factory.mktemp("medical_shards")
    rc = prepare_main(
        [
            "shards",
            f"pubmedqa:{shared_data_dir / 'pubmedqa'}",
            f"medquad:{shared_data_dir / 'medquad' / 'xml'}",
            str(out),
            "--shard-tokens",
            "200000",
            "--val-tokens",
            "20000",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_composes_the_build_nanogpt_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=gpt2_fineweb", "data.path=/data/fineweb"])
    assert cfg.model.config.block_size == 1024 and cfg.model.config.n_layer == 12
    assert (cfg.data.batch_size, cfg.callbacks.global_batch.tokens_per_step) == (64, 524288)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay) == (6e-4, [0.9, 0.95], 0.1)
    assert (cfg.scheduler.warmup_steps, cfg.scheduler.min_lr_ratio) == (715, 0.1)
    assert (cfg.trainer.max_steps, cfg.trainer.gradient_clip_val) == (19073, 1.0)
    assert (cfg.trainer.precision, cfg.optim.fused, cfg.module.compile) == (
        "bf16-mixed",
        True,
        True,
    )
    assert cfg.callbacks.global_batch.val_every_n_steps == 250
    ddp = compose_train(tmp_path, ["experiment=gpt2_fineweb", "trainer=ddp"])
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.max_steps == 19073


def test_gpt2_fineweb_at_cpu_scale(tmp_path: Path, medical_shards: Path) -> None:
    hellaswag = write_items(tmp_path / "hellaswag_val.jsonl", 6)
    tokens_per_step = 4 * 32 * 3  # 3 micro-batches of 4 x 32 tokens on one process
    cfg = compose_train(
        tmp_path,
        [
            "experiment=gpt2_fineweb",
            f"data.path={medical_shards}",
            "model=gpt2_tiny",
            "data.block_size=32",
            "data.batch_size=4",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "module.compile=false",
            "trainer.max_steps=7",
            "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "scheduler.warmup_steps=2",
            f"callbacks.global_batch.tokens_per_step={tokens_per_step}",
            "callbacks.global_batch.val_every_n_steps=3",
            f"callbacks.hellaswag.path={hellaswag}",
            "callbacks.samples.max_new_tokens=4",
        ],
    )
    train(cfg)
    [run] = mlflow_runs(tmp_path)
    m = run["metrics"]
    assert run["tags"]["accumulate_grad_batches"] == "3"  # what the run used, not the config's 1
    # every optimizer step trained on tokens_per_step tokens
    assert [v for _, v in m["train/tokens_seen"]] == [tokens_per_step * k for k in range(1, 8)]
    # validation and HellaSwag after steps 3, 6 and the last, 7 (Lightning logs step k at k - 1)
    assert [s for s, _ in m["val/loss"]] == [2, 5, 6]
    for name in ("acc", "acc_norm", "acc_norm_bytes"):
        assert [s for s, _ in m[f"hellaswag/{name}"]] == [2, 5, 6]
        assert all(abs(v * 6 - round(v * 6)) < 1e-5 for _, v in m[f"hellaswag/{name}"])  # k of 6
    # warm-up over 2 steps to 6e-4, then cosine to 10 % at step 7
    lrs = [v for _, v in m["train/lr"]]
    assert lrs[:2] == pytest.approx([3e-4, 6e-4])
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 5)) for s in range(2, 7)]
    assert lrs[2:] == pytest.approx([6e-4 * c for c in cosine])
    # a checkpoint after the last step
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 7


def test_llama_medical_pretrain_from_medical_shards(tmp_path: Path, medical_shards: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "experiment=llama_medical_pretrain",
            f"data.path={medical_shards}",
            "data.block_size=64",
            "data.batch_size=8",
            "trainer.accelerator=cpu",
            "trainer.max_steps=16",
            "trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false",
            "callbacks.global_batch.tokens_per_step=512",  # one micro-batch of 8 x 64
            "callbacks.global_batch.val_every_n_steps=8",
            "callbacks.samples.max_new_tokens=8",
        ],
    )
    assert cfg.model._target_ == "medlm.models.llama.Llama"
    train(cfg)
    [run] = mlflow_runs(tmp_path)
    loss = [v for _, v in run["metrics"]["train/loss"]]
    assert len(loss) == 16 and sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 1.0
    assert [s for s, _ in run["metrics"]["val/loss"]] == [7, 15]
    assert run["metrics"]["train/tokens_seen"][-1][1] == 16 * 512
