"""Run names: the experiment and the overrides that tell a run apart, the job number in a sweep."""

from __future__ import annotations

from medlm.utils.run_names import MAX_RUN_NAME, distinguishing_overrides, run_name


def test_a_run_is_named_for_its_experiment_and_overrides() -> None:
    assert run_name("quickstart", ["optim.lr=1e-4"]) == "quickstart optim.lr=1e-4"
    assert run_name("quickstart", []) == "quickstart"


def test_a_sweep_job_carries_its_number() -> None:
    assert run_name("quickstart", ["optim.lr=3e-4"], job_num=3) == "quickstart optim.lr=3e-4 #3"


def test_hydra_paths_and_the_experiment_choice_are_left_out() -> None:
    overrides = [
        "experiment=quickstart",
        "hparams_search=medquad_alpaca_optuna",
        "hydra.run.dir=/tmp/x",
        "hydra/launcher=slurm",
        "paths.cache_dir=/tmp/cache",
        "+trainer.limit_val_batches=2",
        "~callbacks.samples",
        "data.batch_size=8",
    ]
    assert distinguishing_overrides(overrides) == [
        "trainer.limit_val_batches=2",
        "~callbacks.samples",
        "data.batch_size=8",
    ]


def test_values_read_short_sampled_floats_and_paths() -> None:
    assert distinguishing_overrides(
        ["optim.lr=0.00044943813987664215", "model.pretrained=/models/hf/gpt2", "seed=123456789"]
    ) == ["optim.lr=0.0004494", "model.pretrained=gpt2", "seed=123456789"]


def test_a_long_name_is_cut_and_keeps_its_job_number() -> None:
    name = run_name("quickstart", [f"tags.t{i}=value{i}" for i in range(60)], job_num=12)
    assert len(name) == MAX_RUN_NAME and name.endswith("... #12")


def test_a_sweep_job_shows_only_the_swept_keys() -> None:
    overrides = ["optim.lr=3e-4", "trainer.max_epochs=1", "+data.x=2"]
    assert run_name("quickstart", overrides, 1, {"optim.lr"}) == "quickstart optim.lr=3e-4 #1"
    assert run_name("quickstart", overrides, 0, {"data.x"}) == "quickstart data.x=2 #0"
