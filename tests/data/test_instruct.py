"""Instruction DataModule: answer-only labels, packing that keeps examples apart, truncation,
sources (Alpaca JSONL, HelpSteer JSONL/parquet, the Hub), caching and every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from medlm.data import instruct
from medlm.data.instruct import InstructionDataModule, split_by_prompt
from medlm.data.masked_examples import IGNORE_INDEX, fit_examples, pack_best_fit
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError, MedlmError
from medlm.models.gpt2 import GPT2, GPT2Config
from medlm.modules.causal_lm import CausalLM

TOKENIZER = load_tokenizer("gpt2")
GPT2_EOT, encode, decode = TOKENIZER.eot_id, TOKENIZER.encode, TOKENIZER.decode

# The Stanford Alpaca prompts, written out here rather than imported, so that a change to the
# template in the code shows up as a failure.
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. "
    "Write a response that appropriately completes the request.\n\n### "
    "Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca(i: int, with_input: bool = False) -> dict:
    rec = {
        "instruction": f"What is condition {i}?",
        "input": "",
        "output": f"Condition {i} is a disease of organ {i % 7}.",
    }
    if with_input:
        rec["input"] = f"Patient note {i}: fever."
    return rec


def expected_prompt(rec: dict) -> str:
    template = WITH_INPUT if rec.get("input") else NO_INPUT
    return template.format(instruction=rec["instruction"], input=rec.get("input", ""))


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def alpaca_dir(tmp_path: Path, n_train: int = 12, n_val: int = 4, n_test: int = 0) -> Path:
    d = tmp_path / "alpaca"
    write_jsonl(d / "train.jsonl", [alpaca(i, i % 2 == 0) for i in range(n_train)])
    write_jsonl(d / "val.jsonl", [alpaca(100 + i, i % 2 == 1) for i in range(n_val)])
    if n_test:
        write_jsonl(d / "test.jsonl", [alpaca(200 + i) for i in range(n_test)])
    return d


def dm_for(tmp_path: Path, **kw) -> InstructionDataModule:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("block_size", 128)
    kw.setdefault("batch_size", 4)
    return InstructionDataModule(**kw)


def segments(doc_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(doc id, start, end) of each run of equal ids in one row."""
    out, start = [], 0
    ids = doc_ids.tolist()
    for t in range(1, len(ids) + 1):
        if t == len(ids) or ids[t] != ids[start]:
            out.append((ids[start], start, t))
            start = t
    return out


def check_example(inputs: list[int], labels: list[int], rec: dict) -> None:
    """One example's positions: the prompt's targets carry -100, the answer's are the answer +
    eot."""
    prompt, answer = encode(expected_prompt(rec)), encode(rec["output"])
    full = prompt + answer + [GPT2_EOT]
    assert inputs == full[:-1]
    assert labels[: len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
    assert (
        labels[len(prompt) - 1 :] == full[len(prompt) :]
    )  # the prompt's last token predicts the answer
    assert decode(inputs[: len(prompt)]) == expected_prompt(
        rec
    )  # every -100 target is a prompt token
    assert decode(labels[len(prompt) - 1 : -1]) == rec["output"] and labels[-1] == GPT2_EOT


# ------------------------------------------------------------------------------ labels


def test_padded_labels_are_minus_100_exactly_on_prompt_tokens_and_padding(tmp_path: Path) -> None:
    d = alpaca_dir(tmp_path)
    dm = dm_for(tmp_path, path=str(d), packing=False)
    val = [json.loads(line) for line in (d / "val.jsonl").read_text().splitlines()]
    batch = next(iter(dm.val_dataloader()))
    assert (
        set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == batch["labels"].shape
    )
    for row, rec in enumerate(val):
        n = len(encode(expected_prompt(rec))) + len(
            encode(rec["output"])
        )  # positions = tokens - 1 (the eot)
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        check_example(ids[:n], labels[:n], rec)
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)  # right padding carries no loss
        assert ids[n:] == [GPT2_EOT] * (len(ids) - n)
    assert batch["input_ids"].shape[1] == max(
        len(encode(expected_prompt(r))) + len(encode(r["output"])) for r in val
    )


def test_packed_blocks_hold_whole_masked_examples_with_document_ids(tmp_path: Path) -> None:
    d = alpaca_dir(tmp_path, n_train=20)
    dm = dm_for(tmp_path, path=str(d), block_size=160)
    records = {
        expected_prompt(r): r
        for r in (json.loads(x) for x in (d / "train.jsonl").read_text().splitlines())
    }
    dm.setup("fit")
    ds = dm.datasets["train"]
    seen = []
    for i in range(len(ds)):
        item = ds[i]
        assert all(
            item[k].shape == (160,) and item[k].dtype == torch.long
            for k in ("input_ids", "labels", "doc_ids")
        )
        segs = segments(item["doc_ids"])
        assert len(segs) >= 2  # about 50 positions each: several per block
        for k, (doc, start, end) in enumerate(segs):
            ids, labels = item["input_ids"][start:end].tolist(), item["labels"][start:end].tolist()
            if end == 160 and labels == [IGNORE_INDEX] * (end - start) and doc == len(segs) - 1:
                assert k == len(segs) - 1  # the padding tail: its own id, no loss
                continue
            assert doc == k
            prompt_text = decode(ids)[
                : decode(ids).index("### Response:\n") + len("### Response:\n")
            ]
            rec = records[prompt_text]
            check_example(ids, labels, rec)
            seen.append(rec["instruction"])
    assert sorted(seen) == sorted(
        r["instruction"] for r in records.values()
    )  # each example exactly once
    positions = sum(len(encode(p)) + len(encode(r["output"])) for p, r in records.items())
    assert ds.fill() == pytest.approx(positions / (len(ds) * 160))


def test_input_and_no_input_prompts_follow_the_configured_template(tmp_path: Path) -> None:
    d = alpaca_dir(tmp_path)
    dm = dm_for(tmp_path, path=str(d))
    val = [json.loads(x) for x in (d / "val.jsonl").read_text().splitlines()]
    assert dm.sample_prompts(2) == [expected_prompt(val[0]), expected_prompt(val[1])]
    assert "### Input:\nPatient note 101: fever.\n\n" in dm.sample_prompts(2)[1]
    assert "### Input:" not in dm.sample_prompts(1)[0]
    assert dm.sample_references(2) == [val[0]["output"], val[1]["output"]]

    custom = {
        "prompt_input": "Q: {instruction} [{input}]\nA:",
        "prompt_no_input": "Q: {instruction}\nA:",
    }
    dm2 = dm_for(tmp_path, path=str(d), template=custom, packing=False)
    assert dm2.sample_prompts(2) == [
        "Q: What is condition 100?\nA:",
        "Q: What is condition 101? [Patient note 101: fever.]\nA:",
    ]
    x = dm2.datasets.get("val") or dm2.build_dataset("val")
    first = x[0]
    n_prompt = len(encode("Q: What is condition 100?\nA:"))
    assert (
        first["labels"][: n_prompt - 1].eq(IGNORE_INDEX).all()
        and first["labels"][n_prompt - 1] != IGNORE_INDEX
    )
    assert decode(first["labels"][n_prompt - 1 : -1].tolist()) == val[0]["output"]


# ------------------------------------------------------------------------------ attention


def tiny_lm(block_size: int = 128) -> CausalLM:
    torch.manual_seed(0)
    net = GPT2(GPT2Config(block_size=block_size, vocab_size=50257, n_layer=2, n_head=2, n_embd=32))
    return CausalLM(net, optimizer=torch.optim.AdamW).eval()


def test_packed_examples_cannot_attend_across_their_boundary(tmp_path: Path) -> None:
    dm = dm_for(tmp_path, path=str(alpaca_dir(tmp_path)), block_size=128)
    dm.setup("fit")
    ds = dm.datasets["train"]
    item = ds[0]
    # the example boundaries from the packing plan, not from doc_ids (which are under test)
    first, second = (int(ds.rows[j, 2]) - 1 for j in ds.blocks[0][:2])  # positions of each example
    s0, e0, s1, e1 = 0, first, first, first + second
    assert item["doc_ids"][s0:e0].unique().tolist() == [0] and item["doc_ids"][
        s1:e1
    ].unique().tolist() == [1]
    ids, docs = item["input_ids"][None], item["doc_ids"][None]
    changed = ids.clone()
    changed[0, s0:e0] = torch.randint(
        0, 50000, (e0 - s0,), generator=torch.Generator().manual_seed(1)
    )
    model = tiny_lm()
    with torch.no_grad():
        before, after = model(ids, docs), model(changed, docs)
        alone = model(ids[:, s1:e1])  # the second example by itself, positions from 0
        plain_before, plain_after = model(ids), model(changed)
    assert not torch.allclose(before[0, s0:e0], after[0, s0:e0])  # the first example did change
    torch.testing.assert_close(after[0, s1:e1], before[0, s1:e1], rtol=0, atol=1e-5)
    torch.testing.assert_close(before[0, s1:e1], alone[0], rtol=1e-4, atol=1e-4)
    # the control: without doc_ids the second example sees the first
    assert (plain_after[0, s1:e1] - plain_before[0, s1:e1]).abs().max() > 1e-3


def test_packed_and_padded_batches_give_the_same_answer_token_loss(tmp_path: Path) -> None:
    d = alpaca_dir(tmp_path, n_train=4, n_val=9)
    model = tiny_lm()

    def mean_loss(packing: bool) -> tuple[float, int]:
        dm = dm_for(tmp_path, path=str(d), packing=packing, block_size=128, batch_size=3)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                loss, n = model.loss(batch)
                total, count = total + float(loss) * int(n), count + int(n)
        return total / count, count

    packed, padded = mean_loss(True), mean_loss(False)
    val = [json.loads(x) for x in (d / "val.jsonl").read_text().splitlines()]
    assert (
        packed[1] == padded[1] == sum(len(encode(r["output"])) + 1 for r in val)
    )  # answer tokens + eot
    assert packed[0] == pytest.approx(padded[0], rel=1e-5)
    assert packed[0] == pytest.approx(math.log(50257), abs=0.5)  # an untrained model: near uniform


# ------------------------------------------------------------------------------ lengths and packing


def test_best_fit_packing_places_every_example_once_within_the_block() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=300).tolist()
    blocks = pack_best_fit(lengths, 100)
    assert sorted(i for b in blocks for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 100 for b in blocks)
    assert all(b == sorted(b) for b in blocks)
    assert len(blocks) <= math.ceil(sum(lengths) / 100) * 1.1  # close to the bound
    assert pack_best_fit(lengths, 100) == blocks
    with pytest.raises(ValueError):
        pack_best_fit([101], 100)


def test_overlong_examples_are_truncated_or_dropped() -> None:
    index = np.array([[5, 10], [5, 11], [5, 12], [8, 20], [11, 15], [10, 14]])  # (prompt, total)
    rows, counts = fit_examples(index, 10, "truncate")
    assert rows[:, 2].tolist() == [10, 11, 11, 11, 11]  # at most block_size + 1 tokens
    assert rows[:, 0].tolist() == [0, 10, 21, 33, 68]  # where each kept example starts
    assert counts == {
        "examples": 6,
        "kept": 5,
        "truncated": 3,
        "dropped_long": 0,
        "dropped_long_prompt": 1,
    }
    rows, counts = fit_examples(index, 10, "drop")
    assert rows[:, 2].tolist() == [10, 11]
    assert counts == {
        "examples": 6,
        "kept": 2,
        "truncated": 0,
        "dropped_long": 3,
        "dropped_long_prompt": 1,
    }


def test_truncated_answer_keeps_the_prompt_masked_and_fills_the_block(tmp_path: Path) -> None:
    long = {"instruction": "Explain everything.", "input": "", "output": " ".join(["word"] * 300)}
    short = alpaca(1)
    huge_prompt = {"instruction": "x " * 400, "input": "", "output": "ok"}
    write_jsonl(tmp_path / "d" / "train.jsonl", [long, short, huge_prompt])
    write_jsonl(tmp_path / "d" / "val.jsonl", [long, short, huge_prompt])
    dm = dm_for(tmp_path, path=str(tmp_path / "d"), block_size=64, packing=False)
    ds = dm.build_dataset("val")
    assert len(ds) == 2  # the prompt of 400+ tokens leaves no room for an answer
    item = ds[0]
    n_prompt = len(encode(expected_prompt(long)))
    assert len(item["input_ids"]) == 64 and item["labels"][: n_prompt - 1].eq(IGNORE_INDEX).all()
    assert (
        item["labels"][-1] != GPT2_EOT
        and (item["labels"] != IGNORE_INDEX).sum() == 64 - n_prompt + 1
    )
    dropped = dm_for(
        tmp_path, path=str(tmp_path / "d"), block_size=64, overlong="drop"
    ).build_dataset("val")
    assert len(dropped) == 1 and dropped.rows[:, 2].tolist() == [
        len(encode(expected_prompt(short) + short["output"])) + 1
    ]


# ------------------------------------------------------------------------------ sources and splits


def test_one_file_is_split_by_prompt_seeded(tmp_path: Path) -> None:
    rows = [alpaca(i // 2) | {"output": f"answer {i}"} for i in range(40)]  # two answers per prompt
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    dm = dm_for(tmp_path, path=str(path), val_fraction=0.25)
    train, val = dm.records("train"), dm.records("val")
    assert len(val) == 10 and len(train) == 30
    assert {r.instruction for r in train}.isdisjoint(r.instruction for r in val)
    again = dm_for(tmp_path, path=str(path), val_fraction=0.25, seed=1337)
    assert again.sample_prompts(3) == dm.sample_prompts(3) and len(dm.sample_prompts()) == 3
    other = dm_for(tmp_path, path=str(path), val_fraction=0.25, seed=2)
    assert [r.instruction for r in other.records("val")] != [r.instruction for r in val]
    assert not dm.has_split("test")
    with pytest.raises(DataError, match="no test split"):
        dm.test_dataloader()
    with pytest.raises(DataError, match="at least 2"):
        split_by_prompt(train[:2], 0.5, 0)  # two records, one prompt


def test_split_files_and_explicit_paths(tmp_path: Path) -> None:
    d = alpaca_dir(tmp_path, n_test=3)
    dm = dm_for(tmp_path, path=str(d))
    assert [len(dm.records(s)) for s in ("train", "val", "test")] == [12, 4, 3]
    assert len(next(iter(dm.test_dataloader()))["input_ids"]) >= 1
    one_by_one = dm_for(tmp_path, train_path=str(d / "train.jsonl"), val_path=str(d / "test.jsonl"))
    assert one_by_one.sample_references(1) == [alpaca(200)["output"]]
    with pytest.raises(DataError, match="data.val_path=.*nope.jsonl: no such file"):
        dm_for(tmp_path, train_path=str(d / "train.jsonl"), val_path=str(d / "nope.jsonl")).records(
            "val"
        )


def test_medlm_data_dir_subdir_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alpaca_dir(tmp_path / "root")
    monkeypatch.setenv("MEDLM_DATA_DIR", str(tmp_path / "root"))
    dm = dm_for(tmp_path)  # subdir "alpaca"
    assert len(dm.records("train")) == 12
    monkeypatch.delenv("MEDLM_DATA_DIR")
    with pytest.raises(ConfigError, match="no instruction data configured"):
        dm_for(tmp_path).records("train")


def helpsteer_row(i: int, helpfulness: int) -> dict:
    return {
        "prompt": f"Summarise note {i // 2}.",
        "response": f"Response {i} about note {i // 2}.",
        "helpfulness": helpfulness,
        "correctness": 3,
        "coherence": 4,
        "complexity": 1,
        "verbosity": 1,
    }


HELPSTEER = dict(
    fields={"instruction": "prompt", "input": None, "output": "response"}, subdir="helpsteer"
)


def test_helpsteer_jsonl_and_parquet_go_through_the_same_datamodule(tmp_path: Path) -> None:
    d = tmp_path / "helpsteer"
    train = [helpsteer_row(i, i % 5) for i in range(20)]
    val = [helpsteer_row(100 + i, 4) for i in range(4)]
    write_jsonl(d / "train.jsonl", train)
    pq.write_table(pa.Table.from_pylist(val), d / "validation.parquet")
    dm = dm_for(tmp_path, path=str(d), **HELPSTEER)
    assert dm.sample_prompts(1) == [NO_INPUT.format(instruction="Summarise note 50.")]
    assert dm.sample_references(2) == ["Response 100 about note 50.", "Response 101 about note 50."]
    assert len(dm.records("train")) == 20
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "doc_ids"}

    helpful = dm_for(tmp_path, path=str(d), min_values={"helpfulness": 3}, **HELPSTEER)
    assert [r.output for r in helpful.records("train")] == [
        r["response"] for r in train if r["helpfulness"] >= 3
    ]

    # the Hub's own layout: data/train-*.parquet
    hub_layout = tmp_path / "hub" / "data"
    hub_layout.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(train), hub_layout / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(val), hub_layout / "validation-00000-of-00001.parquet")
    from_hub_files = dm_for(tmp_path, path=str(tmp_path / "hub"), **HELPSTEER)
    assert from_hub_files.sample_prompts(4) == dm.sample_prompts(4)


def test_hub_records_come_from_load_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLM_DATA_DIR", raising=False)
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kw):
        calls.append((path, name, split))
        rows = [helpsteer_row(i, 4) for i in range(10 if split == "train" else 3)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = dm_for(
        tmp_path,
        hub_id="nvidia/HelpSteer",
        hub_splits={"train": "train", "val": "validation"},
        **HELPSTEER,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert ("nvidia/HelpSteer", None, "train") in calls and (
        "nvidia/HelpSteer",
        None,
        "validation",
    ) in calls
    assert dm.sample_references(1) == ["Response 0 about note 0."]
    assert "hub nvidia/HelpSteer (validation)" in dm.datasets["val"].name


def test_hub_unreachable_offline_says_how_to_use_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLM_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'nvidia/HelpSteer' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    dm = dm_for(tmp_path, hub_id="nvidia/HelpSteer", **HELPSTEER)
    with pytest.raises(
        MedlmError,
        match=r"cannot reach the Hugging Face Hub for nvidia/HelpSteer .*helpsteer/train.jsonl",
    ):
        dm.prepare_data()


def test_second_run_reads_the_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = alpaca_dir(tmp_path)
    first = dm_for(tmp_path, path=str(d))
    first.prepare_data()
    calls = []
    real = instruct.tokenize_examples
    monkeypatch.setattr(
        instruct, "tokenize_examples", lambda pairs, tok: calls.append(tok) or real(pairs, tok)
    )
    again = dm_for(tmp_path, path=str(d))
    again.prepare_data()
    again.setup("fit")
    assert calls == []
    assert np.array_equal(again.tokens("train")[0], first.tokens("train")[0])
    custom = {"prompt_input": "{instruction} {input}", "prompt_no_input": "{instruction}"}
    dm_for(tmp_path, path=str(d), template=custom).prepare_data()
    assert len(calls) == 2  # a new template is a new key: train and val are tokenised again


def test_a_cached_run_never_parses_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "alpaca"  # train only: validation is split off it, so the seed is in the key
    write_jsonl(d / "train.jsonl", [alpaca(i, i % 2 == 0) for i in range(40)])
    first = dm_for(tmp_path, path=str(d))
    first.prepare_data()

    def never(*args, **kwargs):
        raise AssertionError("the source was parsed although its tokens are cached")

    monkeypatch.setattr(instruct, "load_records", never)
    monkeypatch.setattr(instruct, "parse_record", never)
    again = dm_for(tmp_path, path=str(d))
    again.prepare_data()
    again.setup("fit")
    assert np.array_equal(again.tokens("val")[0], first.tokens("val")[0])
    with pytest.raises(AssertionError, match="source was parsed"):  # a new seed: a new split
        dm_for(tmp_path, path=str(d), seed=7).prepare_data()


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "q", "output": "a"', r"bad.jsonl: line 3 column \d+: malformed JSON"),
        (
            '{"instruction": "q", "input": ""}',
            r"bad.jsonl: line 3: missing field 'output' \(the output\)",
        ),
        ('{"output": "a"}', r"bad.jsonl: line 3: missing field 'instruction'"),
        (
            '{"instruction": "  ", "output": "a"}',
            r"bad.jsonl: line 3: field 'instruction' \(the instruction\) is empty",
        ),
        (
            '{"instruction": "q", "output": 3}',
            r"bad.jsonl: line 3: field 'output' \(the output\) must be a string",
        ),
        (
            '{"instruction": "q", "input": ["x"], "output": "a"}',
            r"bad.jsonl: line 3: field 'input' \(the input\) must be",
        ),
        ('["q", "a"]', r"bad.jsonl: line 3: expected a record object"),
    ],
)
def test_bad_records_name_the_file_and_line(line: str, message: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [alpaca(0), alpaca(1), line, alpaca(3)])
    with pytest.raises(DataError, match=message):
        dm_for(tmp_path, path=str(path)).prepare_data()


def test_bad_min_value_field_is_named(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d" / "train.jsonl",
        [helpsteer_row(0, 4), {**helpsteer_row(1, 4), "helpfulness": "high"}],
    )
    with pytest.raises(
        DataError,
        match=r"train.jsonl: line 2: field 'helpfulness' \(data.min_values\) must be a number",
    ):
        dm_for(tmp_path, path=str(path.parent), min_values={"helpfulness": 3}, **HELPSTEER).records(
            "train"
        )


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path=.*nowhere: no such file or directory"):
        dm_for(tmp_path, path=str(tmp_path / "nowhere")).records("train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="directory holds none of train.jsonl"):
        dm_for(tmp_path, path=str(tmp_path / "empty")).records("train")
    write_jsonl(tmp_path / "blank" / "train.jsonl", [""])
    with pytest.raises(DataError, match="no instruction records"):
        dm_for(tmp_path, path=str(tmp_path / "blank")).records("train")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"template": {"prompt_input": "{instruction} {input}"}}, "data.template"),
        (
            {"template": {"prompt_input": "{instruction}", "prompt_no_input": "{instruction}"}},
            "data.template.prompt_input",
        ),
        (
            {
                "template": {
                    "prompt_input": "{instruction} {input}",
                    "prompt_no_input": "{question}",
                }
            },
            "data.template.prompt_no_input",
        ),
        (
            {
                "template": {
                    "prompt_input": "{instruction} {input",
                    "prompt_no_input": "{instruction}",
                }
            },
            "data.template.prompt_input",
        ),
        ({"fields": {"question": "q"}}, "data.fields"),
        ({"fields": {"output": None}}, "data.fields.output"),
        ({"min_values": {"helpfulness": "3"}}, "data.min_values"),
        ({"hub_splits": {"dev": "validation"}}, "data.hub_splits"),
        ({"block_size": 1}, "data.block_size"),
        ({"overlong": "wrap"}, "data.overlong"),
        ({"packing": "yes"}, "data.packing"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"medquad_src": "/x"}, "data.medquad_src"),
        ({"val_path": "/x"}, "data.val_path"),
    ],
)
def test_bad_settings_fail_before_reading_data(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        InstructionDataModule(**kwargs)


def test_medquad_is_converted_into_path_on_first_use(tmp_path: Path) -> None:
    from tests.data.test_medquad import write_doc

    src = tmp_path / "xml" / "1_Test_QA"
    write_doc(
        src / "0000001.xml", [(f"What is thing {i}?", f"Thing {i} is a thing.") for i in range(30)]
    )
    out = tmp_path / "converted"
    dm = dm_for(tmp_path, path=str(out), medquad_src=str(tmp_path / "xml"), subdir=None)
    dm.prepare_data()
    assert [
        len((out / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val", "test")
    ] == [26, 2, 2]
    assert dm.sample_references(1)[0].startswith("Thing ")
    with pytest.raises(
        DataError, match="medquad_src=.*missing does not exist.*medlm-prepare medquad"
    ):
        dm_for(
            tmp_path, path=str(tmp_path / "other"), medquad_src=str(tmp_path / "missing")
        ).prepare_data()
