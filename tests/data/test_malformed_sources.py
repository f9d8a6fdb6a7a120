"""Source files that used to be accepted silently: a stray quote in Curai's CSV that merged the
pairs after it into one question, an XML file that is not MedQuAD, and a MedQuAD conversion that
keeps nothing (three empty JSONL files). Each is one error naming the file and, where there is
one, the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlm.data.medquad import Summary, convert, read_xml_file
from medlm.data.question_pairs import read_pairs_csv
from medlm.errors import DataError
from tests.cli.test_train_command import run_main
from tests.data.test_instruct import dm_for
from tests.data.test_medquad import outputs_in, write_doc

# ----------------------------------------------------------------------------------------------
# Curai's question pairs CSV


def pair_lines(n: int, quoted: bool = True) -> list[str]:
    """Pairs in Curai's format, one a line; every fourth (``quoted``) has a quoted question with a
    comma."""
    lines = []
    for i in range(n):
        q2 = f"Is fever {i} contagious?"
        if quoted and i % 4 == 3:
            q2 = f'"How do I ease pain, case {i}?"'
        lines.append(f"{i % 3},What helps with pain number {i // 2}?,{q2},{i % 2}")
    return lines


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stray_quote(lines: list[str], line: int, closed_on: int | None = None) -> list[str]:
    """A ``"`` typed before question 1 on ``line`` (1-based); ``closed_on``: a ``"`` typed after
    question 1 on that later line, which closes it as a quote would (the issue's silent case)."""
    out = list(lines)
    out[line - 1] = out[line - 1].replace(",", ',"', 1)
    if closed_on is not None:
        out[closed_on - 1] = out[closed_on - 1].replace("?,", '?",', 1)
    return out


def test_the_file_without_a_stray_quote_reads(tmp_path: Path) -> None:
    assert len(read_pairs_csv(write_csv(tmp_path / "mqp.csv", pair_lines(30)))) == 30


def test_stray_quote_that_swallows_pairs_names_the_line_it_opened(tmp_path: Path) -> None:
    """The issue's case: the quote closes ten lines later, so the merged row has four columns and
    was read as one pair with a ten-line question."""
    lines = stray_quote(pair_lines(30, quoted=False), 5, closed_on=14)
    path = write_csv(tmp_path / "mqp.csv", lines)
    with pytest.raises(DataError) as err:
        read_pairs_csv(path)
    assert str(err.value).startswith(
        f"{path}:5: unbalanced quote: a quoted field opened on line 5 runs to line 14 and holds "
        "8 line(s) that are pairs of their own ('2,What helps with pain number 2?"
    ), err.value


@pytest.mark.parametrize(
    "lines, end",
    [
        (stray_quote(pair_lines(30), 5), 8),  # runs into the next quoted field, on line 8
        (stray_quote(pair_lines(30)[:10], 9), 10),  # runs to the end of the file
    ],
)
def test_stray_quote_never_closed_names_the_line_it_opened(
    lines: list[str], end: int, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "mqp.csv", lines)
    opened = next(i for i, line in enumerate(lines, 1) if ',"What' in line)
    expected = (
        rf"^{path}:{opened}: unbalanced quote: a quoted field opened on line {opened} runs to "
        rf"line {end} and is still open there"
    )
    with pytest.raises(DataError, match=expected):
        read_pairs_csv(path)


@pytest.mark.usefixtures("shared_data_dir")
def test_stray_quote_through_medlm_train(
    tmp_path: Path, tiny_hf_gpt2: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_csv(tmp_path / "mqp.csv", stray_quote(pair_lines(60, False), 5, closed_on=14))
    argv = [
        "experiment=lora_question_pairs",
        f"model.pretrained={tiny_hf_gpt2}",
        f"data.path={path}",
        "trainer.enable_progress_bar=false",
    ]
    code, err = run_main(argv, tmp_path, monkeypatch, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: {path}:5: unbalanced quote"), errors[0]


# ----------------------------------------------------------------------------------------------
# MedQuAD XML


def test_xml_that_is_not_medquad_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "1_Test_QA" / "feed.xml"
    path.parent.mkdir()
    path.write_text('<?xml version="1.0"?>\n<rss><channel><item>news</item></channel></rss>\n')
    with pytest.raises(DataError) as err:
        read_xml_file(path, "1_Test_QA", Summary())
    assert str(err.value).startswith(f"{path}: not a MedQuAD document: <rss> holds no <QAPairs>")
    summary = Summary()  # skip_bad: counted and reported, not raised
    assert read_xml_file(path, "1_Test_QA", summary, skip_bad=True) == []
    assert summary.sources["1_Test_QA"].dropped["malformed"] == 1 and len(summary.problems) == 1


@pytest.mark.parametrize(
    "root, id_attr", [("Document", "id"), ("DiseaseFile", "fid"), ("SomethingElse", "id")]
)
def test_any_root_with_medquad_pairs_is_read(root: str, id_attr: str, tmp_path: Path) -> None:
    path = write_doc(tmp_path / "d.xml", [("What is it?", "It is.")], root=root, id_attr=id_attr)
    [pair] = read_xml_file(path, "src", Summary())
    assert (pair.question, pair.answer, pair.document_id) == ("What is it?", "It is.", "0000001")


def test_document_with_empty_qapairs_is_medquad_with_no_pairs(tmp_path: Path) -> None:
    """Six real NIDDK files are like this (5_NIDDK_QA/0000056.xml)."""
    assert read_xml_file(write_doc(tmp_path / "d.xml", []), "src", Summary()) == []


@pytest.mark.shared_data
def test_every_real_medquad_file_is_read(shared_data_dir: Path) -> None:
    from medlm.data.medquad import read_xml

    summary = Summary()
    pairs = read_xml(shared_data_dir / "medquad" / "xml", summary)
    assert len(pairs) > 1000 and not summary.problems
    assert any(p.where.split(",")[0].endswith("9_CDC_QA/0000397.xml") for p in pairs)  # DiseaseFile


# ----------------------------------------------------------------------------------------------
# An empty conversion


def test_conversion_that_keeps_nothing_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "xml" / "1_Test_QA", tmp_path / "out"
    write_doc(src / "0000001.xml", [])
    with pytest.raises(DataError) as err:
        convert(tmp_path / "xml", out)
    assert str(err.value) == (
        f"{tmp_path / 'xml'}: nothing to write to {out}: no question-answer pairs found"
    )
    write_doc(src / "0000002.xml", [("What is it?", None), ("What is that?", "")], doc_id="2")
    with pytest.raises(DataError, match=r"all 2 pairs read were dropped \(2 empty answer\)$"):
        convert(tmp_path / "xml", out)
    assert outputs_in(out) == []


def test_not_medquad_skipped_leaves_nothing_and_says_so(tmp_path: Path) -> None:
    feed = tmp_path / "xml" / "feed.xml"
    feed.parent.mkdir()
    feed.write_text("<rss/>")
    with pytest.raises(DataError, match=r"no question-answer pairs found \(1 malformed"):
        convert(tmp_path / "xml", tmp_path / "out", skip_bad=True)
    assert outputs_in(tmp_path / "out") == []


def test_instruction_datamodule_medquad_src_that_keeps_nothing(tmp_path: Path) -> None:
    write_doc(tmp_path / "xml" / "1_Test_QA" / "0000001.xml", [("What is it?", None)])
    out = tmp_path / "converted"
    dm = dm_for(tmp_path, path=str(out), medquad_src=str(tmp_path / "xml"), subdir=None)
    with pytest.raises(DataError, match="all 1 pairs read were dropped"):
        dm.prepare_data()
    assert outputs_in(out) == []
