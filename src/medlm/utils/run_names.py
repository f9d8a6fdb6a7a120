"""MLflow run names that say what a run is: the experiment (task_name) and the command-line
overrides that distinguish it, and the job number in a sweep, e.g.
``quickstart optim.lr=1e-4 #3``. A sweep's job shows only the keys the sweep varies (the rest is
the same for every job, and in the parent run's name).

Without a name MLflow draws a random one from Python's ``random``, which medlm has seeded by then:
every run was called the same. What is left out is noise for telling runs apart: Hydra's own
settings, the output paths, and the experiment (or search) choice, which the task name says.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import PurePath

from omegaconf import DictConfig, OmegaConf

# overrides of these keys or groups never tell runs apart
NOISE_KEYS = ("hydra", "paths", "experiment", "hparams_search")
# MLflow's runs.name column holds 250 characters
MAX_RUN_NAME = 250


def task_overrides(hydra_cfg: DictConfig) -> list[str]:
    """The command line's overrides of the task as typed (``hydra.overrides.task``): an override
    that is an interpolation (``x=${hydra:job.num}``) stays one, as Hydra itself reads them."""
    return [str(o) for o in OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)]


def _key_and_value(override: str) -> tuple[str, str | None]:
    """``+trainer.x=1`` -> (``trainer.x``, ``1``); ``~callbacks.samples`` -> (key, None)."""
    text = override.lstrip("+~")
    key, sep, value = text.partition("=")
    return key, value if sep else None


def override_key(override: str) -> str:
    """The key (or group) an override sets: ``+trainer.x=1`` -> ``trainer.x``."""
    return _key_and_value(override)[0]


def is_noise(key: str) -> bool:
    """Hydra's settings, paths and the experiment choice: never what tells runs apart."""
    root = key.replace("/", ".").split(".", 1)[0]
    return root in NOISE_KEYS


def short_value(value: str) -> str:
    """A value as a person reads it in a list of runs: a float with 4 significant digits (Optuna
    samples 0.000123456789...), an absolute path by its last part."""
    if len(value) > 8:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if not value.lstrip("-").isdigit():
                return f"{number:.4g}"
    if value.startswith("/") and len(value) > 1:
        return PurePath(value).name or value
    return value


def distinguishing_overrides(
    overrides: Iterable[str], only: Collection[str] | None = None
) -> list[str]:
    """The overrides that tell this run from the experiment's defaults (of ``only`` these keys,
    when given), values shortened."""
    kept = []
    for override in overrides:
        key, value = _key_and_value(str(override))
        if not key or is_noise(key) or (only is not None and key not in only):
            continue
        kept.append(f"~{key}" if value is None else f"{key}={short_value(value)}")
    return kept


def run_name(
    task_name: str,
    overrides: Sequence[str],
    job_num: int | None = None,
    only: Collection[str] | None = None,
) -> str:
    """``<task_name> <overrides...>`` (those of ``only`` these keys, when given: a sweep's) and,
    for a job of a sweep, `` #<job number>``."""
    parts = [str(task_name), *distinguishing_overrides(overrides, only)]
    name = " ".join(parts)
    suffix = f" #{job_num}" if job_num is not None else ""
    if len(name) + len(suffix) > MAX_RUN_NAME:
        name = name[: MAX_RUN_NAME - len(suffix) - 3] + "..."
    return name + suffix
