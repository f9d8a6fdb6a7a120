"""End to end: ``medlm-prepare shards`` on real medical text, then training on the shards, straight
and resumed mid-epoch (bitwise the same)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlm.cli.prepare import main as prepare_main
from medlm.training import train
from tests.helpers import compose_train, mlflow_runs
from tests.resume_helpers import assert_same_run, straight_and_resumed

pytestmark = pytest.mark.usefixtures("shared_data_dir")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    """PubMedQA's 1,000 abstracts and answers as GPT-2 shards of 60k tokens (~352k tokens)."""
    out = tmp_path_factory.mktemp("pubmedqa_shards")
    rc = prepare_main(
        [
            "shards",
            f"pubmedqa:{shared_data_dir / 'pubmedqa'}",
            str(out),
            "--shard-tokens",
            "60000",
            "--val-tokens",
            "20000",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def shard_overrides(shard_dir: Path) -> list[str]:
    return [
        "data=shards",
        f"data.path={shard_dir}",
        "data.block_size=64",
        "data.batch_size=4",
        "model.config.block_size=64",
        "trainer.enable_progress_bar=false",
        "callbacks.samples.max_new_tokens=8",
    ]


def test_training_on_prepared_shards_lowers_the_loss(tmp_path: Path, shard_dir: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            *shard_overrides(shard_dir),
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=40",
            "++trainer.limit_val_batches=5",
            "optim.lr=3e-3",  # quickstart's step size: a tiny model learns in 40 steps
        ],
    )
    train(cfg)
    [run] = mlflow_runs(tmp_path)
    loss = [v for _, v in run["metrics"]["train/loss"]]
    assert len(loss) == 40
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 1.0, "training loss did not fall"
    assert len(run["metrics"]["val/loss"]) == 1
    assert run["params"]["data._target_"] == "medlm.data.shard_datamodule.ShardDataModule"
    samples = list((tmp_path / "run" / "samples").glob("*.md"))
    assert samples and "**Prompt**" in samples[0].read_text()  # openings of validation abstracts


def test_training_on_shards_resumes_mid_epoch_exactly(tmp_path: Path, shard_dir: Path) -> None:
    overrides = [
        *shard_overrides(shard_dir),
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=6",
        "++trainer.limit_val_batches=2",
        "+callbacks.model_checkpoint.every_n_train_steps=4",
        "model.config.resid_dropout=0.1",
        "callbacks.throughput.log_every_n_steps=2",
    ]
    run_a, run_b, out_a, out_b = straight_and_resumed(tmp_path, overrides, stop=10)
    assert_same_run(run_a, run_b, out_a, out_b, steps=12)
