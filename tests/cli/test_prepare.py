"""``medlm-prepare``: the medquad subcommand through ``main(argv)`` and once as the installed
script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medlm.cli.prepare import build_parser, main

GOOD = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000001" source="Test" url="https://example.org/1">
<Focus>Thing</Focus>
<QAPairs>
<QAPair pid="1"><Question qid="0000001-1" qtype="information">What is a  thing ?</Question>
<Answer>A thing
 is a thing.</Answer></QAPair>
<QAPair pid="2"><Question qid="0000001-2" qtype="causes">What causes a thing ?</Question>
<Answer></Answer></QAPair>
</QAPairs>
</Document>
"""
BAD = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000002">
<QAPairs>
<QAPair pid="1"><Question>Q ?</Question><Answer>unclosed
</QAPair>
</QAPairs>
</Document>
"""


def medquad_root(tmp_path: Path, bad: bool = False) -> Path:
    folder = tmp_path / "src" / "1_Test_QA"
    folder.mkdir(parents=True)
    (folder / "0000001.xml").write_text(GOOD, encoding="utf-8")
    if bad:
        (folder / "0000002.xml").write_text(BAD, encoding="utf-8")
    return tmp_path / "src"


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def test_medquad_writes_splits_and_prints_table(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    rc = main(
        ["medquad", str(medquad_root(tmp_path)), str(out), "--val-frac", "0", "--test-frac", "0"]
    )
    stdout = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"^1_Test_QA\s+2\s+1\s+1\s+0\s+0\s+0$", stdout, re.M), stdout
    assert "split: train 1, val 0, test 0" in stdout
    assert files_in(out) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    rec = json.loads((out / "train.jsonl").read_text())
    assert (rec["instruction"], rec["input"], rec["output"]) == (
        "What is a thing ?",
        "",
        "A thing is a thing.",
    )


def test_max_tokens_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The one answered pair is 41 tokens as a prompt and answer: --max-tokens 20 drops it, and a
    conversion that keeps nothing is an error, not three empty files."""
    out = tmp_path / "out"
    assert main(["medquad", str(medquad_root(tmp_path)), str(out), "--max-tokens", "41"]) == 0
    assert re.search(r"^total\s+2\s+1\s+1\s+0\s+0\s+0$", capsys.readouterr().out, re.M)
    src, empty = medquad_root(tmp_path / "2"), tmp_path / "empty"
    assert main(["medquad", str(src), str(empty), "--max-tokens", "20"]) == 2
    assert_one_error_line(
        capsys.readouterr().err,
        f"{src}: nothing to write to {empty}: all 2 pairs read were dropped "
        "(1 empty answer, 1 too long)",
    )
    assert files_in(empty) == []


def test_malformed_xml_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = main(["medquad", str(medquad_root(tmp_path, bad=True)), str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(captured.err, "0000002.xml", "line 5", "malformed XML")
    assert captured.out == ""
    assert files_in(out) == []


def test_csv_unterminated_quote_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "medquad.csv"
    src.write_text(
        "question,answer,source,focus_area\nWhat is X?,X is fine,GARD,X\n"
        'What is Y?,"Y is not\nclosed,GARD,Y\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    rc = main(["medquad", str(src), str(out), "--format", "csv"])
    assert rc == 2
    assert_one_error_line(
        capsys.readouterr().err, "medquad.csv, line 3", "unterminated quoted field"
    )
    assert files_in(out) == []


def test_skip_bad_counts_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    rc = main(["medquad", str(medquad_root(tmp_path, bad=True)), str(out), "--skip-bad"])
    captured = capsys.readouterr()
    assert rc == 0
    assert re.search(r"^1_Test_QA\s+2\s+1\s+1\s+0\s+0\s+1$", captured.out, re.M), captured.out
    assert "warning: skipped" in captured.err and "0000002.xml" in captured.err
    assert files_in(out) == ["test.jsonl", "train.jsonl", "val.jsonl"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--val-frac", "1.5"], "val_frac=1.5"),
        (["--max-tokens", "-3"], "max_tokens=-3"),
        (["--format", "xml", "--seed", "1"], None),  # fine: a control for the cases around it
    ],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv, fragment
) -> None:
    rc = main(["medquad", str(medquad_root(tmp_path)), str(tmp_path / "out"), *argv])
    if fragment is None:
        assert rc == 0
        return
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert files_in(tmp_path / "out") == []


def test_usage_errors_return_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "medquad" in capsys.readouterr().err
    assert main(["medquad", str(tmp_path)]) == 2  # OUT_DIR missing: argparse usage
    assert "required: OUT_DIR" in capsys.readouterr().err
    assert main(["medquad", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert_one_error_line(capsys.readouterr().err, "no such file or directory")
    assert "medquad" in build_parser().format_help()


@pytest.mark.slow
def test_installed_script_fails_cleanly(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("medlm-prepare")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(script), "medquad", str(medquad_root(tmp_path, bad=True)), str(out)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "0000002.xml", "line 5")
    assert files_in(out) == []
