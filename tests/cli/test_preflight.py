"""A config mistake is found before anything happens: one ``error:`` line, exit 2, no traceback,
before any data is read, and no run folder and no MLflow store left behind (Hydra made the run
folder before the task ran: it is removed again)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.train_cli import TINY, error_lines, no_run_left, run_folders, run_train
from tests.helpers import mlflow_runs

pytestmark = pytest.mark.usefixtures("shared_data_dir")

# data.path names a file that does not exist: had the data been read first, the error would name
# it instead of the value that is wrong
UNREAD = "data.path=/nonexistent/ori_pqal.json"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["optim.lr=-0.001", UNREAD], "optim.lr: -0.001 is not a positive number"),
        (["optim.lr=0", UNREAD], "optim.lr: 0 is not a positive number"),
        (["optim.betas=[0.9,1.5]", UNREAD], "optim.betas"),
        (["trainer.max_epochs=two", UNREAD], "trainer.max_epochs: 'two' is not a whole number"),
        (["+trainer.max_steps=0", UNREAD], "trainer.max_steps: 0 is not a whole number >= 1"),
        (["trainer.accumulate_grad_batches=0", UNREAD], "trainer.accumulate_grad_batches"),
        (["trainer.limit_train_batches=1.5", UNREAD], "trainer.limit_train_batches: 1.5"),
        (["scheduler.warmup_steps=-1", UNREAD], "scheduler.warmup_steps: -1"),
        (["scheduler.min_lr_ratio=2", UNREAD], "scheduler.min_lr_ratio: 2"),
        (["data.batch_size=0", UNREAD], "data.batch_size"),
        (["data.val_fraction=1.5", UNREAD], "data.val_fraction: 1.5 is not a fraction in (0, 1)"),
        (["seed=abc", UNREAD], "seed: 'abc'"),
        (["+optim.lrr=1e-3", UNREAD], "optim: AdamW.__init__() got an unexpected keyword argument"),
        (["+trainer.max_epoch=3", UNREAD], "trainer: Trainer.__init__() got an unexpected keyword"),
        (["optim.lrr=1e-3"], "Could not override 'optim.lrr'"),
        (["model=gpt5"], "Could not find 'model/gpt5'"),
        (["paths.cache_dir=FILE/cache", UNREAD], "paths.cache_dir: "),
        (["hydra.run.dir=FILE/run"], "hydra.run.dir: "),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_a_config_mistake_is_one_line_and_leaves_no_run(
    args, expected, tmp_path: Path, monkeypatch, capsys
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    under_a_file = any("FILE" in a for a in args)
    args = [a.replace("FILE", str(a_file)) for a in args]
    code, out, err = run_train([*TINY, *args], tmp_path, monkeypatch, capsys)
    assert code == 2, err
    [line] = error_lines(err)
    assert expected in line, line
    assert "Traceback" not in err
    if under_a_file:
        assert f"{a_file} is a file, not a folder" in line
    assert no_run_left(tmp_path), run_folders(tmp_path)
    assert not (tmp_path / ".cache").exists(), "data was read before the config was checked"


def test_a_sweep_job_with_a_bad_value_fails_alone_and_leaves_no_run(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The job with the mistake fails before its data or MLflow run; the sweep goes on (as an
    Optuna search does past a bad sampled value) and ends with exit 2 and the job's reason."""
    code, out, err = run_train(["-m", *TINY, "optim.lr=-1,1e-3"], tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert "error: job #0: optim.lr: -1 is not a positive number" in error_lines(err)
    assert "sweep:   job #0 failed: ConfigError: optim.lr: -1 is not a positive number" in out
    [run] = mlflow_runs(tmp_path)  # job #1's; job #0 never opened one
    assert run["status"] == "FINISHED" and run["params"]["optim.lr"] == "0.001"
    jobs = sorted(p.name for p in tmp_path.glob("logs/*/multiruns/*/*") if p.is_dir())
    assert jobs == ["1", "trials"]  # trials/: the sweep's record of each job


def test_a_run_folder_that_is_already_in_use_is_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    """Only a folder holding nothing but Hydra's own files is removed: a mistake made resuming
    a run never touches that run's folder."""
    run = tmp_path / "logs" / "mine"
    (run / "checkpoints").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    code, out, err = run_train(
        [*TINY, f"hydra.run.dir={run}", "optim.lr=-1"], tmp_path, monkeypatch, capsys
    )
    assert code == 2 and "optim.lr" in error_lines(err)[0]
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints").is_dir()
