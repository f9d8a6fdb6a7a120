"""medlm-train: compose model x data x trainer with Hydra, fit, and record the run in MLflow.

medlm-train                                        # experiment=quickstart
medlm-train experiment=biomedgpt_pubmedqa trainer=gpu
medlm-train -m optim.lr=1e-4,3e-4                  # a sweep: one MLflow run per job, one parent
medlm-train -m hparams_search=medquad_alpaca_optuna # an Optuna search (pip install medlm[sweep])
medlm-train hydra.run.dir=<a run's dir> ckpt_path=auto   # resume it, same MLflow run
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medlm.utils.cli import CONFIG_DIR, run_hydra, user_errors
from medlm.utils.sweeps import closing_sweeps, in_sweep, trial_errors, trial_value


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # a sweep's job hands its error to the sweeper, which records the trial as failed and goes on
    with trial_errors() if in_sweep() else user_errors():
        from medlm.training import train  # torch, Lightning, MLflow: only once a run starts

        return trial_value(cfg, train(cfg))


def main() -> None:
    # a sweeper that stops on a failed job raises that job's error here
    with user_errors(), closing_sweeps():
        run_hydra(_hydra_main)


if __name__ == "__main__":
    main()
