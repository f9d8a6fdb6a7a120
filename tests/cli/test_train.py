"""End-to-end training through the Hydra config tree: experiments, MLflow records, resume, return
value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medlm.training import train
from tests.helpers import compose_train, mlflow_runs
from tests.resume_helpers import straight_and_resumed

pytestmark = pytest.mark.usefixtures("shared_data_dir")
# small batches keep the tests quick: the logits of GPT-2's 50,257-token vocabulary dominate a CPU
# step
SMALL = ["data.batch_size=4", "data.block_size=64", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the module: the runs below tokenise PubMedQA once."""
    return tmp_path_factory.mktemp("token_cache")


def test_biomedgpt_experiment_sets_the_recipe(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=biomedgpt_pubmedqa"])
    assert (
        cfg.model._target_ == "medlm.models.gpt2.GPT2.from_pretrained"
        and cfg.model.pretrained == "gpt2"
    )
    assert (cfg.data.batch_size, cfg.data.block_size, cfg.data.val_fraction) == (16, 128, 0.02)
    assert (cfg.trainer.accumulate_grad_batches, cfg.trainer.max_epochs, cfg.trainer.precision) == (
        32,
        5,
        "bf16-mixed",
    )
    assert (cfg.scheduler.warmup_steps, cfg.scheduler.min_lr_ratio) == (10, 0.1)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.fused) == (1e-5, 0.3, True)
    assert cfg.model.dropout == 0.6


def test_quickstart_loss_falls_and_mlflow_records_the_run(tmp_path: Path, cache_dir: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "experiment=quickstart",
            *SMALL,
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=25",
            "+trainer.limit_val_batches=3",
            "callbacks.samples.max_new_tokens=8",
        ],
        cache_dir=cache_dir,
    )
    best = train(cfg)

    [run] = mlflow_runs(tmp_path)
    assert run["params"]["model.config.n_layer"] == "4" and run["params"]["optim.lr"] == "0.003"
    assert run["tags"]["hydra_job_name"] == "app" and run["tags"]["hydra_job_num"] == "0"
    assert len(run["tags"]["git_commit"]) >= 7 and run["tags"]["best_checkpoint"].endswith(".ckpt")
    train_loss = [v for _, v in run["metrics"]["train/loss"]]
    assert len(train_loss) == 50
    assert sum(train_loss[-5:]) / 5 < sum(train_loss[:5]) / 5 - 1.0, "training loss did not fall"
    val = [v for _, v in run["metrics"]["val/loss"]]
    assert len(val) == 2 and val[1] < val[0]
    assert best == pytest.approx(min(val), rel=1e-5)
    for key in [
        "val/ppl",
        "train/loss_epoch",
        "train/ppl",
        "train/lr",
        "train/tokens_seen",
        "train/tokens_per_sec",
    ]:
        assert key in run["metrics"], key
    artifacts = tmp_path / "mlruns" / "artifacts"
    names = {
        p.relative_to(artifacts).as_posix().split("/", 2)[-1]
        for p in artifacts.rglob("*")
        if p.is_file()
    }
    assert {"config/config.yaml", "config/overrides.yaml", "plots/loss_curve.png"} <= names
    assert sum(n.startswith("samples/epoch_") for n in names) == 2


def test_resume_at_an_epoch_end_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Stopped at the end of its first epoch and resumed (ckpt_path=auto, the same config: a
    resume cannot change the schedule), a run ends as the straight run ends, in one MLflow run."""
    common = [
        "experiment=quickstart",
        *SMALL,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=6",
        "+trainer.limit_val_batches=2",
        "callbacks.samples=null",
    ]
    _, run_b, out_a, out_b = straight_and_resumed(tmp_path, common, stop=6, cache_dir=cache_dir)
    final_a = torch.load(out_a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final_b = torch.load(out_b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert len(run_b["metrics"]["train/loss"]) == 12 and len(run_b["metrics"]["val/loss"]) == 2
    assert run_b["status"] == "FINISHED"
