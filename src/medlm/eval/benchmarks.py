"""What ``medlm-eval benchmark=NAME`` runs: each benchmark scores every model on the same items and
returns :class:`~medlm.eval.report.Results`; the command writes, prints and records them.

- ``pubmedqa``: the authors' 500-question PQA-L test split (:mod:`medlm.eval.pubmedqa`), each
  causal LM asked in the template it was trained with, each 3-label classifier by its argmax.
- ``hellaswag``: the validation split, completion style (:mod:`medlm.eval.hellaswag`).
- ``question_pairs``: sequence classifiers on the held-out split of the question pairs
  (:mod:`medlm.eval.question_pairs`), each checked to have trained on the other questions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from medlm.data.pubmedqa import DEFAULT_TEMPLATE, LABELS, SETTINGS, PubMedQADataModule
from medlm.errors import ConfigError, MedlmError
from medlm.eval.models import ModelToScore
from medlm.eval.report import Results
from medlm.utils.checks import check_number

CHANCE = 0.25  # HellaSwag: one of four endings


log = logging.getLogger(__name__)


def _for_model(model: ModelToScore, score: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``score(model's network on device, its tokenizer, *args, **kwargs)``; a user error names the
    model it is about."""
    try:
        return score(
            model.loaded.net.to(kwargs.get("device")), model.loaded.tokenizer, *args, **kwargs
        )
    except MedlmError as err:
        raise type(err)(f"models.{model.name}: {err}") from None


def _limit(settings: DictConfig) -> int | None:
    limit = settings.get("limit")
    if limit is not None:
        check_number(limit, "benchmark.limit", int, 1)
    return limit


def spread(items: list, limit: int | None) -> list:
    """``limit`` items evenly spaced through ``items`` (all of them without a limit), so that a
    quick
    look at a list ordered by label (PubMedQA's test split: yes, then no, then maybe) sees every
    label."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def trained_on_official_test(data_settings: dict) -> bool:
    """Whether a checkpoint's PubMedQA DataModule trained on PQA-L with the official test
    questions in its splits (the recipe as published splits all 1,000 questions)."""
    return (
        data_settings.get("exclude_official_test") is False
        and data_settings.get("hub_config", "pqa_labeled") == "pqa_labeled"
    )


def pubmedqa(models: list[ModelToScore], settings: DictConfig, device: torch.device) -> Results:
    from medlm.eval.pubmedqa import score_pubmedqa

    if settings.setting is not None and settings.setting not in SETTINGS:
        raise ConfigError(
            f"benchmark.setting must be one of {', '.join(SETTINGS)} or null, got "
            f"{settings.setting!r}"
        )
    check_number(settings.batch_size, "benchmark.batch_size", int, 1)
    records = PubMedQADataModule(
        path=settings.get("path"), hub_config="pqa_labeled"
    ).official_test_split()
    records = spread(records, _limit(settings))
    results = Results(
        "pubmedqa",
        f"PubMedQA, {len(records)} official test questions",
        metrics=["acc", "macro_f1", "f1_yes", "f1_no", "f1_maybe"],
        chart_metrics=["acc", "macro_f1"],
        baseline_name="majority (always yes)",
    )
    for m in models:
        # asked in the template (and setting) the model was trained with, unless the command says
        trained = m.loaded.data_settings()
        seen_test = trained_on_official_test(trained)
        if seen_test:
            log.warning(
                "models.%s: %s was trained on PubMedQA PQA-L without "
                "data.exclude_official_test=true: it has seen these test questions and their "
                "answers, so its score is not a test score",
                m.name,
                m.path,
            )
        template = settings.get("template") or trained.get("template") or DEFAULT_TEMPLATE
        setting = settings.setting or trained.get("setting") or SETTINGS[0]
        result = _for_model(
            m,
            score_pubmedqa,
            records,
            setting=setting,
            template=template,
            mode=settings.mode,
            batch_size=settings.batch_size,
            device=device,
        )
        results.models[m.name] = {**result.metrics, "n": len(records)}
        results.predictions[m.name] = [p.as_dict() for p in result.predictions]
        results.details[m.name] = {
            "mode": result.mode,
            "confusion": result.confusion,
            "labels": list(LABELS),
            "setting": setting,
            "template": template,
            "prompts_cut": result.n_truncated,
            "trained_on_test": seen_test,
        }
        results.baseline = {**result.baseline, "n": len(records)}
    return results


def hellaswag(models: list[ModelToScore], settings: DictConfig, device: torch.device) -> Results:
    from medlm.eval.hellaswag import HellaSwagCounts, load_hellaswag, predict_hellaswag

    check_number(settings.batch_size, "benchmark.batch_size", int, 1)
    items = load_hellaswag(settings.get("path"), _limit(settings))
    results = Results(
        "hellaswag",
        f"HellaSwag, {len(items)} validation items (completion style)",
        metrics=["acc", "acc_norm", "acc_norm_bytes"],
        baseline_name="chance",
        baseline={"acc": CHANCE, "acc_norm": CHANCE, "acc_norm_bytes": CHANCE, "n": len(items)},
    )
    for m in models:
        if not m.loaded.is_causal_lm:
            raise ConfigError(
                f"models.{m.name}: {m.path} holds a {type(m.loaded.net).__name__}; HellaSwag "
                "scores a causal language model (GPT2, Llama)"
            )
        predictions = _for_model(
            m, predict_hellaswag, items, batch_size=settings.batch_size, device=device
        )
        results.models[m.name] = HellaSwagCounts.of(predictions).metrics()
        results.predictions[m.name] = [p.as_dict() for p in predictions]
    return results


def question_pairs(
    models: list[ModelToScore], settings: DictConfig, device: torch.device
) -> Results:
    from medlm.eval.question_pairs import score_question_pairs

    return score_question_pairs(models, settings, device)


BENCHMARKS: dict[str, Callable[[list[ModelToScore], DictConfig, torch.device], Results]] = {
    "pubmedqa": pubmedqa,
    "hellaswag": hellaswag,
    "question_pairs": question_pairs,
}
