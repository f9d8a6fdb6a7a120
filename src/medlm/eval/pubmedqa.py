"""PubMedQA scored the way its authors score it, on their 500-question PQA-L test split.

The questions are ``PubMedQADataModule.official_test_split()``. Two settings, as in the PubMedQA
paper: ``reasoning_required`` (the model reads the question and the abstract's context) and
``reasoning_free`` (the question and the abstract's conclusion, the long answer).

Two ways to answer:

- a causal LM: the log-likelihood of each label (" yes", " no", " maybe") after a prompt cut from
  the DataModule's own training template, the highest wins. The prompt is the template up to
  ``{final_decision}`` without the field the setting withholds (with the default template,
  ``Question: ...\\nContext: ...\\nDecision:`` and `` yes``), so a model fine-tuned with medlm's
  template is asked in that template. Batched by :mod:`medlm.eval.likelihood`: one forward pass
  per prompt scores all three labels.
- a :class:`~medlm.models.classifier.SequenceClassifier` with 3 labels (in ``LABELS`` order,
  yes/no/maybe): the argmax of its logits on the same prompt text.

Metrics are those of the authors' ``evaluation.py`` (pubmedqa/pubmedqa): ``accuracy_score`` and
``f1_score(average='macro')`` of scikit-learn, computed here from the confusion matrix with
sklearn's rules (the macro average runs over the labels present in the gold labels or the
predictions, all three on the official split; a label never predicted has precision 0), plus
per-label precision/recall/F1, the confusion matrix and the majority-class baseline
(``get_human_performance.py``: always "yes", the majority label; accuracy 0.552 and macro-F1
0.237 on the official split).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medlm.data.pubmedqa import DEFAULT_TEMPLATE, LABELS, PubMedQARecord, decision_prompt
from medlm.data.tokenizer import Tokenizer
from medlm.errors import ConfigError, DataError
from medlm.eval.likelihood import check_vocab, continuation_logprobs, model_device
from medlm.models.classifier import SequenceClassifier

log = logging.getLogger(__name__)

MODES = ("auto", "likelihood", "classifier")


# ------------------------------------------------------------------------------------ metrics


def pubmedqa_metrics(
    gold: Sequence[str], pred: Sequence[str]
) -> tuple[dict[str, float], list[list[int]]]:
    """``(metrics, confusion)`` as the authors' ``evaluation.py`` computes them.

    ``metrics``: ``acc``, ``macro_f1``, ``precision_<label>``, ``recall_<label>``, ``f1_<label>``
    for yes/no/maybe, and ``n``. ``confusion[i][j]``: items of gold ``LABELS[i]`` predicted
    ``LABELS[j]``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise DataError("pubmedqa: no questions to score")
    for what, values in (("gold label", gold), ("prediction", pred)):
        bad = sorted(set(values) - set(LABELS))
        if bad:
            raise DataError(
                f"pubmedqa: unknown {what} {bad[0]!r}; expected one of {', '.join(LABELS)}"
            )
    at = {label: i for i, label in enumerate(LABELS)}
    confusion = [[0] * len(LABELS) for _ in LABELS]
    for g, p in zip(gold, pred):
        confusion[at[g]][at[p]] += 1
    metrics: dict[str, float] = {"acc": sum(g == p for g, p in zip(gold, pred)) / len(gold)}
    f1: dict[str, float] = {}
    for i, label in enumerate(LABELS):
        tp = confusion[i][i]
        n_pred = sum(row[i] for row in confusion)
        n_gold = sum(confusion[i])
        # sklearn: precision, recall 0 where undefined (zero_division), F1 = 2tp / (2tp + fp + fn)
        metrics[f"precision_{label}"] = tp / n_pred if n_pred else 0.0
        metrics[f"recall_{label}"] = tp / n_gold if n_gold else 0.0
        f1[label] = 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0
        metrics[f"f1_{label}"] = f1[label]
    present = set(gold) | set(pred)  # sklearn's default labels for average='macro'
    metrics["macro_f1"] = sum(f1[label] for label in present) / len(present)
    metrics["n"] = len(gold)
    return metrics, confusion


def majority_baseline(gold: Sequence[str]) -> dict[str, float]:
    """The metrics of always answering the most frequent gold label ("yes" on the official split;
    ties go to the first of yes/no/maybe), so that a reader knows what chance looks like."""
    counts = Counter(gold)
    label = max(LABELS, key=lambda x: (counts[x], -LABELS.index(x)))
    metrics, _ = pubmedqa_metrics(gold, [label] * len(gold))
    return {"majority_label": label, **metrics}


# --------------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PubMedQAPrediction:
    """One question: its PubMed id, the gold label, the answer and each label's log-probability."""

    id: str
    gold: str
    prediction: str
    scores: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gold": self.gold,
            "prediction": self.prediction,
            "scores": self.scores,
        }


@dataclass
class PubMedQAResult:
    setting: str
    mode: str
    metrics: dict[str, float]
    confusion: list[list[int]]
    baseline: dict[str, Any]
    predictions: list[PubMedQAPrediction] = field(repr=False)
    n_truncated: int = 0  # prompts cut from the left to fit the model's block size


def _argmax(scores: dict[str, float]) -> str:
    return max(LABELS, key=lambda label: (scores[label], -LABELS.index(label)))  # ties: first label


def _checked(records: Sequence[PubMedQARecord]) -> None:
    if not records:
        raise DataError("pubmedqa: no questions to score")
    for r in records:
        if r.final_decision not in LABELS:
            raise DataError(f"pubmedqa: pubid {r.pubid}: no yes/no/maybe label to score against")


def predict_likelihood(
    model: nn.Module,
    tokenizer: Tokenizer,
    records: Sequence[PubMedQARecord],
    *,
    setting: str = "reasoning_required",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> tuple[list[PubMedQAPrediction], int]:
    """Each question answered by a causal LM's likeliest label; ``(predictions, prompts cut)``."""
    if isinstance(model, SequenceClassifier):
        raise ConfigError(
            "the likelihood mode needs a causal LM; this model is a sequence "
            "classifier (use mode=classifier)"
        )
    check_vocab(model, tokenizer)
    _checked(records)
    prompt, sep = decision_prompt(template, setting)
    answers = [tokenizer.encode(sep + label) for label in LABELS]
    requests = [(tokenizer.encode_prompt(r.format(prompt)), answers) for r in records]
    result = continuation_logprobs(model, requests, batch_size, device)
    predictions = []
    for r, logprobs in zip(records, result.logprobs):
        scores = dict(zip(LABELS, logprobs))
        predictions.append(PubMedQAPrediction(r.pubid, r.final_decision, _argmax(scores), scores))
    return predictions, result.n_truncated


@torch.no_grad()
def predict_classifier(
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    records: Sequence[PubMedQARecord],
    *,
    setting: str = "reasoning_required",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> tuple[list[PubMedQAPrediction], int]:
    """Each question answered by a 3-label classifier's argmax over the same prompt text (cut from
    the left to the backbone's block size); scores are log-softmax of its logits."""
    if not isinstance(model, SequenceClassifier):
        raise ConfigError(
            f"the classifier mode needs a SequenceClassifier, got {type(model).__name__}"
        )
    if model.num_labels != len(LABELS):
        raise ConfigError(
            f"a PubMedQA classifier needs {len(LABELS)} labels "
            f"({', '.join(LABELS)}), this one has {model.num_labels}"
        )
    check_vocab(model, tokenizer)
    _checked(records)
    prompt, _ = decision_prompt(template, setting)
    block_size = model.config.block_size
    device = torch.device(device) if device is not None else model_device(model)
    encoded = [tokenizer.encode_prompt(r.format(prompt)) for r in records]
    n_truncated = sum(len(ids) > block_size for ids in encoded)
    encoded = [ids[-block_size:] for ids in encoded]
    order = sorted(range(len(records)), key=lambda i: -len(encoded[i]))
    logprobs: list[list[float]] = [[] for _ in records]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            T = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), T), tokenizer.eot_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for b, i in enumerate(chunk):  # right padding, marked by the attention mask
                ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[b, : len(encoded[i])] = 1
            logits = model(ids.to(device), attention_mask=mask.to(device))  # (B, 3)
            for i, row in zip(chunk, torch.log_softmax(logits.float(), -1).tolist()):
                logprobs[i] = row
    finally:
        model.train(was_training)
    predictions = []
    for r, row in zip(records, logprobs):
        scores = dict(zip(LABELS, row))
        predictions.append(PubMedQAPrediction(r.pubid, r.final_decision, _argmax(scores), scores))
    return predictions, n_truncated


def score_pubmedqa(
    model: nn.Module,
    tokenizer: Tokenizer,
    records: Sequence[PubMedQARecord],
    *,
    setting: str = "reasoning_required",
    template: str = DEFAULT_TEMPLATE,
    mode: str = "auto",
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> PubMedQAResult:
    """Predictions, the authors' metrics and the majority baseline of ``model`` on ``records``
    (the official split: ``PubMedQADataModule(...).official_test_split()``).

    ``mode``: ``likelihood`` (a causal LM), ``classifier`` (a 3-label SequenceClassifier) or
    ``auto`` (which of the two the model is). ``template`` is the one the model was trained with.
    """
    if mode not in MODES:
        raise ConfigError(f"benchmark.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        mode = "classifier" if isinstance(model, SequenceClassifier) else "likelihood"
    predict = predict_classifier if mode == "classifier" else predict_likelihood
    predictions, n_truncated = predict(
        model,
        tokenizer,
        records,
        setting=setting,
        template=template,
        batch_size=batch_size,
        device=device,
    )
    if n_truncated:
        log.warning(
            "pubmedqa: %d of %d prompts were longer than the model's block size %d and "
            "lost their beginning",
            n_truncated,
            len(records),
            model.config.block_size,
        )
    gold = [p.gold for p in predictions]
    metrics, confusion = pubmedqa_metrics(gold, [p.prediction for p in predictions])
    return PubMedQAResult(
        setting, mode, metrics, confusion, majority_baseline(gold), predictions, n_truncated
    )
