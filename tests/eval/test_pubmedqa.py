"""PubMedQA scorer: the authors' metrics against scikit-learn on the official 500 ids, the
likelihood answer against transformers on a tiny random GPT-2, the classifier answer, and every
bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from medlm.data.pubmedqa import DEFAULT_TEMPLATE, LABELS, PubMedQADataModule, PubMedQARecord
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError
from medlm.eval.pubmedqa import (
    decision_prompt,
    majority_baseline,
    predict_classifier,
    predict_likelihood,
    pubmedqa_metrics,
    score_pubmedqa,
)
from medlm.models.classifier import SequenceClassifier
from medlm.models.gpt2 import GPT2, GPT2Config

sklearn_metrics = pytest.importorskip("sklearn.metrics")
transformers = pytest.importorskip("transformers")

TOK = load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def official(shared_data_dir: Path) -> list[PubMedQARecord]:
    dm = PubMedQADataModule(path=str(shared_data_dir / "pubmedqa"))
    return dm.official_test_split()


def record(i: int, label: str | None = "yes") -> PubMedQARecord:
    return PubMedQARecord(
        str(100 + i),
        f"Does drug {i} help?",
        (f"Trial {i} ran.", "It went well."),
        f"Drug {i} helps.",
        label,
    )


# ------------------------------------------------------------------------------------ prompts


def test_the_prompt_is_the_training_template_up_to_the_decision() -> None:
    assert decision_prompt(DEFAULT_TEMPLATE, "reasoning_required") == (
        "Question: {question}\nContext: {context}\nDecision:",
        " ",
    )
    assert decision_prompt(DEFAULT_TEMPLATE, "reasoning_free") == (
        "Question: {question}\nAnswer: {long_answer}\nDecision:",
        " ",
    )
    # one line, braces in the text, a newline before the label
    template = "Q {{x}}: {question} C: {context} A: {long_answer} =>\n{final_decision} ({pubid})"
    assert decision_prompt(template, "reasoning_required") == (
        "Q {{x}}: {question} C: {context} =>",
        "\n",
    )
    prompt, _ = decision_prompt(template, "reasoning_free")
    assert record(1).format(prompt) == "Q {x}: Does drug 1 help? A: Drug 1 helps. =>"


@pytest.mark.parametrize(
    "template, setting, message",
    [
        (
            "Question: {question}\nAnswer: {long_answer}",
            "reasoning_required",
            "has no {final_decision}",
        ),
        (
            "Q: {question}\nContext: {context}\nDecision: {final_decision}",
            "reasoning_free",
            "shows the long_answer, but data.template has no {long_answer} before {final_decision}",
        ),
        (
            "Decision: {final_decision}\nQ: {question}\nAnswer: {long_answer}",
            "reasoning_free",
            "no {long_answer} before {final_decision}",
        ),
        ("{final_decision} {question} {context}", "reasoning_required", "shows the context"),
        (DEFAULT_TEMPLATE, "reasoning", "benchmark.setting must be one of"),
    ],
)
def test_templates_that_cannot_ask_for_a_decision(
    template: str, setting: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        decision_prompt(template, setting)


# ------------------------------------------------------------------------------------ metrics


def sklearn_reference(gold: list[str], pred: list[str]) -> dict:
    """What the authors' evaluation.py prints, and per-label figures, by scikit-learn itself."""
    p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
        gold, pred, labels=list(LABELS), zero_division=0
    )
    return {
        "acc": sklearn_metrics.accuracy_score(gold, pred),
        "macro_f1": sklearn_metrics.f1_score(gold, pred, average="macro"),
        "precision": list(p),
        "recall": list(r),
        "f1": list(f),
        "confusion": sklearn_metrics.confusion_matrix(gold, pred, labels=list(LABELS)).tolist(),
    }


def check_against_sklearn(gold: list[str], pred: list[str]) -> dict:
    ours, confusion = pubmedqa_metrics(gold, pred)
    ref = sklearn_reference(gold, pred)
    assert ours["acc"] == pytest.approx(ref["acc"], abs=1e-12)
    assert ours["macro_f1"] == pytest.approx(ref["macro_f1"], abs=1e-12)
    for i, label in enumerate(LABELS):
        assert ours[f"precision_{label}"] == pytest.approx(ref["precision"][i], abs=1e-12)
        assert ours[f"recall_{label}"] == pytest.approx(ref["recall"][i], abs=1e-12)
        assert ours[f"f1_{label}"] == pytest.approx(ref["f1"][i], abs=1e-12)
    assert confusion == ref["confusion"]
    assert ours["n"] == len(gold)
    return ours


@pytest.mark.shared_data
def test_all_yes_on_the_official_500_is_the_published_majority_baseline(official) -> None:
    gold = [r.final_decision for r in official]
    assert len(gold) == 500
    ours = check_against_sklearn(gold, ["yes"] * 500)
    assert round(ours["acc"], 3) == 0.552 and round(ours["macro_f1"], 3) == 0.237
    baseline = majority_baseline(gold)
    assert baseline["majority_label"] == "yes"
    assert baseline["acc"] == ours["acc"] and baseline["macro_f1"] == ours["macro_f1"]


@pytest.mark.shared_data
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_random_predictions_on_the_official_500_match_sklearn(official, seed: int) -> None:
    gold = [r.final_decision for r in official]
    pred = random.Random(seed).choices(LABELS, k=len(gold))
    check_against_sklearn(gold, pred)


def test_macro_f1_averages_over_the_labels_present_as_sklearn_does() -> None:
    gold, pred = ["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "no", "yes"]  # no "maybe"
    ours = check_against_sklearn(gold, pred)
    assert ours["f1_maybe"] == 0.0  # reported, but not part of the average
    check_against_sklearn(["yes", "no"], ["maybe", "maybe"])  # a label only predicted counts
    assert majority_baseline(["no", "maybe", "no", "yes"])["majority_label"] == "no"
    assert majority_baseline(["maybe", "no"])["majority_label"] == "no"  # a tie: the first label


def test_bad_labels() -> None:
    with pytest.raises(DataError, match="unknown prediction 'perhaps'"):
        pubmedqa_metrics(["yes"], ["perhaps"])
    with pytest.raises(DataError, match="no questions"):
        pubmedqa_metrics([], [])
    with pytest.raises(DataError, match="pubid 101: no yes/no/maybe label"):
        predict_likelihood(
            GPT2(GPT2Config(block_size=32, n_layer=1, n_head=1, n_embd=8)),
            TOK,
            [record(0), record(1, None)],
        )


# ------------------------------------------------------------------------------ likelihood mode


def transformers_logprobs(hf_model, text: str, block_size: int) -> dict[str, float]:
    """log p(" yes" | text) etc., tokenised with tiktoken directly and scored by transformers."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    ids = enc.encode_ordinary(text)[-block_size:]  # the prompt's end, when it is too long
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0, -1]  # (vocab,)
    logp = torch.log_softmax(logits.double(), -1)
    out = {}
    for label in LABELS:
        (token,) = enc.encode_ordinary(" " + label)
        out[label] = logp[token].item()
    return out


@pytest.mark.shared_data
@pytest.mark.parametrize("setting", ["reasoning_required", "reasoning_free"])
def test_likelihood_answer_equals_transformers_on_a_tiny_gpt2(
    official, tiny_hf_gpt2: Path, setting: str
) -> None:
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_gpt2).eval()
    model = GPT2.from_pretrained(tiny_hf_gpt2).eval()
    block = model.config.block_size  # 256: the longest official prompts are cut
    records = official[:3] + official[300:302] + official[-3:]  # yes, no and maybe questions
    result = score_pubmedqa(model, TOK, records, setting=setting, batch_size=3)
    assert result.mode == "likelihood"
    for r, p in zip(records, result.predictions):
        shown = (
            f"Context: {r.context}"
            if setting == "reasoning_required"
            else f"Answer: {r.long_answer}"
        )
        ref = transformers_logprobs(hf_model, f"Question: {r.question}\n{shown}\nDecision:", block)
        assert p.id == r.pubid and p.gold == r.final_decision
        assert p.scores == pytest.approx(ref, abs=1e-4)
        assert p.prediction == max(ref, key=ref.get)
    texts = [
        len(TOK.encode(f"Question: {r.question}\nContext: {r.context}\nDecision:")) for r in records
    ]
    if setting == "reasoning_required":
        assert result.n_truncated == sum(n > block for n in texts) > 0
    gold = [r.final_decision for r in records]
    assert result.metrics == pubmedqa_metrics(gold, [p.prediction for p in result.predictions])[0]
    assert result.baseline == majority_baseline(gold)


def test_likelihood_mode_refuses_what_is_not_a_causal_lm_of_this_tokenizer() -> None:
    torch.manual_seed(0)
    small_vocab = GPT2(GPT2Config(block_size=32, vocab_size=1000, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ConfigError, match="does not fit the tokenizer"):
        score_pubmedqa(small_vocab, TOK, [record(0)])
    backbone = GPT2(GPT2Config(block_size=32, n_layer=1, n_head=1, n_embd=8))
    classifier = SequenceClassifier(backbone, 3)
    with pytest.raises(ConfigError, match="likelihood mode needs a causal LM"):
        score_pubmedqa(classifier, TOK, [record(0)], mode="likelihood")
    with pytest.raises(ConfigError, match="benchmark.mode must be one of"):
        score_pubmedqa(classifier, TOK, [record(0)], mode="generate")


# ------------------------------------------------------------------------------ classifier mode


def test_classifier_answer_is_its_argmax(tiny_hf_gpt2: Path) -> None:
    torch.manual_seed(0)
    model = SequenceClassifier.from_pretrained(tiny_hf_gpt2, num_labels=3).eval()
    block = model.config.block_size
    long_context = ("A long methods section. " * 80,)
    records = [record(i, LABELS[i % 3]) for i in range(7)]
    records.append(PubMedQARecord("999", "Is it long?", long_context, "Yes.", "maybe"))

    def text(r: PubMedQARecord) -> str:
        return f"Question: {r.question}\nContext: {r.context}\nDecision:"

    with torch.no_grad():  # a head that tells the first three questions apart: yes, no, maybe
        h = torch.stack(
            [
                model.backbone.hidden_states(torch.tensor([TOK.encode(text(r))]))[0, -1]
                for r in records[:3]
            ]
        )
        model.score.weight.copy_(10 * (h - h.mean(0)))
    result = score_pubmedqa(model, TOK, records, batch_size=3)
    assert result.mode == "classifier" and result.n_truncated == 1
    for r, p in zip(records, result.predictions):
        ids = TOK.encode(text(r))[-block:]
        with torch.no_grad():  # one question at a time, no padding
            logits = model(torch.tensor([ids]))[0]
        ref = dict(zip(LABELS, torch.log_softmax(logits, -1).tolist()))
        assert p.scores == pytest.approx(ref, abs=1e-5)
        assert p.prediction == LABELS[int(logits.argmax())]
    assert [p.prediction for p in result.predictions[:3]] == list(LABELS)
    gold = [r.final_decision for r in records]
    assert result.metrics == pubmedqa_metrics(gold, [p.prediction for p in result.predictions])[0]


def test_classifier_mode_needs_a_three_label_classifier() -> None:
    backbone = GPT2(GPT2Config(block_size=32, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ConfigError, match="needs 3 labels \\(yes, no, maybe\\), this one has 2"):
        predict_classifier(SequenceClassifier(backbone, 2), TOK, [record(0)])
    with pytest.raises(ConfigError, match="classifier mode needs a SequenceClassifier, got GPT2"):
        score_pubmedqa(backbone, TOK, [record(0)], mode="classifier")
