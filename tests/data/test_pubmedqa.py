"""PubMedQA DataModule: the real PQA-L file, the authors' test split, Hub exports and every bad
input."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from medlm.data import packing, pubmedqa
from medlm.data.packing import EpochShuffleSampler
from medlm.data.pubmedqa import (
    DEFAULT_TEMPLATE,
    PubMedQADataModule,
    PubMedQARecord,
    authors_split,
    ids_digest,
)
from medlm.data.sources import HubSource, LocalSource
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError, MedlmError

GPT2 = load_tokenizer("gpt2")
GPT2_EOT, encode = GPT2.eot_id, GPT2.encode

# sha256 of "\n".join(sorted ids) of data/test_ground_truth.json in github.com/pubmedqa/pubmedqa
AUTHORS_TEST_SHA256 = "406e3b89eff577ed38571eca5a5819734a6f49ac0437d171b6c64e5c3cd195f8"
UNREACHABLE = (
    "cannot reach the Hugging Face Hub for qiaojin/PubMedQA (pqa_labeled) and no local data is "
    "configured: set data.path=/path/to/ori_pqal.json or MEDLM_DATA_DIR=/path/to/data (with "
    "pubmedqa/ori_pqal.json)"
)


# ------------------------------------------------------------------------------ synthetic files


def ori_record(i: int, decision: str | None = "yes") -> dict:
    """A record as in the authors' ori_pqal.json."""
    rec = {
        "QUESTION": f"Does treatment {i} reduce mortality?",
        "CONTEXTS": [f"Background of study {i}.", f"Methods and results of study {i}."],
        "LABELS": ["BACKGROUND", "METHODS"],
        "MESHES": ["Humans"],
        "YEAR": "2001",
        "reasoning_required_pred": "yes",
        "reasoning_free_pred": "yes",
        "final_decision": decision,
        "LONG_ANSWER": f"Treatment {i} reduced mortality.",
    }
    if decision is None:
        del rec["final_decision"]
    return rec


def hub_row(i: int, decision: str | None = "yes") -> dict:
    """The same record as the Hub's pqa_* configs hold it."""
    o = ori_record(i, decision)
    row = {
        "pubid": 1000 + i,
        "question": o["QUESTION"],
        "context": {"contexts": o["CONTEXTS"], "labels": o["LABELS"], "meshes": o["MESHES"]},
        "long_answer": o["LONG_ANSWER"],
    }
    if decision is not None:
        row["final_decision"] = decision
    return row


def write_ori(path: Path, records: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=4))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_ori(tmp_path: Path, n: int = 12) -> Path:
    labels = ["yes", "no", "maybe"]
    return write_ori(
        tmp_path / "ori_pqal.json", {str(1000 + i): ori_record(i, labels[i % 3]) for i in range(n)}
    )


def dm_for(path, tmp_path: Path, **kw) -> PubMedQADataModule:
    kw.setdefault("block_size", 8)
    kw.setdefault("val_fraction", 0.25)
    return PubMedQADataModule(path=str(path), cache_dir=str(tmp_path / "cache"), **kw)


def raising_tokenizer(*args, **kwargs):
    raise AssertionError("tokenised although the cache should have been used")


# ------------------------------------------------------------------------------ real PQA-L


@pytest.fixture(scope="module")
def real_dm(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PubMedQADataModule:
    """The real 1,000 records, tokenised once for the module (directory form of data.path)."""
    dm = PubMedQADataModule(
        path=str(shared_data_dir / "pubmedqa"), cache_dir=str(tmp_path_factory.mktemp("pqa-cache"))
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.shared_data
def test_local_file_is_found_through_medlm_data_dir(
    shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDLM_DATA_DIR", str(shared_data_dir))
    dm = PubMedQADataModule(cache_dir=str(tmp_path))
    assert dm.source == LocalSource((shared_data_dir / "pubmedqa" / "ori_pqal.json",))
    records = dm.records()
    assert len(records) == 1000 and len({r.pubid for r in records}) == 1000
    first = records[0]
    assert first.pubid == "21645374"
    assert first.question.startswith("Do mitochondria play a role in remodelling lace plant leaves")
    assert first.final_decision == "yes" and len(first.contexts) >= 2
    assert Counter(r.final_decision for r in records) == {"yes": 552, "no": 338, "maybe": 110}


@pytest.mark.shared_data
def test_split_is_by_record_seeded_and_deterministic(
    real_dm: PubMedQADataModule, tmp_path: Path
) -> None:
    train, val = real_dm.train_val_records()
    assert (len(train), len(val)) == (980, 20)
    assert {r.pubid for r in train}.isdisjoint(r.pubid for r in val)
    assert len({r.pubid for r in train + val}) == 1000

    again = PubMedQADataModule(path=real_dm.path, cache_dir=str(tmp_path))
    assert [r.pubid for r in again.train_val_records()[1]] == [r.pubid for r in val]
    other_seed = PubMedQADataModule(path=real_dm.path, cache_dir=str(tmp_path), seed=7)
    assert [r.pubid for r in other_seed.train_val_records()[1]] != [r.pubid for r in val]
    bigger = PubMedQADataModule(path=real_dm.path, cache_dir=str(tmp_path), val_fraction=0.1)
    assert len(bigger.train_val_records()[1]) == 100


@pytest.mark.shared_data
def test_tokens_are_templated_records_separated_by_end_of_text(real_dm: PubMedQADataModule) -> None:
    train, val = real_dm.train_val_records()
    train_tokens, val_tokens = real_dm.train_dataset.tokens, real_dm.val_dataset.tokens
    assert train_tokens.dtype == np.uint16
    assert (
        int((train_tokens == GPT2_EOT).sum()) == 980 and int((val_tokens == GPT2_EOT).sum()) == 20
    )
    text = val[0].format(DEFAULT_TEMPLATE)
    assert text.startswith(
        f"Question: {val[0].question}\nContext: {' '.join(val[0].contexts)}\nAnswer: "
    )
    assert text.endswith(f"\nDecision: {val[0].final_decision}")
    first = encode(text) + [GPT2_EOT]
    assert val_tokens[: len(first)].tolist() == first
    assert train_tokens[-1] == GPT2_EOT


@pytest.mark.shared_data
def test_blocks_and_loaders(real_dm: PubMedQADataModule) -> None:
    ds = real_dm.train_dataset
    assert real_dm.block_size == 128
    assert len(ds) == (len(ds.tokens) - 1) // 128
    batch = next(iter(real_dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (8, 128)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    # the shifted label of a block's last position is the next block's first token
    i = 5
    assert ds[i]["labels"][-1] == ds[i + 1]["input_ids"][0]

    val_first = [b["input_ids"] for b in real_dm.val_dataloader()]
    assert torch.equal(val_first[0][0], real_dm.val_dataset[0]["input_ids"])  # not shuffled
    assert sum(len(b) for b in val_first) == len(real_dm.val_dataset)


@pytest.mark.shared_data
def test_train_order_is_seeded_and_changes_per_epoch(real_dm: PubMedQADataModule) -> None:
    order = (
        real_dm.train_dataloader().batch_sampler.sampler
    )  # the resumable loader batches this order
    order.set_epoch(0)
    epoch0 = list(order)
    order.set_epoch(1)
    epoch1 = list(order)
    assert epoch0 != epoch1 and sorted(epoch0) == list(range(len(real_dm.train_dataset)))
    fresh = real_dm.train_dataloader()
    assert list(fresh.batch_sampler.sampler) == epoch0
    assert torch.equal(
        next(iter(real_dm.train_dataloader()))["input_ids"][0],
        real_dm.train_dataset[epoch0[0]]["input_ids"],
    )


@pytest.mark.shared_data
def test_second_setup_reads_the_cache_without_tokenising(
    real_dm: PubMedQADataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packing, "tokenize_texts", raising_tokenizer)
    again = PubMedQADataModule(path=real_dm.path, cache_dir=str(real_dm.cache.dir))
    again.prepare_data()
    again.setup("fit")
    assert np.array_equal(again.train_dataset.tokens, real_dm.train_dataset.tokens)
    assert np.array_equal(again.val_dataset.tokens, real_dm.val_dataset.tokens)

    calls = []
    monkeypatch.setattr(
        packing, "tokenize_texts", lambda texts, tok: calls.append(tok) or np.arange(300)
    )
    changed = PubMedQADataModule(
        path=real_dm.path, cache_dir=str(real_dm.cache.dir), template="{question} {long_answer}"
    )
    changed.setup("fit")
    assert len(calls) == 2  # a new template is a new key: train and val are tokenised again


def test_a_cached_run_never_reads_or_parses_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache key needs only the source's identity and the settings: with the tokens cached,
    neither reading the JSON nor parsing a record happens (seconds for pqa_artificial)."""
    path = small_ori(tmp_path, n=40)
    first = dm_for(path, tmp_path)
    first.prepare_data()
    first.setup("fit")

    def never(*args, **kwargs):
        raise AssertionError("the source was read although its tokens are cached")

    monkeypatch.setattr(LocalSource, "records", never)
    monkeypatch.setattr(pubmedqa, "load_records", never)
    monkeypatch.setattr(pubmedqa, "parse_record", never)
    monkeypatch.setattr(packing, "tokenize_texts", raising_tokenizer)
    again = dm_for(path, tmp_path)
    again.prepare_data()
    again.setup("fit")
    assert np.array_equal(again.train_dataset.tokens, first.train_dataset.tokens)
    assert np.array_equal(again.val_dataset.tokens, first.val_dataset.tokens)
    with pytest.raises(AssertionError, match="source was read"):  # a new seed: a new split
        dm_for(path, tmp_path, seed=7).prepare_data()


@pytest.mark.shared_data
def test_sample_prompts_are_the_first_validation_questions(
    real_dm: PubMedQADataModule, tmp_path: Path
) -> None:
    prompts = real_dm.sample_prompts()
    val = real_dm.train_val_records()[1]
    assert len(prompts) == 3
    for prompt, record in zip(prompts, val):
        assert prompt == f"Question: {record.question}\nContext: {record.context}\nAnswer:"
        assert record.long_answer not in prompt
    assert real_dm.sample_records() == val[:3]
    refs = real_dm.sample_references()
    assert refs == [f"{r.long_answer}\nDecision: {r.final_decision}" for r in val[:3]]
    assert (
        PubMedQADataModule(path=real_dm.path, cache_dir=str(tmp_path)).sample_prompts() == prompts
    )
    assert len(real_dm.sample_prompts(5)) == 5 and len(real_dm.sample_prompts(100)) == 20


@pytest.mark.shared_data
def test_official_test_split_is_the_authors(real_dm: PubMedQADataModule) -> None:
    test = real_dm.official_test_split()
    ids = [r.pubid for r in test]
    assert len(ids) == 500 == len(set(ids))
    assert ids_digest(ids) == AUTHORS_TEST_SHA256
    assert Counter(r.final_decision for r in test) == {"yes": 276, "no": 169, "maybe": 55}
    # the authors list yes, then no, then maybe, each in their shuffled order
    assert ids[:3] == ["12377809", "26163474", "19100463"]
    assert (
        ids[276:278] == ["24577079", "24669960"]
        and ids[445] == "18284441"
        and ids[-1] == "26134053"
    )
    by_id = {r.pubid: r for r in real_dm.records()}
    assert all(by_id[r.pubid] == r for r in test)

    real_dm.setup("test")
    batch = next(iter(real_dm.test_dataloader()))
    assert batch["input_ids"].shape == (8, 128)
    assert int((real_dm.test_dataset.tokens == GPT2_EOT).sum()) == 500


@pytest.mark.shared_data
def test_exclude_official_test_trains_on_the_other_500(
    real_dm: PubMedQADataModule, tmp_path: Path
) -> None:
    dm = PubMedQADataModule(path=real_dm.path, cache_dir=str(tmp_path), exclude_official_test=True)
    train, val = dm.train_val_records()
    test_ids = {r.pubid for r in real_dm.official_test_split()}
    assert (len(train), len(val)) == (490, 10)
    assert test_ids.isdisjoint(r.pubid for r in train + val)


# ------------------------------------------------------------------------------ the authors' split


def test_authors_split_is_stratified_and_balances_the_last_fold() -> None:
    # the authors' 10-fold CV case: 500 records give chunks of 28 yes, 17 no, 6 maybe and a last
    # fold of 24 + 16 + 1 = 41 ("imbalanced: [51, ..., 41]"), which then takes one from each other
    # fold
    labels = ["yes"] * 276 + ["no"] * 169 + ["maybe"] * 55
    records = [PubMedQARecord(str(i), "q", ("c",), "a", lab) for i, lab in enumerate(labels)]
    folds = authors_split(records, 10, random.Random(0))
    assert sorted(int(r.pubid) for f in folds for r in f) == list(range(500))  # every record once
    assert [len(f) for f in folds] == [50] * 10
    for f in folds[:-1]:
        counts = Counter(r.final_decision for r in f)
        assert sum((Counter({"yes": 28, "no": 17, "maybe": 6}) - counts).values()) == 1
    last = Counter(r.final_decision for r in folds[-1][:41])
    assert last == {"yes": 24, "no": 16, "maybe": 1}  # the moved records come after the fold's own


def test_authors_split_in_halves_keeps_label_proportions() -> None:
    labels = ["yes"] * 10 + ["no"] * 6 + ["maybe"] * 4
    records = [PubMedQARecord(str(i), "q", ("c",), "a", lab) for i, lab in enumerate(labels)]
    a, b = authors_split(records, 2, random.Random(0))
    for half in (a, b):
        assert Counter(r.final_decision for r in half) == {"yes": 5, "no": 3, "maybe": 2}
    assert authors_split(records, 2, random.Random(0)) == [a, b]
    assert authors_split(records, 2, random.Random(1)) != [a, b]


def test_official_split_refuses_records_that_are_not_pqa_l(tmp_path: Path) -> None:
    dm = dm_for(small_ori(tmp_path), tmp_path)
    with pytest.raises(
        DataError, match=r"ori_pqal.json: these 12 records do not reproduce .* test split"
    ):
        dm.official_test_split()
    with pytest.raises(ConfigError, match="hub_config=pqa_labeled"):
        dm_for(small_ori(tmp_path), tmp_path, hub_config="pqa_artificial").official_test_split()


# ------------------------------------------------------------------------------ Hub exports


@pytest.mark.parametrize("fmt", ["jsonl", "json-lines-named-json", "parquet"])
def test_hub_exports_read_like_the_original_file(fmt: str, tmp_path: Path) -> None:
    labels = ["yes", "no", "maybe"]
    rows = [hub_row(i, labels[i % 3]) for i in range(12)]
    ds = datasets.Dataset.from_list(rows)
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    if fmt == "parquet":
        target = export_dir / "pqa_labeled" / "train-00000-of-00001.parquet"  # the Hub's own layout
        target.parent.mkdir()
        ds.to_parquet(str(target))
    else:  # Dataset.to_json writes JSON Lines, whatever the name
        target = export_dir / ("pqa_labeled.jsonl" if fmt == "jsonl" else "pqa_labeled.json")
        ds.to_json(str(target))
    from_export = dm_for(export_dir, tmp_path)
    assert from_export.source == LocalSource((target,))
    ori = {str(1000 + i): ori_record(i, labels[i % 3]) for i in range(12)}
    from_ori = dm_for(write_ori(tmp_path / "ori" / "ori_pqal.json", ori), tmp_path)
    assert from_export.records() == from_ori.records()
    from_export.setup("fit")
    assert from_export.train_dataset[0]["input_ids"].shape == (8,)


def test_hub_records_come_from_load_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEDLM_DATA_DIR", raising=False)
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([hub_row(i, "no") for i in range(6)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = PubMedQADataModule(cache_dir=str(tmp_path), revision="abc123", block_size=8)
    assert dm.source == HubSource("qiaojin/PubMedQA", "pqa_labeled", "train", "abc123")
    records = dm.records()
    assert calls == [("qiaojin/PubMedQA", "pqa_labeled", "train", "abc123")]
    assert [r.pubid for r in records] == [str(1000 + i) for i in range(6)]
    assert records[0].contexts == tuple(hub_row(0)["context"]["contexts"])
    dm.setup("fit")
    assert len(dm.train_dataset) > 0


def test_sample_references_with_a_template_that_does_not_extend_the_prompt(tmp_path: Path) -> None:
    dm = dm_for(
        small_ori(tmp_path),
        tmp_path,
        template="{long_answer} [{final_decision}] {question}",
        num_sample_questions=2,
    )
    records = dm.sample_records()
    assert len(records) == 2 and records == dm.train_val_records()[1][:2]
    assert dm.sample_references() == [
        f"{r.long_answer}\nDecision: {r.final_decision}" for r in records
    ]
    assert dm.sample_prompts(0) == [] and dm.sample_references(0) == []


def test_unlabeled_config_needs_no_decision(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pqa_unlabeled.jsonl", [hub_row(i, None) for i in range(8)])
    with pytest.raises(ConfigError, match=r"data.template uses \{final_decision\}"):
        dm_for(path, tmp_path, hub_config="pqa_unlabeled")
    dm = dm_for(
        path,
        tmp_path,
        hub_config="pqa_unlabeled",
        template="Question: {question}\nContext: {context}\nAnswer: {long_answer}",
    )
    assert all(r.final_decision is None for r in dm.records())
    assert dm.sample_references(1) == [dm.sample_records(1)[0].long_answer]
    dm.setup("fit")
    assert len(dm.train_dataset) > 0
    with pytest.raises(DataError, match="missing field 'final_decision'"):
        dm_for(path, tmp_path).records()  # the same file read as pqa_labeled


# ------------------------------------------------------------------------------ bad input


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text('{\n  "1": {"QUESTION": "q",\n    "CONTEXTS": ["c"] "LONG_ANSWER": "a"}\n}\n')
    with pytest.raises(
        DataError,
        match=r"ori_pqal.json: malformed JSON at line 3 column 23: Expecting .,. delimiter",
    ):
        dm_for(path, tmp_path).records()


@pytest.mark.parametrize("name", ["pqa_labeled.jsonl", "pqa_labeled.json"])
def test_malformed_json_lines_name_the_line(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(
        json.dumps(hub_row(1))
        + "\n"
        + json.dumps(hub_row(2))
        + "\n"
        + '{"pubid": 3, "question": \n'
    )
    with pytest.raises(DataError, match=rf"{name}: line 3 column \d+: malformed JSON"):
        dm_for(path, tmp_path).records()


@pytest.mark.parametrize("field", ["QUESTION", "CONTEXTS", "LONG_ANSWER", "final_decision"])
def test_missing_field_names_file_pubid_and_field(field: str, tmp_path: Path) -> None:
    records = {str(1000 + i): ori_record(i) for i in range(4)}
    del records["1002"][field]
    path = write_ori(tmp_path / "ori_pqal.json", records)
    with pytest.raises(DataError, match=rf"ori_pqal.json: pubid 1002: missing field '{field}'"):
        dm_for(path, tmp_path).records()


def test_missing_nested_field_in_jsonl_names_the_line(tmp_path: Path) -> None:
    rows = [hub_row(i) for i in range(4)]
    del rows[2]["context"]["contexts"]
    path = write_jsonl(tmp_path / "pqa_labeled.jsonl", rows)
    with pytest.raises(
        DataError, match=r"pqa_labeled.jsonl: line 3: pubid 1002: missing field 'context.contexts'"
    ):
        dm_for(path, tmp_path).records()


def test_wrong_field_type_is_named(tmp_path: Path) -> None:
    records = {"7": ori_record(7)}
    records["7"]["CONTEXTS"] = "one string, not a list"
    with pytest.raises(DataError, match=r"pubid 7: field 'CONTEXTS' must be a list of strings"):
        dm_for(write_ori(tmp_path / "ori_pqal.json", records), tmp_path).records()


@pytest.mark.parametrize("label", ["Yes", "unknown", ""])
def test_unknown_label_names_file_pubid_and_label(label: str, tmp_path: Path) -> None:
    records = {str(1000 + i): ori_record(i) for i in range(3)}
    records["1001"]["final_decision"] = label
    path = write_ori(tmp_path / "ori_pqal.json", records)
    with pytest.raises(
        DataError, match=rf"ori_pqal.json: pubid 1001: unknown final_decision label '{label}'"
    ):
        dm_for(path, tmp_path).records()


def test_duplicate_pubid_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pqa_labeled.jsonl", [hub_row(1), hub_row(2), hub_row(1)])
    with pytest.raises(DataError, match=r"line 3: duplicate pubid 1001 \(first at .*line 1\)"):
        dm_for(path, tmp_path).records()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("ori_pqal.json", b"{}", "no PubMedQA records found"),  # zero records
        ("pqa_labeled.jsonl", b"", "no PubMedQA records found"),
        ("pqa_labeled.jsonl", b"\n\n", "no PubMedQA records found"),
        ("pqa_labeled.jsonl", b"[1, 2]\n", "line 1: expected a record object"),
        ("ori_pqal.json", b'{"1": {"QUESTION": "\xff"}}', r"not UTF-8 text"),
        ("pqa.csv", b"a,b\n", r"unsupported file type \.csv"),
        ("pqa_labeled.parquet", b"PAR1 this is not parquet", "cannot read parquet"),
    ],
)
def test_unreadable_files_are_named(
    name: str, content: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}: {message}"):
        dm_for(path, tmp_path).records()


def test_nonexistent_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ori_pqal.json"
    with pytest.raises(DataError, match=rf"data.path={missing}: no such file or directory"):
        dm_for(missing, tmp_path).records()


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: directory holds none of ori_pqal.json"):
        dm_for(tmp_path / "empty", tmp_path).records()


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Couldn't reach 'qiaojin/PubMedQA' on the Hub (OfflineModeIsEnabled)"),
        OSError("[Errno -2] Name or service not known"),
    ],
)
def test_hub_unreachable_without_local_data(
    error: Exception, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEDLM_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", offline)
    dm = PubMedQADataModule(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(MedlmError) as info:
        dm.prepare_data()
    assert str(info.value).startswith(UNREACHABLE)
    assert type(error).__name__ in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_hub_unreachable_mentions_an_unhelpful_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDLM_DATA_DIR", str(tmp_path))  # has no pubmedqa/ folder

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'qiaojin/PubMedQA' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MedlmError, match=rf"MEDLM_DATA_DIR={tmp_path} holds none of pubmedqa/"):
        PubMedQADataModule(cache_dir=str(tmp_path / "cache")).records()


def test_real_offline_load_dataset_gives_the_hub_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not mocked: datasets itself in offline mode with an empty cache."""
    import huggingface_hub

    monkeypatch.delenv("MEDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", tmp_path / "hf-modules")
    with pytest.raises(MedlmError) as info:
        PubMedQADataModule(cache_dir=str(tmp_path / "cache")).records()
    assert str(info.value).startswith(UNREACHABLE)


def test_too_few_tokens_for_a_block_names_the_split(tmp_path: Path) -> None:
    path = small_ori(tmp_path, n=4)
    dm = dm_for(path, tmp_path, block_size=4096)
    with pytest.raises(DataError, match=r"pubmedqa train split \(.*ori_pqal.json\): empty dataset"):
        dm.setup("fit")


def test_a_single_record_cannot_be_split(tmp_path: Path) -> None:
    dm = dm_for(small_ori(tmp_path, n=1), tmp_path)
    with pytest.raises(DataError, match=r"1 record\(s\) cannot be split"):
        dm.setup("fit")


def test_failed_tokenising_leaves_no_cache_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = small_ori(tmp_path)

    def dies_midway(texts, tokenizer):
        next(iter(texts))
        raise KeyboardInterrupt

    monkeypatch.setattr(packing, "tokenize_texts", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        dm_for(path, tmp_path).prepare_data()
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []
    monkeypatch.undo()
    dm = dm_for(path, tmp_path)
    dm.prepare_data()
    assert sorted(p.name.split("-")[1] for p in cache.glob("*.npy")) == ["train", "val"]
    assert not list(cache.glob(".*"))


def test_changed_file_is_tokenised_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_ori(tmp_path)
    dm_for(path, tmp_path).setup("fit")
    monkeypatch.setattr(packing, "tokenize_texts", raising_tokenizer)
    dm_for(path, tmp_path).setup("fit")  # unchanged: cached
    records = json.loads(path.read_text())
    records["1000"]["LONG_ANSWER"] = "Edited, and longer than before."
    write_ori(path, records)
    with pytest.raises(AssertionError, match="tokenised although"):
        dm_for(path, tmp_path).setup("fit")


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"block_size": 0}, "data.block_size"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"num_sample_questions": -2}, "data.num_sample_questions"),
        ({"hub_config": "pqa_other"}, "data.hub_config"),
        ({"template": "{question} {answer}"}, "data.template"),
        ({"template": "{question"}, "data.template"),
        ({"template": ""}, "data.template"),
        ({"prompt_template": "{0}"}, "data.prompt_template"),
        (
            {"hub_config": "pqa_artificial", "exclude_official_test": True},
            "data.exclude_official_test",
        ),
    ],
)
def test_bad_settings_fail_before_reading_data(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        PubMedQADataModule(path="/does/not/matter", **kwargs)


def test_lightning_fit_uses_the_datamodule_and_reshuffles_per_epoch(tmp_path: Path) -> None:
    """Lightning drives prepare_data/setup/loaders and calls set_epoch, so epoch orders are
    reproducible."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.seen: list[tuple[int, torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["input_ids"].clone()))
            return (self.w * batch["labels"].float().mean()).square()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = dm_for(small_ori(tmp_path, n=24), tmp_path, batch_size=64)
    model = Recorder()
    L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(model, dm)
    per_epoch = {e: torch.cat([x for epoch, x in model.seen if epoch == e]) for e in (0, 1)}
    for epoch, inputs in per_epoch.items():
        sampler = EpochShuffleSampler(len(dm.train_dataset), dm.seed)
        sampler.set_epoch(epoch)
        expected = torch.stack([dm.train_dataset[i]["input_ids"] for i in sampler])
        assert torch.equal(inputs, expected)
    assert not torch.equal(per_epoch[0], per_epoch[1])
