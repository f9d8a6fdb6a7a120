"""Sequence classifiers (a LoRA classifier, its linear-probe baseline, ...) scored side by side on
the
same held-out split of Curai's medical question pairs.

Every model must have trained on the other questions: the data settings that decide the split and
what a model reads (saved in its checkpoint by Lightning) must be this evaluation's, else the scores
would be on questions it trained on.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medlm.errors import ConfigError
from medlm.eval.models import ModelToScore
from medlm.eval.report import Results
from medlm.models.classifier import SequenceClassifier
from medlm.models.lora import trainable_parameter_summary
from medlm.modules.classifier import SequenceClassification

# data settings that decide the split and what the model reads: a model must have trained with these
SPLIT_KEYS = ("seed", "val_fraction", "test_fraction", "template", "max_length", "tokenizer")
SPLITS = ("test", "val")


def check_same_data(model: ModelToScore, data: DictConfig) -> None:
    """The model's training data settings must be this evaluation's."""
    trained = model.loaded.data_settings()
    for key in SPLIT_KEYS:
        if key in trained and key in data and trained[key] != data[key]:
            raise ConfigError(
                f"models.{model.name}: {model.path} was trained with data.{key}={trained[key]!r}, "
                f"this evaluation uses {data[key]!r}: its {key} decides what the model saw; "
                f"evaluate with benchmark.data.{key}={trained[key]!r}"
            )


def score_question_pairs(
    models: list[ModelToScore], settings: DictConfig, device: torch.device
) -> Results:
    if settings.split not in SPLITS:
        raise ConfigError(f"benchmark.split: {settings.split!r} must be test or val")
    datamodule = instantiate(settings.data)
    for m in models:  # every model checked before any data is read
        if not isinstance(m.loaded.net, SequenceClassifier):
            raise ConfigError(
                f"models.{m.name}: {m.path} holds a {type(m.loaded.net).__name__}, not a "
                "sequence classifier"
            )
        if m.loaded.net.num_labels != datamodule.num_labels:
            raise ConfigError(
                f"models.{m.name}: {m.path} has {m.loaded.net.num_labels} labels, the data has "
                f"{datamodule.num_labels}"
            )
        check_same_data(m, settings.data)
    datamodule.setup("test")
    pairs = datamodule.splits[settings.split]
    labels = [p.label for p in pairs]
    majority = max(labels.count(k) for k in set(labels)) / len(labels)
    results = Results(
        "question_pairs",
        f"{settings.split} split: {len(pairs)} pairs of "
        f"{datamodule.source.describe()} (seed {settings.data.seed})",
        metrics=[
            "acc",
            "f1",
            "precision",
            "recall",
            "loss",
            "trainable_params",
            "trainable_percent",
        ],
        chart_metrics=["acc", "f1", "precision", "recall"],
        baseline={"acc": majority, "n": len(pairs)},
        baseline_name="majority class",
    )
    for m in models:
        summary = trainable_parameter_summary(
            m.loaded.net
        )  # as trained: LoRA and head, or the head
        label_names = ((m.loaded.checkpoint or {}).get("hyper_parameters") or {}).get("label_names")
        module = SequenceClassification(m.loaded.net, label_names=label_names).to(device).eval()
        loader = (
            datamodule.test_dataloader()
            if settings.split == "test"
            else datamodule.val_dataloader()
        )
        predictions = []
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                module.evaluate_batch(batch, settings.split)
                probs = module(batch["input_ids"], batch["attention_mask"]).float().softmax(-1)
                for gold, row in zip(batch["labels"].tolist(), probs.tolist(), strict=True):
                    pair = pairs[len(predictions)]  # the loader keeps the split's order
                    predictions.append(
                        {
                            "id": pair.source,
                            "gold": gold,
                            "prediction": max(range(len(row)), key=row.__getitem__),
                            "scores": row,
                        }
                    )
        metrics, confusion = module.compute_stage(settings.split)
        results.models[m.name] = {
            **{k.split("/", 1)[1]: float(v) for k, v in metrics.items()},
            "trainable_params": summary.trainable,
            "trainable_percent": round(100 * summary.share, 4),
            "n": len(pairs),
        }
        results.predictions[m.name] = predictions
        results.details[m.name] = {
            "confusion": confusion.long().tolist(),
            "labels": module.label_names,
        }
    return results
