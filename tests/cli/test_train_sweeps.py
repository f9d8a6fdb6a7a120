"""Sweeps as a user runs them (``medlm-train -m``, in this process): a grid sweep and an Optuna
search, every job an MLflow run named for its overrides under one parent run that records the
sweep's space and its best trial; a failed trial does not stop a search."""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from medlm.cli.train import main
from medlm.utils.sweeps import MLFLOW_PARENT_RUN_ID, PARENT_RUN_FILE
from tests.helpers import SWEEP_TAG, mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")
# a few steps of everything, nothing that does not matter here
SMALL = [
    "data.block_size=64",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
    "callbacks.loss_plot=null",
]


def sweep(
    argv: list[str], root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """``medlm-train -m ARGV`` in this process, from ``root``: exit code, stdout, stderr."""
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["medlm-train", "-m", *argv])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err


def statuses(root: Path) -> dict[str, str]:
    con = sqlite3.connect(root / "mlruns" / "mlflow.db")
    found = dict(con.execute("SELECT run_uuid, status FROM runs"))
    con.close()
    return found


def parent_and_children(root: Path) -> tuple[dict, list[dict]]:
    runs = mlflow_runs(root, parents=True)
    [parent] = [r for r in runs if SWEEP_TAG in r["tags"]]
    children = [r for r in runs if r["tags"].get(MLFLOW_PARENT_RUN_ID) == parent["run_id"]]
    assert len(children) == len(runs) - 1, "every run of the sweep hangs under its parent"
    return parent, children


def last(metric: list[tuple[int, float]]) -> float:
    return metric[-1][1]


def test_a_grid_sweep_names_each_run_and_groups_them_under_one_parent(
    tmp_path, monkeypatch, capsys, token_cache_dir
) -> None:
    argv = [
        "optim.lr=1e-4,3e-4",
        "experiment=quickstart",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        f"paths.cache_dir={token_cache_dir}",
        *SMALL,
    ]
    code, out, err = sweep(argv, tmp_path, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    parent, children = parent_and_children(tmp_path)
    names = sorted(c["tags"]["mlflow.runName"] for c in children)
    assert len(set(names)) == 2
    # only what the sweep varies: the other overrides are every job's, in the parent's name
    assert names == ["quickstart optim.lr=0.0001 #0", "quickstart optim.lr=0.0003 #1"]
    assert sorted(c["tags"]["hydra_job_num"] for c in children) == ["0", "1"]
    sweep_dirs = {c["tags"]["sweep_dir"] for c in children}
    assert len(sweep_dirs) == 1 and Path(sweep_dirs.pop()).is_dir()
    assert parent["tags"]["mlflow.runName"].startswith("quickstart sweep optim.lr=1e-4,3e-4")
    assert parent["params"]["search.optim.lr"] == "1e-4,3e-4"
    assert parent["params"]["sweeper"] == "BasicSweeper"
    best = min(last(c["metrics"]["val/loss_best"]) for c in children)
    assert last(parent["metrics"]["val/loss_best"]) == best
    [winner] = [c for c in children if last(c["metrics"]["val/loss_best"]) == best]
    assert parent["tags"]["best_run_id"] == winner["run_id"]
    assert math.isclose(
        float(parent["params"]["best.optim.lr"]), float(winner["params"]["optim.lr"])
    )
    assert set(statuses(tmp_path).values()) == {"FINISHED"}
    sweep_dir = Path(parent["tags"]["sweep_dir"])
    assert (sweep_dir / PARENT_RUN_FILE).read_text() == parent["run_id"]
    assert "sweep: 2 trials ended: 2 completed, 0 failed" in out


def test_an_optuna_search_records_its_trials_and_best_and_survives_a_failed_trial(
    tmp_path, monkeypatch, capsys, token_cache_dir
) -> None:
    # job 0 trains on no batch at all, so it never validates: its trial fails, the others run
    argv = [
        "hparams_search=medquad_alpaca_optuna",
        "hydra.sweeper.n_trials=4",
        "debug=limit",
        "trainer.limit_train_batches=${hydra:job.num}",
        "trainer.limit_val_batches=1",
        "test=false",
        f"paths.cache_dir={token_cache_dir}",
        *SMALL,
    ]
    code, out, err = sweep(argv, tmp_path, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    parent, children = parent_and_children(tmp_path)
    status = statuses(tmp_path)
    finished = [c for c in children if status[c["run_id"]] == "FINISHED"]
    assert len(finished) == 3
    # the failed trial left no run (stopped before one existed) or a FAILED run with its reason
    failed = [c for c in children if c not in finished]
    assert all(status[c["run_id"]] == "FAILED" and c["tags"]["error"] for c in failed)
    assert "error: job #0:" in err
    assert last(parent["metrics"]["trials_completed"]) == 3
    assert last(parent["metrics"]["trials_failed"]) == 1

    for child in finished:  # the value each trial returned is its best validation loss
        assert last(child["metrics"]["val/loss_best"]) == min(
            v for _, v in child["metrics"]["val/loss"]
        )
        assert child["tags"]["mlflow.runName"].startswith("medquad_alpaca optim.lr=")
        assert child["tags"]["mlflow.runName"].endswith(f" #{child['tags']['hydra_job_num']}")
    values = {c["run_id"]: last(c["metrics"]["val/loss_best"]) for c in finished}
    best_id = min(values, key=values.get)
    assert last(parent["metrics"]["val/loss_best"]) == values[best_id]
    assert parent["tags"]["best_run_id"] == best_id
    best = next(c for c in finished if c["run_id"] == best_id)
    for key in ("optim.lr", "optim.weight_decay", "scheduler.warmup_steps", "data.batch_size"):
        assert math.isclose(float(parent["params"][f"best.{key}"]), float(best["params"][key]))
        assert f"{key}={parent['params'][f'best.{key}']}" in parent["tags"]["best_overrides"]

    # the search space and the sampler's settings
    assert parent["params"]["search.optim.lr"] == "tag(log, interval(3e-4, 1e-2))"
    assert parent["params"]["sweeper.sampler._target_"] == "optuna.samplers.TPESampler"
    assert parent["params"]["sweeper.sampler.seed"] == "1337"
    assert parent["params"]["direction"] == "minimize"
    assert status[parent["run_id"]] == "FINISHED"
    artifacts = tmp_path / "mlruns" / "artifacts"
    plots = list(artifacts.rglob(f"{parent['run_id']}/artifacts/sweep/sweep_history.png"))
    assert plots and plots[0].stat().st_size > 0
    assert f"best val/loss (minimize): {values[best_id]:.6g}" in out


def test_a_grid_sweep_whose_only_job_fails_exits_2_and_closes_its_parent(
    tmp_path, monkeypatch, capsys, token_cache_dir
) -> None:
    argv = [
        "trainer.limit_train_batches=0",
        "experiment=quickstart",
        f"paths.cache_dir={token_cache_dir}",
        *SMALL,
    ]
    code, out, err = sweep(argv, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: ")
    parent, children = parent_and_children(tmp_path)
    assert statuses(tmp_path)[parent["run_id"]] == "FAILED"
    assert last(parent["metrics"]["trials_failed"]) == 1
    assert all(statuses(tmp_path)[c["run_id"]] == "FAILED" for c in children)
