"""medlm-eval: score trained classifiers (e.g. a linear probe and LoRA) on the same test split, side by side.

    medlm-train experiment=linear_probe_question_pairs model.pretrained=/path/to/gpt2
    medlm-train experiment=lora_question_pairs model.pretrained=/path/to/gpt2
    medlm-eval                                      # the newest run of each: table, bar chart, MLflow run
    medlm-eval arms.lora=/path/to/best.ckpt split=val

Every arm is a checkpoint that carries its own network (``medlm_network``), so the arms may
differ in anything but the data: each checkpoint's split settings (seed, fractions, template,
max_length) are checked against this evaluation's, so that no arm is scored on questions it trained
on. Outputs go to the Hydra run folder and to one MLflow run of the experiment ``task_name``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from medlm.errors import ConfigError  # noqa: E402
from medlm.models.checkpoint import network_from_checkpoint, read_checkpoint  # noqa: E402
from medlm.models.classifier import SequenceClassifier  # noqa: E402
from medlm.models.lora import trainable_parameter_summary  # noqa: E402
from medlm.modules.classifier import SequenceClassification  # noqa: E402
from medlm.utils.plots import write_confusion_matrix  # noqa: E402
from medlm.utils.cli import CONFIG_DIR, user_errors  # noqa: E402
from medlm.utils.io import atomic_path, atomic_write  # noqa: E402
from medlm.utils.tracking import log_artifact, make_loggers, record_run  # noqa: E402

log = logging.getLogger("medlm.evaluate")
METRICS = {"acc": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall"}
# data settings that decide the split and what the model reads: an arm must have trained with these
SPLIT_KEYS = ("seed", "val_fraction", "test_fraction", "template", "max_length")


@dataclass
class ArmResult:
    name: str
    checkpoint: Path
    metrics: dict[str, float]  # loss, acc, f1, precision, recall
    confusion: torch.Tensor  # (num_labels, num_labels), rows true, columns predicted
    label_names: list[str]
    trainable: int
    total: int


def resolve_checkpoint(arm: str, value: str, tracking_uri: str | None) -> Path:
    """A .ckpt path as given, or the best checkpoint of the newest run of the MLflow experiment ``value``."""
    path = Path(str(value)).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix == ".ckpt" or "/" in str(value):
        raise ConfigError(f"arms.{arm}: {value}: no such checkpoint file")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(str(value))
    if experiment is None:
        raise ConfigError(f"arms.{arm}: {value!r} is neither a checkpoint file nor an MLflow experiment in "
                          f"{client.tracking_uri} (train it first: medlm-train experiment={value})")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.best_checkpoint LIKE '%.ckpt'",
                              order_by=["attributes.start_time DESC"], max_results=100)
    for run in runs:
        ckpt = Path(run.data.tags["best_checkpoint"])
        if ckpt.is_file():
            log.info("arm %s: run %s of %s, %s", arm, run.info.run_id, value, ckpt)
            return ckpt
    raise ConfigError(f"arms.{arm}: no run of MLflow experiment {value!r} has a best checkpoint that still "
                      f"exists; pass a .ckpt path")


def check_same_data(arm: str, ckpt_path: Path, ckpt: dict[str, Any], data_cfg: DictConfig) -> None:
    """The arm's training data settings (saved by Lightning) must be this evaluation's."""
    trained = ckpt.get("datamodule_hyper_parameters") or {}
    for key in SPLIT_KEYS:
        if key in trained and key in data_cfg and trained[key] != data_cfg[key]:
            raise ConfigError(f"arms.{arm}: {ckpt_path} was trained with data.{key}={trained[key]!r}, this "
                              f"evaluation uses {data_cfg[key]!r}: its {key} decides what the model saw; "
                              f"evaluate with data.{key}={trained[key]!r}")


def score_arm(arm: str, ckpt_path: Path, cfg: DictConfig, datamodule, device: torch.device) -> ArmResult:
    """Accuracy, F1, precision, recall, loss and confusion matrix of one checkpoint on ``cfg.split``."""
    ckpt = read_checkpoint(ckpt_path)
    check_same_data(arm, ckpt_path, ckpt, cfg.data)
    net = network_from_checkpoint(ckpt, str(ckpt_path))
    if not isinstance(net, SequenceClassifier):
        raise ConfigError(f"arms.{arm}: {ckpt_path} holds a {type(net).__name__}, not a sequence classifier")
    if net.num_labels != datamodule.num_labels:
        raise ConfigError(f"arms.{arm}: {ckpt_path} has {net.num_labels} labels, the data has "
                          f"{datamodule.num_labels}")
    summary = trainable_parameter_summary(net)  # as trained: LoRA and head, or the head alone
    label_names = (ckpt.get("hyper_parameters") or {}).get("label_names")
    module = SequenceClassification(net, label_names=label_names).to(device).eval()
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    with torch.no_grad():
        for batch in loader:
            module.evaluate_batch({k: v.to(device) for k, v in batch.items()}, cfg.split)
    results, confusion = module.compute_stage(cfg.split)
    metrics = {k.split("/", 1)[1]: float(v) for k, v in results.items()}
    return ArmResult(arm, ckpt_path, metrics, confusion.cpu(), module.label_names, summary.trainable, summary.total)


def comparison_table(results: list[ArmResult]) -> list[dict[str, Any]]:
    return [{"arm": r.name, **{label: round(r.metrics[k], 4) for k, label in METRICS.items()},
             "loss": round(r.metrics["loss"], 4), "trainable params": r.trainable,
             "trainable %": round(100 * r.trainable / r.total, 4), "checkpoint": str(r.checkpoint)}
            for r in results]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in rows[0] if c != "checkpoint"]

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def bar_chart(results: list[ArmResult], path: Path, title: str, majority: float) -> Path:
    """Grouped bars: one group per metric, one bar per arm, the majority-class rate as a dashed line."""
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(METRICS), 4.2))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(METRICS))]
        bars = ax.bar(xs, [r.metrics[k] for k in METRICS], width, label=r.name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.axhline(majority, color="gray", ls="--", lw=1, label=f"majority class ({majority:.3f})")
    ax.set_xticks(range(len(METRICS)), list(METRICS.values()))
    ax.set_ylim(0, 1.18)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", ncol=len(results) + 1, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def evaluate(cfg: DictConfig) -> list[ArmResult]:
    """Score every arm on the same split, write the table, chart and confusion matrices, log them."""
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split: {cfg.split!r} must be test or val")
    if not cfg.get("arms"):
        raise ConfigError("arms: name at least one checkpoint to score (arms.lora=/path/to/best.ckpt)")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    tracking_uri = ((cfg.get("logger") or {}).get("mlflow") or {}).get("tracking_uri")
    checkpoints = {arm: resolve_checkpoint(arm, value, tracking_uri) for arm, value in cfg.arms.items()}

    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    examples = datamodule.splits[cfg.split]
    results = [score_arm(arm, path, cfg, datamodule, device) for arm, path in checkpoints.items()]

    labels = [p.label for p in examples]
    majority = max(labels.count(k) for k in set(labels)) / len(labels)
    source = datamodule.source.describe()
    title = f"{cfg.split} split: {len(examples)} pairs of {source} (seed {cfg.data.seed})"
    rows = comparison_table(results)
    table = markdown_table(rows)
    print(f"{title}\n\n{table}\n")
    for r in results:
        print(f"{r.name}: {r.checkpoint}")

    out = Path(cfg.paths.output_dir)
    with atomic_write(out / "comparison.md") as f:
        f.write(f"# {title}\n\n{table}\n\n" + "".join(f"- {r.name}: `{r.checkpoint}`\n" for r in results))
    with atomic_write(out / "comparison.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bar_chart(results, out / "comparison.png", title, majority)
    confusion = [p for r in results for p in write_confusion_matrix(
        r.confusion.tolist(), r.label_names, out / "confusion" / r.name, f"{r.name}, {cfg.split}")]

    loggers = make_loggers(cfg, None)
    if loggers:
        record_run(loggers, cfg, out, resumed=False)
        metrics = {f"{r.name}/{cfg.split}/{k}": v for r in results for k, v in r.metrics.items()}
        metrics |= {f"{r.name}/trainable_params": float(r.trainable) for r in results}
        for lg in loggers:
            lg.log_metrics(metrics)
            if hasattr(lg, "run_id"):
                for r in results:
                    lg.experiment.set_tag(lg.run_id, f"checkpoint.{r.name}", str(r.checkpoint))
        for name in ("comparison.md", "comparison.csv", "comparison.png"):
            log_artifact(loggers, out / name, "comparison")
        for path in confusion:
            log_artifact(loggers, path, "confusion")
        for lg in loggers:
            lg.finalize("success")
    print(f"outputs: {out}")
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
