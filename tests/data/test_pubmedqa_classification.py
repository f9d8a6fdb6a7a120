"""The PubMedQA classification DataModule on the real PQA-L file, and the lora_pubmedqa experiment
end to end: trained briefly, then scored by the PubMedQA scorer's classifier path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medlm.data.pubmedqa import (
    DEFAULT_TEMPLATE,
    LABELS,
    OFFICIAL_TEST_SHA256,
    decision_prompt,
    ids_digest,
    load_records,
    pubmedqa_source,
)
from medlm.data.pubmedqa_classification import PubMedQAClassificationDataModule
from medlm.errors import ConfigError, DataError
from medlm.eval.pubmedqa import score_pubmedqa
from medlm.models.checkpoint import load_network, read_checkpoint
from medlm.training import train
from tests.helpers import compose_train, mlflow_runs


@pytest.fixture(scope="module")
def pqa_dir(shared_data_dir: Path) -> Path:
    return shared_data_dir / "pubmedqa"


@pytest.fixture(scope="module")
def dm(pqa_dir: Path) -> PubMedQAClassificationDataModule:
    module = PubMedQAClassificationDataModule(path=str(pqa_dir), max_length=128, batch_size=4)
    module.setup()
    return module


@pytest.mark.shared_data
def test_test_split_is_the_official_500_and_train_val_never_touch_it(
    dm: PubMedQAClassificationDataModule, pqa_dir: Path
) -> None:
    ids = {split: [r.pubid for r in dm.splits[split]] for split in ("train", "val", "test")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (450, 50, 500)
    # the authors' data/test_ground_truth.json ids, by their digest
    assert ids_digest(ids["test"]) == OFFICIAL_TEST_SHA256
    assert not (set(ids["train"]) | set(ids["val"])) & set(ids["test"])
    assert not set(ids["train"]) & set(ids["val"])
    every = {
        r.pubid for r in load_records(pubmedqa_source(str(pqa_dir), "", "pqa_labeled", None), True)
    }
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == every
    # another seed: another validation set, the same test set
    other = PubMedQAClassificationDataModule(path=str(pqa_dir), seed=7).split_records()
    assert [r.pubid for r in other["test"]] == ids["test"]
    assert {r.pubid for r in other["val"]} != set(ids["val"])
    assert all(len(d) == len(dm.splits[s]) for s, d in dm.datasets.items())


@pytest.mark.shared_data
@pytest.mark.parametrize("setting", ["reasoning_required", "reasoning_free"])
def test_an_example_is_the_scorers_prompt_and_its_label(pqa_dir: Path, setting: str) -> None:
    module = PubMedQAClassificationDataModule(path=str(pqa_dir), setting=setting, max_length=1024)
    module.setup()
    prompt, _ = decision_prompt(DEFAULT_TEMPLATE, setting)
    shown = "Context" if setting == "reasoning_required" else "Answer"
    for split in ("train", "val", "test"):
        for i in (0, 17, len(module.splits[split]) - 1):
            r = module.splits[split][i]
            text = module.text(r)
            assert text == r.format(prompt)
            body = " ".join(r.contexts) if setting == "reasoning_required" else r.long_answer
            assert text == f"Question: {r.question}\n{shown}: {body}\nDecision:"  # written out
            ids, label = module.datasets[split][i]
            assert ids == module.tokenizer.encode_prompt(text)  # 1024 tokens hold every prompt
            assert module.tokenizer.decode(ids) == text
            assert label == {"yes": 0, "no": 1, "maybe": 2}[r.final_decision]
    labels = [label for _, label in module.datasets["test"]]
    assert [labels.count(i) for i in range(3)] == [276, 169, 55]  # the official split's labels
    assert module.num_labels == 3 and tuple(module.label_names) == ("yes", "no", "maybe") == LABELS


@pytest.mark.shared_data
def test_a_long_prompt_is_cut_from_the_left_and_keeps_its_end(
    dm: PubMedQAClassificationDataModule,
) -> None:
    full = [dm.tokenizer.encode_prompt(dm.text(r)) for r in dm.splits["val"]]
    long = [i for i, ids in enumerate(full) if len(ids) > dm.max_length]
    short = [i for i, ids in enumerate(full) if len(ids) <= dm.max_length]
    assert long and short  # 128 tokens cut most reasoning-required prompts, not all
    for i in long:
        ids, _ = dm.datasets["val"][i]
        assert len(ids) == dm.max_length and ids == full[i][-dm.max_length :]
        kept = dm.tokenizer.decode(ids)
        assert kept.endswith(dm.splits["val"][i].contexts[-1][-20:] + "\nDecision:")
        assert not kept.startswith("Question:")
    for i in short:
        assert dm.datasets["val"][i][0] == full[i]


@pytest.mark.shared_data
def test_batches_follow_the_classification_contract(dm: PubMedQAClassificationDataModule) -> None:
    eot = dm.tokenizer.eot_id
    for batch_idx, batch in enumerate(dm.val_dataloader()):
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        B, T = batch["input_ids"].shape
        assert batch["attention_mask"].shape == (B, T) and batch["labels"].shape == (B,)
        assert all(t.dtype == torch.long for t in batch.values())
        examples = dm.datasets["val"][batch_idx * dm.batch_size :][:B]
        assert T == max(len(ids) for ids, _ in examples)
        for row, (ids, label) in enumerate(examples):  # right-padded with end-of-text
            n = len(ids)
            assert batch["input_ids"][row, :n].tolist() == ids
            assert (batch["input_ids"][row, n:] == eot).all()
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)
            assert batch["labels"][row].item() == label
    # the training order is shuffled, the same way every time
    first = [next(iter(dm.train_dataloader()))["labels"].tolist() for _ in range(2)]
    assert first[0] == first[1]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"setting": "reasoning"}, "data.setting"),
        ({"max_length": 11}, "data.max_length"),  # "Question: \nContext: \nDecision:" alone is 11
        ({"max_length": 0}, "data.max_length"),
        ({"template": "Question: {question}\nContext: {context}"}, "data.template"),
        ({"template": "Question: {question}\nDecision: {final_decision}"}, "data.template"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_bad_settings_are_one_config_error_naming_the_key(kwargs: dict, key: str) -> None:
    # a missing path: the error comes before any data is read
    with pytest.raises(ConfigError) as err:
        PubMedQAClassificationDataModule(path="/nonexistent/pubmedqa", **kwargs)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.shared_data
def test_records_that_are_not_the_whole_pqa_l_are_refused(pqa_dir: Path, tmp_path: Path) -> None:
    """The official test split needs the 1,000 PQA-L records; a part of them is a DataError."""
    data = json.loads((pqa_dir / "ori_pqal.json").read_text(encoding="utf-8"))
    part = tmp_path / "ori_pqal.json"
    part.write_text(json.dumps(dict(list(data.items())[:100])), encoding="utf-8")
    with pytest.raises(DataError, match="test split"):
        PubMedQAClassificationDataModule(path=str(part)).setup()


@pytest.mark.shared_data
@pytest.mark.slow
def test_lora_pubmedqa_trains_and_its_checkpoint_is_scored_by_the_pubmedqa_scorer(
    tmp_path: Path, tiny_hf_gpt2: Path, pqa_dir: Path
) -> None:
    """A few steps of the experiment, then ``score_pubmedqa(mode="classifier")`` on its best
    checkpoint: the scorer's log-probabilities are the network's on the DataModule's test batch,
    i.e. the scorer asks the classifier exactly what it trained on."""
    cfg = compose_train(
        tmp_path,
        [
            "experiment=lora_pubmedqa",
            f"model.pretrained={tiny_hf_gpt2}",
            f"data.path={pqa_dir}",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=2",
            "+trainer.limit_test_batches=2",
        ],
    )
    train(cfg)
    [run] = mlflow_runs(tmp_path)
    assert {"val/acc", "val/f1", "test/acc", "test/f1", "train/loss"} <= set(run["metrics"])
    [best] = [p for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    hparams = read_checkpoint(best)["datamodule_hyper_parameters"]  # what a scorer asks in
    assert (hparams["setting"], hparams["template"], hparams["max_length"]) == (
        "reasoning_required",
        DEFAULT_TEMPLATE,
        256,
    )

    net = load_network(best)
    assert net.num_labels == 3 and net.config.block_size == 256
    dm = PubMedQAClassificationDataModule(path=str(pqa_dir), max_length=256, batch_size=12)
    dm.setup()
    records = dm.splits["test"][::50]  # 10 questions, yes, no and maybe among them
    result = score_pubmedqa(net, dm.tokenizer, records, mode="classifier", batch_size=4)
    assert result.mode == "classifier" and result.metrics["n"] == 10
    assert {p.gold for p in result.predictions} == set(LABELS)
    assert result.n_truncated == sum(
        len(dm.tokenizer.encode_prompt(dm.text(r))) > 256 for r in records
    )

    batch = dm.test_dataloader().collate_fn(dm.datasets["test"][::50])  # the DataModule's batch
    with torch.no_grad():
        expected = torch.log_softmax(net(batch["input_ids"], batch["attention_mask"]), -1)
    got = torch.tensor([[p.scores[label] for label in LABELS] for p in result.predictions])
    assert torch.allclose(got, expected, atol=1e-5)
    assert [p.prediction for p in result.predictions] == [LABELS[i] for i in expected.argmax(-1)]
    assert [p.gold for p in result.predictions] == [LABELS[i] for i in batch["labels"]]
    acc = sum(p.prediction == p.gold for p in result.predictions) / 10
    assert result.metrics["acc"] == pytest.approx(acc)


def test_experiment_sets_the_lora_recipe_with_three_labels(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=lora_pubmedqa"])
    assert cfg.model._target_ == "medlm.models.classifier.lora_classifier"
    assert (cfg.model.r, cfg.model.alpha, cfg.model.dropout, list(cfg.model.targets)) == (
        8,
        32,
        0.1,
        ["c_attn", "c_proj"],
    )
    assert cfg.model.num_labels == 3 and cfg.model.block_size == cfg.data.max_length == 256
    assert cfg.data._target_.endswith("PubMedQAClassificationDataModule")
    assert cfg.data.setting == "reasoning_required" and cfg.test is True
    assert list(cfg.module.label_names) == list(LABELS)  # strings, not YAML booleans
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert cfg.callbacks.model_checkpoint.mode == "max" and cfg.callbacks.samples is None
