"""What a sweep's jobs return and record, how the sweep picks its best trial, and what its parent
run records of the search space."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

from medlm.errors import ConfigError
from medlm.utils.sweep_callback import search_space, sweep_direction, sweep_params
from medlm.utils.sweep_plot import write_sweep_history
from medlm.utils.sweeps import (
    COMPLETED,
    FAILED,
    Trial,
    TrialFailed,
    best_trial,
    parent_run_id,
    read_trials,
    trial_errors,
    trial_value,
    write_parent_run_id,
    write_trial,
)
from tests.helpers import compose_train


def in_sweep_job(tmp_path: Path, overrides: list[str] | None = None):
    """A composed train config whose Hydra runtime says: job 2 of a sweep."""
    cfg = compose_train(tmp_path, overrides or [])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 2
    HydraConfig().set_config(cfg)
    return cfg


def trial(num: int, value: float | None, status: str = COMPLETED) -> Trial:
    return Trial(job_num=num, overrides=[f"optim.lr={num}"], status=status, value=value)


def test_the_best_trial_follows_the_direction_and_skips_failures() -> None:
    trials = [trial(0, 2.0), trial(1, None, FAILED), trial(2, 1.5), trial(3, 3.0), trial(4, 1.5)]
    assert best_trial(trials, "minimize").job_num == 2  # the first of equals
    assert best_trial(trials, "maximize").job_num == 3
    assert best_trial([trial(0, None, FAILED)], "minimize") is None


def test_trials_and_the_parent_run_id_go_through_the_sweep_folder(tmp_path: Path) -> None:
    assert parent_run_id(tmp_path) is None
    write_parent_run_id(tmp_path, "abc123")
    assert parent_run_id(tmp_path) == "abc123"
    for t in (trial(10, 1.0), trial(2, None, FAILED)):
        write_trial(tmp_path, t)
    assert [t.job_num for t in read_trials(tmp_path)] == [2, 10]


def test_outside_a_sweep_train_returns_its_value_as_it_is(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [])
    assert math.isnan(trial_value(cfg, float("nan"))) and trial_value(cfg, None) is None


@pytest.mark.parametrize("value, says", [(None, "never logged"), (float("nan"), "nan")])
def test_in_a_sweep_a_missing_or_nan_metric_fails_the_trial(tmp_path, value, says) -> None:
    cfg = in_sweep_job(tmp_path)
    with pytest.raises(TrialFailed, match=says):
        trial_value(cfg, value)
    assert trial_value(cfg, 1.25) == 1.25


def test_a_sweep_job_prints_its_user_error_and_hands_it_to_hydra(tmp_path, capsys) -> None:
    in_sweep_job(tmp_path)
    with pytest.raises(ConfigError), trial_errors():  # raised on, not sys.exit
        raise ConfigError("optim.lr: -1 must be > 0")
    assert capsys.readouterr().err == "error: job #2: optim.lr: -1 must be > 0\n"


def test_the_parent_records_the_search_space_the_command_line_wins(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["hparams_search=medquad_alpaca_optuna"])
    with read_write(cfg.hydra):  # as typed: a sweep of one key, a fixed value for another
        cfg.hydra.overrides.task = ["data.batch_size=choice(4,8)", "optim.lr=1e-3", "debug=limit"]
    space = search_space(cfg)
    assert space["data.batch_size"] == "choice(4,8)"
    assert "optim.lr" not in space and space["optim.weight_decay"] == "interval(0.0, 0.2)"
    params = sweep_params(cfg, sweep_direction(cfg))
    assert params["sweeper.sampler.seed"] == "1337" and params["sweeper.n_trials"] == "20"
    assert params["direction"] == "minimize" and params["optimized_metric"] == "val/loss"
    assert params["overrides"] == "data.batch_size=choice(4,8) optim.lr=1e-3 debug=limit"


def test_a_grid_sweep_takes_its_direction_from_the_checkpoint_callback(tmp_path: Path) -> None:
    assert (
        sweep_direction(compose_train(tmp_path, ["experiment=lora_question_pairs"])) == "maximize"
    )
    assert sweep_direction(compose_train(tmp_path, ["experiment=quickstart"])) == "minimize"
    search = compose_train(tmp_path, ["hparams_search=lora_question_pairs_optuna"])
    assert sweep_direction(search) == "maximize"


def test_the_history_plot_is_drawn_with_failed_trials(tmp_path: Path) -> None:
    trials = [trial(0, 2.0), trial(1, None, FAILED), trial(2, 1.5)]
    path = write_sweep_history(trials, "val/loss", "minimize", tmp_path / "h.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
