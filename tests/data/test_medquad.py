"""MedQuAD -> Alpaca conversion: real counts checked against an independent regex count,
cleaning steps, strict and skip_bad errors, stable split, all-or-nothing outputs."""

from __future__ import annotations

import html
import json
import random
import re
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from medlm.data import medquad
from medlm.data.alpaca import ALPACA_TEMPLATE, format_prompt
from medlm.data.medquad import convert, format_summary
from medlm.data.tokenizer import load_tokenizer
from medlm.errors import ConfigError, DataError

encode = load_tokenizer("gpt2").encode

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


# --------------------------------------------------------------------------- helpers


def write_doc(
    path: Path, pairs, doc_id="0000001", source="Test", focus="Thing", root="Document", id_attr="id"
) -> Path:
    """A MedQuAD-shaped XML file; ``pairs`` are (question, answer or None for no <Answer>)."""
    qa = []
    for i, (q, a) in enumerate(pairs, 1):
        answer = "" if a is None else f"<Answer>{escape(a)}</Answer>"
        qa.append(
            f'<QAPair pid="{i}"><Question qid="{doc_id}-{i}" qtype="information">'
            f"{escape(q)}</Question>{answer}</QAPair>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{root} {id_attr}="{doc_id}" source="{source}" url="https://example.org/{doc_id}">\n'
        f"<Focus>{escape(focus)}</Focus>\n<QAPairs>\n"
        + "\n".join(qa)
        + f"\n</QAPairs>\n</{root}>\n",
        encoding="utf-8",
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_records(out: Path) -> list[dict]:
    return [r for name in SPLIT_FILES for r in read_jsonl(out / name)]


def outputs_in(out: Path) -> list[str]:
    """Every file in ``out`` (temporaries included), or nothing when it was never created."""
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in SPLIT_FILES}


# --------------------------------------------------------------------------- the real files


def regex_count(root: Path):
    """Pairs per folder, counted without the converter's code: regexes and html.unescape.
    Returns (pairs read, non-empty answers, expected kept after de-duplication) per folder."""
    read, nonempty, kept = Counter(), Counter(), Counter()
    seen = set()
    files = sorted(root.glob("*/*.xml"), key=lambda p: (p.parent.name, p.name))
    for path in files:
        folder = path.parent.name
        for block in re.findall(r"<QAPair\b.*?</QAPair>", path.read_text(encoding="utf-8"), re.S):
            read[folder] += 1
            q = re.search(r"<Question\b[^>]*>(.*?)</Question>", block, re.S).group(1)
            m = re.search(r"<Answer>(.*?)</Answer>", block, re.S)
            a = " ".join(html.unescape(m.group(1)).split()) if m else ""
            if not a:
                continue
            nonempty[folder] += 1
            key = (" ".join(html.unescape(q).split()), a)
            if key not in seen:
                seen.add(key)
                kept[folder] += 1
    return read, nonempty, kept


@pytest.fixture(scope="module")
def medquad_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "medquad" / "xml"
    if not root.is_dir():
        pytest.skip(f"MedQuAD XML not found at {root}")
    return root


@pytest.mark.shared_data
def test_real_counts_match_an_independent_count(medquad_root: Path, tmp_path: Path) -> None:
    read, nonempty, kept = regex_count(medquad_root)
    assert set(read) >= {"1_CancerGov_QA", "12_MPlusHerbsSupplements_QA"}
    summary = convert(medquad_root, tmp_path, max_tokens=None)

    for folder in read:
        c = summary.sources[folder]
        assert c.read == read[folder], folder
        assert c.dropped["empty_answer"] == read[folder] - nonempty[folder], folder
        assert c.kept == kept[folder], folder
        assert c.kept + c.dropped["duplicate"] == nonempty[folder], folder
        assert c.dropped["malformed"] == 0
    assert set(summary.sources) == set(read)
    herbs = summary.sources["12_MPlusHerbsSupplements_QA"]
    assert herbs.read == read["12_MPlusHerbsSupplements_QA"] > 0 and herbs.kept == 0

    records = all_records(tmp_path)
    assert len(records) == sum(kept.values()) == summary.total().kept
    assert Counter(r["source"] for r in records) == +kept
    assert all(set(r) >= {"instruction", "input", "output"} and r["input"] == "" for r in records)
    assert all(r["output"] and r["output"] == " ".join(r["output"].split()) for r in records)
    # the CDC file with a <DiseaseFile fid=...> root is read too
    assert any(r["document_id"] == "0000397" and r["source"] == "9_CDC_QA" for r in records)


@pytest.mark.shared_data
def test_real_length_filter(medquad_root: Path, tmp_path: Path) -> None:
    summary = convert(medquad_root, tmp_path, max_tokens=512)
    records = all_records(tmp_path)
    lengths = [len(encode(format_prompt(r["instruction"]) + r["output"])) for r in records]
    assert lengths and max(lengths) <= 512
    total = summary.total()
    assert total.dropped["too_long"] > 0
    assert total.read == total.kept + sum(
        total.dropped[r] for r in ("empty_answer", "duplicate", "too_long")
    )


@pytest.mark.shared_data
def test_real_split_is_stable(
    medquad_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = convert(medquad_root, tmp_path / "a", max_tokens=None, seed=7)
    convert(medquad_root, tmp_path / "b", max_tokens=None, seed=7)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")

    # the file system lists files in another order: same split
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(rglob(self, pattern))))
    convert(medquad_root, tmp_path / "c", max_tokens=None, seed=7)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "c")
    monkeypatch.undo()

    convert(medquad_root, tmp_path / "d", max_tokens=None, seed=8)
    assert snapshot(tmp_path / "a") != snapshot(tmp_path / "d")
    n = a.total().kept
    assert a.splits["val"] == round(n * 0.05) and a.splits["test"] == round(n * 0.05)
    assert sum(a.splits.values()) == n


# --------------------------------------------------------------------------- cleaning


def test_records_and_whitespace(tmp_path: Path) -> None:
    write_doc(
        tmp_path / "src" / "3_Some_QA" / "0000001.xml",
        [("  What is\n\tX  ?  ", "Line one.\n\n   Line\ttwo.  "), ("Who gets X ?", "Anyone")],
        focus=" X  disease ",
    )
    write_doc(
        tmp_path / "src" / "9_CDC_QA" / "0000397.xml",
        [("What is Y ?", "Y is &lt;rare&gt; & odd")],
        root="DiseaseFile",
        id_attr="fid",
        doc_id="0000397",
    )
    summary = convert(tmp_path / "src", tmp_path / "out", val_frac=0, test_frac=0)
    recs = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert recs[0] == {
        "instruction": "What is X ?",
        "input": "",
        "output": "Line one. Line two.",
        "source": "3_Some_QA",
        "focus": "X disease",
        "qtype": "information",
        "document_id": "0000001",
    }
    assert recs[2]["output"] == "Y is &lt;rare&gt; & odd" and recs[2]["document_id"] == "0000397"
    assert summary.sources["3_Some_QA"].kept == 2 and summary.sources["9_CDC_QA"].kept == 1
    assert (tmp_path / "out" / "val.jsonl").read_text() == ""


def test_empty_answers_and_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_doc(
        src / "1_A_QA" / "1.xml", [("Q1 ?", "A1"), ("Q2 ?", ""), ("Q3 ?", " \n\t "), ("Q4 ?", None)]
    )
    # the same pair up to whitespace, in a later file and another folder: a duplicate there
    write_doc(
        src / "2_B_QA" / "1.xml", [("Q1  ?", "\nA1 "), ("Q1 ?", "another answer"), ("Q1 ?", "A1")]
    )
    summary = convert(src, tmp_path / "out", max_tokens=None)
    a, b = summary.sources["1_A_QA"], summary.sources["2_B_QA"]
    assert (a.read, a.kept, a.dropped["empty_answer"], a.dropped["duplicate"]) == (4, 1, 3, 0)
    assert (b.read, b.kept, b.dropped["empty_answer"], b.dropped["duplicate"]) == (3, 1, 0, 2)
    outputs = sorted((r["instruction"], r["output"]) for r in all_records(tmp_path / "out"))
    assert outputs == [("Q1 ?", "A1"), ("Q1 ?", "another answer")]
    table = format_summary(summary)
    assert re.search(r"^1_A_QA\s+4\s+1\s+3\s+0\s+0\s+0$", table, re.M), table
    assert re.search(r"^total\s+7\s+2\s+3\s+2\s+0\s+0$", table, re.M), table


def test_length_filter_counts_the_prompt(tmp_path: Path) -> None:
    answer = "The answer is " + "very " * 40 + "long."
    write_doc(
        tmp_path / "src" / "1_A_QA" / "1.xml", [("What is it ?", answer), ("Short ?", "Yes.")]
    )
    n = len(encode(format_prompt("What is it ?") + answer))
    assert n == len(
        encode(ALPACA_TEMPLATE["prompt_no_input"].format(instruction="What is it ?") + answer)
    )

    kept = convert(tmp_path / "src", tmp_path / "o1", max_tokens=n).sources["1_A_QA"]
    assert (kept.kept, kept.dropped["too_long"]) == (2, 0)
    cut = convert(tmp_path / "src", tmp_path / "o2", max_tokens=n - 1).sources["1_A_QA"]
    assert (cut.kept, cut.dropped["too_long"]) == (1, 1)
    # the template is a parameter: a terse prompt fits where Alpaca's does not
    terse = {"prompt_input": "{instruction}\n{input}\n", "prompt_no_input": "{instruction}\n"}
    short = convert(tmp_path / "src", tmp_path / "o3", max_tokens=n - 1, template=terse)
    assert short.sources["1_A_QA"].kept == 2


def test_format_prompt_alpaca() -> None:
    assert format_prompt("Do X.").endswith("### Instruction:\nDo X.\n\n### Response:\n")
    with_input = format_prompt("Do X.", "on Y")
    assert "### Input:\non Y\n\n### Response:\n" in with_input
    assert with_input.startswith(
        "Below is an instruction that describes a task, paired with an input"
    )


# --------------------------------------------------------------------------- split and outputs


def test_split_partition_fractions_and_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    names = [f"{i:03d}.xml" for i in range(20)]
    for name in random.Random(1).sample(names, len(names)):  # created out of order
        write_doc(src / "1_A_QA" / name, [(f"Q{name} {j} ?", f"A {j}") for j in range(5)])
    s = convert(src, tmp_path / "a", seed=3, val_frac=0.1, test_frac=0.2, max_tokens=None)
    assert s.splits == {"train": 70, "val": 10, "test": 20}
    recs = {name: read_jsonl(tmp_path / "a" / name) for name in SPLIT_FILES}
    keys = [(r["instruction"], r["output"]) for name in SPLIT_FILES for r in recs[name]]
    assert len(keys) == len(set(keys)) == 100

    # each split keeps the sorted-file order of its records
    order = [r["instruction"].split()[:2] for r in recs["train.jsonl"]]  # ["Q007.xml", "3"]
    assert order == sorted(order, key=lambda k: (k[0], int(k[1])))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"val_frac": 1.2}, "val_frac"),
        ({"test_frac": -0.1}, "test_frac"),
        ({"val_frac": 0.5, "test_frac": 0.5}, "val_frac + test_frac"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"fmt": "json"}, "format"),
    ],
)
def test_bad_settings_fail_before_reading(tmp_path: Path, kwargs, key) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        convert(tmp_path / "missing", tmp_path / "out", **kwargs)


def test_outputs_are_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_doc(tmp_path / "src" / "1_A_QA" / "1.xml", [(f"Q{i} ?", f"A{i}") for i in range(40)])
    out = tmp_path / "out"
    out.mkdir()
    for name in SPLIT_FILES:
        (out / name).write_text("old\n")
    calls = {"n": 0}
    dumps = json.dumps

    def failing_dumps(obj, **kw):
        calls["n"] += 1
        if calls["n"] == 39:  # inside the last split, after train and val were written in full
            raise OSError("disk full")
        return dumps(obj, **kw)

    monkeypatch.setattr(medquad.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path / "src", out, max_tokens=None)
    assert outputs_in(out) == sorted(SPLIT_FILES)  # no temporaries left behind
    assert all((out / name).read_text() == "old\n" for name in SPLIT_FILES)


# --------------------------------------------------------------------------- malformed input


def make_bad_xml(root: Path) -> Path:
    write_doc(root / "1_A_QA" / "0000001.xml", [("Q1 ?", "A1"), ("Q2 ?", "A2")])
    bad = root / "1_A_QA" / "0000002.xml"
    bad.write_text(
        '<?xml version="1.0"?>\n<Document id="2">\n<QAPairs>\n<QAPair pid="1">\n'
        "<Question>Q ?</Question><Answer>A & B</Answer>\n</QAPair></QAPairs></Document>\n"
    )
    return bad


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    bad = make_bad_xml(tmp_path / "src")
    with pytest.raises(DataError) as err:
        convert(tmp_path / "src", tmp_path / "out")
    assert str(bad) in str(err.value) and "line 5" in str(err.value)
    assert outputs_in(tmp_path / "out") == []


def test_skip_bad_counts_malformed_files(tmp_path: Path) -> None:
    bad = make_bad_xml(tmp_path / "src")
    write_doc(tmp_path / "src" / "1_A_QA" / "0000003.xml", [("", "an answer without a question")])
    summary = convert(tmp_path / "src", tmp_path / "out", skip_bad=True, val_frac=0, test_frac=0)
    c = summary.sources["1_A_QA"]
    assert (c.read, c.kept, c.dropped["malformed"]) == (2, 2, 2)
    assert any(str(bad) in p and "line 5" in p for p in summary.problems)
    assert any("0000003.xml" in p and "no question" in p for p in summary.problems)
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 2


CSV_GOOD = (
    "question,answer,source,focus_area\n"
    'What is X?,"X is a thing, with a comma\nand a second line",GARD,X\n'
    'What is Y?,"Y says ""hi""",CDC,Y\n'
    "\n"
    "Who gets Z?,,GARD,Z\n"
)


def test_csv_export(tmp_path: Path) -> None:
    (tmp_path / "medquad.csv").write_text(CSV_GOOD, encoding="utf-8")
    summary = convert(tmp_path / "medquad.csv", tmp_path / "out", val_frac=0, test_frac=0)
    recs = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert [(r["instruction"], r["output"], r["source"], r["focus"]) for r in recs] == [
        ("What is X?", "X is a thing, with a comma and a second line", "GARD", "X"),
        ("What is Y?", 'Y says "hi"', "CDC", "Y"),
    ]
    assert summary.sources["GARD"].dropped["empty_answer"] == 1
    assert medquad.detect_format(tmp_path) == "csv"


@pytest.mark.parametrize(
    "tail, problem, kept_when_skipped",
    [
        # the quote opened on line 7 swallows the rest of the file
        ('What is W?,"W never closes,GARD,W\nLast?,row,CDC,L\n', "unterminated quoted field", 2),
        ("Extra?,a,GARD,E,surplus\nFine?,yes,CDC,F\n", "expected 4 columns .* got 5", 3),
        ('Stray?,"a" b,GARD,S\nFine?,yes,CDC,F\n', "bad CSV quoting", 3),
    ],
)
def test_csv_errors_name_file_and_line(
    tmp_path: Path, tail: str, problem: str, kept_when_skipped: int
) -> None:
    path = tmp_path / "medquad.csv"
    path.write_text(CSV_GOOD + tail, encoding="utf-8")
    with pytest.raises(DataError, match=rf"medquad\.csv, line 7: {problem}"):
        convert(path, tmp_path / "out")
    assert outputs_in(tmp_path / "out") == []

    summary = convert(path, tmp_path / "out", skip_bad=True)
    assert summary.sources["medquad.csv"].dropped["malformed"] == 1
    assert summary.total().kept == kept_when_skipped and "line 7" in summary.problems[0]


def test_csv_bad_header_and_missing_source(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match=r"a\.csv, line 1: header .* lacks"):
        convert(tmp_path / "a.csv", tmp_path / "out")
    with pytest.raises(DataError, match="no such file"):
        convert(tmp_path / "nothing.xml", tmp_path / "out")
