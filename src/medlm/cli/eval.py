"""medlm-eval: score any models on one benchmark, side by side, and record the scores where users
look.

    medlm-eval benchmark=pubmedqa models.base=/models/gpt2
    models.tuned=logs/.../checkpoints/best.ckpt
    medlm-eval benchmark=pubmedqa models.tuned=<MLflow run id> benchmark.setting=reasoning_free
    medlm-eval benchmark=hellaswag models.gpt2=/models/gpt2 benchmark.path=hellaswag_val.jsonl
    benchmark.limit=500
    medlm-eval benchmark=question_pairs        # the newest LoRA and linear-probe runs, on the test
    split

A model is a medlm checkpoint, a Hugging Face or Meta directory, an MLflow run id or an MLflow
experiment name (:mod:`medlm.eval.models`). The run folder gets results.json, a predictions file
per model, a markdown/CSV table, a bar chart and, for classifiers, confusion matrices; the
evaluation is one MLflow run (experiment ``eval_<benchmark>``) that names the runs it scored, and
each model that came from a medlm training run gets ``eval/<benchmark>/<metric>`` logged into that
run, so the MLflow UI's run table sorts runs by them.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medlm.utils.cli import CONFIG_DIR, run_hydra, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from medlm.eval.run import evaluate  # torch, Lightning, MLflow: only once a run starts
    from medlm.utils.preflight import discard_unused_run_folder

    # a mistake found before any result is written leaves no run folder
    with user_errors(), discard_unused_run_folder(cfg.paths.output_dir):
        evaluate(cfg)


def main() -> None:
    # models.NAME=VALUE adds a key to the empty models mapping: Hydra spells that ++models.NAME
    sys.argv = [f"++{a}" if a.startswith("models.") and "=" in a else a for a in sys.argv]
    run_hydra(_hydra_main)


if __name__ == "__main__":
    main()
