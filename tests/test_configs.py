"""Every file under conf/ composes, and every experiment runs one batch of everything
(fast_dev_run).

The lists come from the folder, so a new group option or experiment is tested the day it is added;
an experiment whose data or weights cannot be local here must say how it runs offline in OFFLINE.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medlm.cli.prepare import main as prepare_main
from medlm.training import train
from medlm.utils.cli import CONFIG_DIR
from tests.callbacks.test_hellaswag import write_items
from tests.helpers import compose_train

CONF = Path(CONFIG_DIR)
GROUPS = sorted(
    p.relative_to(CONF).as_posix()
    for p in CONF.rglob("*.yaml")
    if p.parent != CONF and p.parent.name != "hydra"
)
# groups of medlm-eval's config (eval.yaml); every other group belongs to medlm-train's (train.yaml)
EVAL_GROUPS = {"benchmark"}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# options that make sense only with others: classification data needs a classifier
COMPANIONS = {
    "data/question_pairs": ["model=gpt2_lora_classifier", "module=classifier"],
    "data/pubmedqa_classification": ["model=gpt2_lora_classifier", "module=classifier"],
    "model/gpt2_lora_classifier": ["data=question_pairs", "module=classifier"],
    "model/gpt2_linear_probe": ["data=question_pairs", "module=classifier"],
    "module/classifier": ["model=gpt2_lora_classifier", "data=question_pairs"],
}
# the local stand-ins for what an experiment would download: a tiny GPT-2 saved by transformers
NEEDS_WEIGHTS = {
    "biomedgpt_pubmedqa",
    "lora_question_pairs",
    "linear_probe_question_pairs",
    "lora_pubmedqa",
}
# experiments on token shards: shards of real PubMedQA text made by medlm-prepare shards (the
# pretrain_shards fixture), and what makes each CPU-sized; {hellaswag}: hand-made items in
# HellaSwag's format (the test fixture of tests/callbacks, not the benchmark)
ON_SHARDS = {
    "gpt2_fineweb": [
        "data.block_size=64",  # GPT-2 124M as configured, with a 64-token context
        "module.compile=false",
        "callbacks.samples.max_new_tokens=4",  # 124M generates slowly on a CPU
        "callbacks.hellaswag.path={hellaswag}",
    ],
    "llama_medical_pretrain": ["data.block_size=64"],
}


@pytest.fixture(scope="module")
def pretrain_shards(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("pretrain_shards")
    source = f"pubmedqa:{shared_data_dir / 'pubmedqa'}"
    rc = prepare_main(
        ["shards", source, str(out), "--shard-tokens", "100000", "--workers", "1", "--no-progress"]
    )
    assert rc == 0
    return out


def test_every_config_file_is_tested() -> None:
    assert "experiment/quickstart.yaml" in GROUPS and "debug/fdr.yaml" in GROUPS
    assert len(EXPERIMENTS) >= 6


@pytest.mark.parametrize("option", GROUPS)
def test_every_group_option_composes_and_resolves(option: str, tmp_path: Path) -> None:
    group, name = option.removesuffix(".yaml").rsplit("/", 1)  # hydra/launcher/slurm.yaml too
    overrides = [f"{group}={name}", *COMPANIONS.get(f"{group}/{name}", [])]
    if group in EVAL_GROUPS:
        cfg = compose_train(tmp_path, overrides, config_name="eval")
        assert OmegaConf.to_container(cfg, resolve=True)["task_name"] == f"eval_{name}"
        return
    cfg = compose_train(tmp_path, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["task_name"] and resolved["trainer"]["_target_"]


def test_no_experiment_means_each_group_file_speaks_for_itself(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["data=helpsteer"])
    helpsteer = OmegaConf.load(CONF / "data" / "helpsteer.yaml")
    assert (cfg.data.block_size, cfg.data.batch_size) == (
        helpsteer.block_size,
        helpsteer.batch_size,
    )
    assert cfg.task_name == "train" and "limit_train_batches" not in cfg.trainer
    assert (
        cfg.model.config.block_size == cfg.data.block_size
    )  # the model's context follows the data


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(
    experiment: str,
    tmp_path: Path,
    shared_data_dir: Path,
    tiny_hf_gpt2: Path,
    token_cache_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "data.batch_size=2",
        f"paths.cache_dir={token_cache_dir}",
    ]
    if experiment in NEEDS_WEIGHTS:
        overrides.append(f"model.pretrained={tiny_hf_gpt2}")
    if experiment in ON_SHARDS:
        shards = request.getfixturevalue("pretrain_shards")
        hellaswag = write_items(tmp_path / "hellaswag_val.jsonl", 4)
        overrides += [f"data.path={shards}"]
        overrides += [o.format(hellaswag=hellaswag) for o in ON_SHARDS[experiment]]
    train(compose_train(tmp_path, overrides))


SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_space_names_real_keys_and_parses(search: str, tmp_path: Path) -> None:
    """Each searched key exists in the experiment's config, the space is one Optuna takes, and the
    direction agrees with the checkpoint callback that keeps the best of optimized_metric."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    cfg = compose_train(tmp_path, [f"hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler.seed is not None
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert len(space) >= 5 and not fixed
    for key in space:
        assert OmegaConf.select(cfg, key) is not None, f"{search}: {key} is not in the config"
    ckpt = cfg.callbacks.model_checkpoint
    assert ckpt.monitor == cfg.optimized_metric
    assert sweeper.direction == {"min": "minimize", "max": "maximize"}[ckpt.mode]
