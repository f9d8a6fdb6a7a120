"""Question-pair DataModule: splits by original question, batches, and clear errors for bad rows."""

from __future__ import annotations

import pytest
import torch

from medlm.data.question_pairs import (
    DEFAULT_TEMPLATE,
    QuestionPairsDataModule,
    encode_pair,
    read_pairs_csv,
)
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError, MedlmError

GPT2 = load_tokenizer("gpt2")
GPT2_EOT, encode, decode = GPT2.eot_id, GPT2.encode, GPT2.decode


def _write_csv(path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def _synthetic_rows(n_questions: int) -> list[str]:
    rows = []
    for i in range(n_questions):
        rows.append(f'{i % 3},What helps with pain number {i}?,"How can I ease pain, case {i}?",1')
        rows.append(f"{i % 3},What helps with pain number {i}?,Is fever {i} contagious?,0")
    return rows


@pytest.mark.shared_data
def test_real_csv_no_original_question_crosses_splits(shared_data_dir, monkeypatch):
    monkeypatch.setenv("MEDLM_DATA_DIR", str(shared_data_dir))
    dm = QuestionPairsDataModule(seed=1337)
    assert dm.source.files == (shared_data_dir / "medical_question_pairs" / "mqp.csv",)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 3048
    assert abs(sizes["val"] - 305) <= 2 and abs(sizes["test"] - 305) <= 2, sizes
    questions = {k: {p.question_1 for p in v} for k, v in dm.splits.items()}
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    for split in dm.splits.values():  # both pairs of every original question are in its split
        counts: dict[str, int] = {}
        for p in split:
            counts[p.question_1] = counts.get(p.question_1, 0) + 1
        assert set(counts.values()) == {2}
    labels = [p.label for p in dm.splits["train"]]
    assert labels.count(0) == labels.count(1)  # each question: one similar, one different

    again = QuestionPairsDataModule(seed=1337)
    again.setup()
    assert [p.source for p in again.splits["test"]] == [p.source for p in dm.splits["test"]]
    other = QuestionPairsDataModule(seed=7)
    other.setup()
    assert [p.source for p in other.splits["test"]] != [p.source for p in dm.splits["test"]]

    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    B, T = batch["input_ids"].shape
    assert B == 16 and T <= 128 and batch["labels"].shape == (16,)
    assert (
        batch["input_ids"].dtype
        == batch["attention_mask"].dtype
        == batch["labels"].dtype
        == torch.long
    )
    assert (batch["input_ids"][batch["attention_mask"] == 0] == GPT2_EOT).all()
    lengths = batch["attention_mask"].sum(1)
    assert (
        batch["attention_mask"] == (torch.arange(T)[None] < lengths[:, None]).long()
    ).all()  # right-padded
    first = decode(batch["input_ids"][0, : lengths[0]].tolist())
    p = dm.splits["val"][0]
    assert first == DEFAULT_TEMPLATE.format(question_1=p.question_1, question_2=p.question_2)
    assert all(len(ids) <= 128 for ids, _ in dm.datasets["train"].examples)


def test_overlong_pair_is_cut_inside_the_questions():
    q1, q2 = "short question?", " ".join(["word"] * 300)
    ids = encode_pair(DEFAULT_TEMPLATE, q1, q2, max_length=40, tokenizer=GPT2)
    assert len(ids) <= 40
    text = decode(ids)
    assert text.startswith("Question 1: short question?\nQuestion 2: word word")
    assert text.endswith("\nSame meaning:")
    short = DEFAULT_TEMPLATE.format(question_1="a?", question_2="b?")
    assert encode_pair(DEFAULT_TEMPLATE, "a?", "b?", 40, GPT2) == encode(
        short
    )  # short pairs are untouched


def test_synthetic_csv_splits_and_header(tmp_path):
    path = _write_csv(
        tmp_path / "pairs.csv", ["dr_id,question_1,question_2,label"] + _synthetic_rows(50)
    )
    pairs = read_pairs_csv(path)
    assert len(pairs) == 100 and pairs[0].source == f"{path}:2"
    assert pairs[0].question_2 == "How can I ease pain, case 0?"
    dm = QuestionPairsDataModule(path=path, val_fraction=0.2, test_fraction=0.2, batch_size=4)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 60, "val": 20, "test": 20}
    batches = list(dm.train_dataloader())
    assert sum(len(b["labels"]) for b in batches) == 60


@pytest.mark.parametrize(
    "bad_row, problem",
    [
        ("4,What is a rash?,Is a rash bad?", "expected 4 columns"),
        ("4,What is a rash?,Is a rash bad?,2", "label must be 0 or 1, got '2'"),
        ("4,What is a rash?,Is a rash bad?,yes", "label must be 0 or 1"),
        ("4,   ,Is a rash bad?,1", "question 1 is empty"),
        ("4,What is a rash?,,0", "question 2 is empty"),
    ],
)
def test_bad_csv_row_names_file_and_line(tmp_path, bad_row, problem):
    rows = [
        '1,"A question that spans\ntwo lines?",Another one?,1',
        "1,Q?,R?,0",
        bad_row,
        "2,S?,T?,1",
    ]
    path = _write_csv(tmp_path / "mqp.csv", rows)
    with pytest.raises(DataError, match=problem) as err:
        QuestionPairsDataModule(path=path).setup()
    assert f"{path}:4:" in str(
        err.value
    )  # the quoted field spans lines 1-2, so the bad row is line 4


def test_missing_sources_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        QuestionPairsDataModule(path=str(tmp_path / "absent.csv")).setup()
    monkeypatch.setenv(
        "MEDLM_DATA_DIR", str(tmp_path)
    )  # no mqp.csv there -> the Hub, offline in tests
    with pytest.raises(
        MedlmError, match="curaihealth/medical_questions_pairs.*set data.path=.*mqp.csv"
    ):
        QuestionPairsDataModule().setup()
    with pytest.raises(DataError, match="no question pairs"):
        read_pairs_csv(_write_csv(tmp_path / "empty.csv", [""]))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"template": "Q: {question_1} {answer}"}, "data.template"),
        ({"template": "Only {question_1}:"}, "data.template"),
        ({"max_length": 5}, "data.template alone"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
    ],
)
def test_bad_config_is_refused_before_reading(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        QuestionPairsDataModule(path="/nonexistent.csv", **kwargs)
