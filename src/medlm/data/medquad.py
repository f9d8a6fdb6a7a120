"""MedQuAD -> Alpaca instruction records (train/val/test JSONL), as pure functions.

MedQuAD (abachaa/MedQuAD) is published as one folder per NIH source (``1_CancerGov_QA/``, ...),
one XML file per document, each holding ``QAPairs/QAPair`` elements with a ``Question`` (attributes
``qid``, ``qtype``) and an ``Answer``. Most roots are ``<Document id= source= url=>``; a few files
use another root (``9_CDC_QA/0000397.xml`` is ``<DiseaseFile fid=...>``), so pairs are found by tag
under any root. Three folders (ADAM, drugs, herbs) were published with empty answers. A common CSV
export has the header ``question,answer,source,focus_area``.

Pipeline: read (sorted files) -> normalise whitespace -> drop empty answers -> drop exact duplicates
-> drop records longer than ``max_tokens`` -> seeded split -> write all three files or none.
Per-source counts say what was dropped and why. The per-source key is the folder of an XML file
(``1_CancerGov_QA``) or the ``source`` column of a CSV row; it is also the record's ``source``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from medlm.data.alpaca import ALPACA_TEMPLATE, check_template, format_prompt
from medlm.data.splits import seeded_split
from medlm.errors import ConfigError, DataError
from medlm.utils.io import atomic_write

DEFAULT_MAX_TOKENS = 1024  # GPT-2's context: a longer example cannot be trained on whole
SPLITS = ("train", "val", "test")
REASONS = ("empty_answer", "duplicate", "too_long", "malformed")
CSV_COLUMNS = ("question", "answer", "source", "focus_area")
FORMATS = ("auto", "xml", "csv")

_WS = re.compile(r"\s+")


# --------------------------------------------------------------------------- records and counts


@dataclass(frozen=True)
class QAPair:
    """One question/answer as read, before cleaning; ``where`` names it in messages."""

    source: str
    question: str
    answer: str
    where: str
    focus: str = ""
    qtype: str = ""
    document_id: str = ""


@dataclass
class SourceCounts:
    """``read`` counts pairs/rows parsed; ``read == kept + empty_answer + duplicate + too_long``.
    ``malformed`` counts files, pairs or rows skipped under ``skip_bad`` and is not part of
    ``read``."""

    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)


@dataclass
class Summary:
    """What a conversion read, kept and dropped per source, the split sizes and the files
    written."""

    sources: dict[str, SourceCounts] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what skip_bad skipped, one line each
    outputs: dict[str, Path] = field(default_factory=dict)

    def source(self, name: str) -> SourceCounts:
        return self.sources.setdefault(name, SourceCounts())

    def drop(self, name: str, reason: str) -> None:
        self.source(name).dropped[reason] += 1

    def reject(self, name: str, message: str, skip_bad: bool) -> None:
        """A file/pair/row that cannot be read: raise, or (``skip_bad``) count it and go on."""
        if not skip_bad:
            raise DataError(message)
        self.drop(name, "malformed")
        self.problems.append(message)

    def total(self) -> SourceCounts:
        tot = SourceCounts()
        for c in self.sources.values():
            tot.read += c.read
            tot.kept += c.kept
            tot.dropped.update(c.dropped)
        return tot


def normalize_ws(text: str | None) -> str:
    """Collapse every run of whitespace (newlines included) to one space and strip the ends."""
    return _WS.sub(" ", text or "").strip()


def to_alpaca(pair: QAPair) -> dict:
    """An Alpaca record with the MedQuAD metadata kept beside it."""
    return {
        "instruction": normalize_ws(pair.question),
        "input": "",
        "output": normalize_ws(pair.answer),
        "source": pair.source,
        "focus": normalize_ws(pair.focus),
        "qtype": normalize_ws(pair.qtype),
        "document_id": pair.document_id,
    }


# --------------------------------------------------------------------------- reading


def list_files(src: Path, suffix: str) -> list[Path]:
    """``src`` itself, or every ``*suffix`` file under it, in a fixed order (relative path)."""
    if src.is_file():
        return [src]
    files = [p for p in src.rglob(f"*{suffix}") if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(src).as_posix())


def detect_format(src: Path) -> str:
    """``xml`` or ``csv`` from a file's suffix, or from the files a directory holds."""
    if not src.exists():
        raise DataError(f"{src}: no such file or directory")
    if src.is_file():
        suffix = src.suffix.lower()
        if suffix in (".xml", ".csv"):
            return suffix[1:]
        raise DataError(
            f"{src}: cannot tell the format from the suffix {suffix!r}; pass --format xml|csv"
        )
    for fmt in ("xml", "csv"):
        if any(p.is_file() for p in src.rglob(f"*.{fmt}")):
            return fmt
    raise DataError(f"{src}: holds no *.xml or *.csv files")


def _parse_error(path: Path, err: ET.ParseError) -> str:
    line, col = err.position
    reason = re.sub(r": line \d+, column \d+$", "", str(err))
    return f"{path}, line {line}, column {col}: malformed XML ({reason})"


def read_xml_file(
    path: Path, source: str, summary: Summary, skip_bad: bool = False
) -> list[QAPair]:
    """The QA pairs of one MedQuAD XML document; a parse error names the file and the line."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        summary.reject(source, _parse_error(path, err), skip_bad)
        return []
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if next(root.iter("QAPairs"), None) is None and next(root.iter("QAPair"), None) is None:
        # any root with MedQuAD's pairs will do (<Document>, <DiseaseFile>); an empty <QAPairs/>
        # is a real MedQuAD document with no pairs
        summary.reject(
            source,
            f"{path}: not a MedQuAD document: <{root.tag}> holds no <QAPairs>/<QAPair> "
            "(MedQuAD files are <Document> with <QAPairs><QAPair><Question/><Answer/>)",
            skip_bad,
        )
        return []
    doc_id = root.get("id") or root.get("fid") or path.stem
    focus = root.findtext("Focus") or ""
    pairs = []
    for i, qa in enumerate(root.iter("QAPair"), 1):
        where = f"{path}, QAPair pid={qa.get('pid', i)}"
        q = qa.find("Question")
        a = qa.find("Answer")
        question = "".join(q.itertext()) if q is not None else ""
        if not question.strip():
            summary.reject(source, f"{where}: no question text", skip_bad)
            continue
        answer = (
            "".join(a.itertext()) if a is not None else ""
        )  # a missing <Answer> is an empty one
        qtype = q.get("qtype", "")
        pairs.append(QAPair(source, question, answer, where, focus, qtype, doc_id))
    return pairs


def _read_all(
    src: str | Path, suffix: str, read_file: Callable[[Path], list[QAPair]]
) -> list[QAPair]:
    src = Path(src)
    files = list_files(src, suffix)
    if not files:
        raise DataError(f"{src}: no *{suffix} files found")
    return [pair for path in files for pair in read_file(path)]


def read_xml(src: str | Path, summary: Summary, skip_bad: bool = False) -> list[QAPair]:
    """Every pair under a MedQuAD root (or in one XML file), files in sorted order; a file's
    pairs are counted under its folder (``1_CancerGov_QA``)."""
    return _read_all(
        src, ".xml", lambda path: read_xml_file(path, path.parent.name, summary, skip_bad)
    )


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 (a BOM is dropped); a bad byte is reported with its line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({err.reason})") from None


def read_csv_file(path: Path, summary: Summary, skip_bad: bool = False) -> list[QAPair]:
    """Rows of a ``question,answer,source,focus_area`` CSV; bad quoting or a wrong column count
    names the file and the line the record starts on."""
    bucket = path.name  # where rows without a readable source column are counted
    try:
        text = _read_text(path)
    except DataError as err:
        summary.reject(bucket, str(err), skip_bad)
        return []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)

    def bad(line: int, problem: str) -> None:
        summary.reject(bucket, f"{path}, line {line}: {problem}", skip_bad)

    header: list[str] | None = None
    pairs = []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                bad(line, "unterminated quoted field (a '\"' opened here is never closed)")
                return pairs  # it ran to the end of the file
            if "field larger than field limit" in str(err):
                bad(
                    line,
                    f"a field longer than {csv.field_size_limit()} characters: "
                    "an unterminated quote opened here?",
                )
            else:
                bad(line, f"bad CSV quoting ({err})")
            continue
        if not row:
            continue  # blank line
        if header is None:
            header = [h.strip().lower() for h in row]
            missing = [c for c in ("question", "answer") if c not in header]
            if missing:  # not a MedQuAD export: the whole file is unreadable
                bad(
                    line,
                    f"header {row} lacks column(s) {missing}; expected {','.join(CSV_COLUMNS)}",
                )
                return []
            continue
        if len(row) != len(header):
            bad(line, f"expected {len(header)} columns ({','.join(header)}), got {len(row)}")
            continue
        rec = dict(zip(header, row))
        if not rec["question"].strip():
            bad(line, "empty question")
            continue
        source = normalize_ws(rec.get("source")) or bucket
        pairs.append(
            QAPair(
                source,
                rec["question"],
                rec["answer"],
                f"{path}, line {line}",
                rec.get("focus_area", ""),
                rec.get("qtype", ""),
                "",
            )
        )
    if header is None:
        bad(1, f"empty file, expected the header {','.join(CSV_COLUMNS)}")
    return pairs


def read_csv(src: str | Path, summary: Summary, skip_bad: bool = False) -> list[QAPair]:
    """Every row of one CSV export (or of the CSV files under a folder, in sorted order)."""
    return _read_all(src, ".csv", lambda path: read_csv_file(path, summary, skip_bad))


# --------------------------------------------------------------------------- cleaning and split


def build_records(
    pairs: Iterable[QAPair],
    summary: Summary,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    template: Mapping[str, str] = ALPACA_TEMPLATE,
    tokenizer: str = "gpt2",
) -> list[dict]:
    """Alpaca records of the pairs that survive: non-empty answer, first copy, at most
    ``max_tokens``
    tokens of prompt + answer. Every pair is counted under its source."""
    encode = None
    if max_tokens is not None:
        from medlm.data.tokenizer import load_tokenizer

        encode = load_tokenizer(tokenizer).encode
    seen: set[tuple[str, str, str]] = set()
    records = []
    for pair in pairs:
        counts = summary.source(pair.source)
        counts.read += 1
        rec = to_alpaca(pair)
        if not rec["output"]:
            summary.drop(pair.source, "empty_answer")
            continue
        key = (rec["instruction"], rec["input"], rec["output"])
        if key in seen:
            summary.drop(pair.source, "duplicate")
            continue
        seen.add(key)
        if encode is not None:
            n = len(
                encode(format_prompt(rec["instruction"], rec["input"], template) + rec["output"])
            )
            if n > max_tokens:
                summary.drop(pair.source, "too_long")
                continue
        counts.kept += 1
        records.append(rec)
    return records


def check_fractions(val_frac: float, test_frac: float) -> None:
    for key, f in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"{key}={f}: must be in [0, 1)")
    if val_frac + test_frac >= 1.0:
        raise ConfigError(
            f"val_frac + test_frac = {val_frac + test_frac}: must leave a train split (< 1)"
        )


def split_records(
    records: list[dict], seed: int = 0, val_frac: float = 0.05, test_frac: float = 0.05
) -> dict[str, list[dict]]:
    """A seeded shuffle of the records in their (sorted-file) order, cut into train/val/test.
    The same records and seed give the same split on every machine."""
    check_fractions(val_frac, test_frac)
    n = len(records)
    sizes = {"val": round(n * val_frac), "test": round(n * test_frac)}
    # each split keeps the input order, so a diff between runs reads like the source
    parts = seeded_split([1] * n, sizes, seed)
    return {name: [records[i] for i in parts[name]] for name in SPLITS}


def write_splits(splits: Mapping[str, list[dict]], out_dir: str | Path) -> dict[str, Path]:
    """``<split>.jsonl`` for every split, renamed into place together after all are written."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in splits}
    with ExitStack() as stack:
        files = {
            name: stack.enter_context(atomic_write(p, "w", encoding="utf-8"))
            for name, p in paths.items()
        }
        for name, recs in splits.items():
            for rec in recs:
                files[name].write(json.dumps(rec, ensure_ascii=False) + "\n")
    return paths


# --------------------------------------------------------------------------- the conversion


def convert(
    src: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "auto",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
    template: Mapping[str, str] = ALPACA_TEMPLATE,
    skip_bad: bool = False,
    tokenizer: str = "gpt2",
) -> Summary:
    """MedQuAD (XML root/file or CSV) -> ``out_dir/{train,val,test}.jsonl``; returns the counts.

    Strict by default: the first unreadable file or row raises ``DataError`` naming it, before any
    output is written. ``skip_bad`` skips such files/rows and counts them as ``malformed``.
    ``max_tokens=None`` keeps every length.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: must be one of {', '.join(FORMATS)}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens}: must be a positive number of tokens (or None)")
    check_fractions(val_frac, test_frac)
    template = check_template(template)
    src = Path(src)
    if fmt == "auto":
        fmt = detect_format(src)
    elif not src.exists():
        raise DataError(f"{src}: no such file or directory")
    summary = Summary()
    reader = read_xml if fmt == "xml" else read_csv
    pairs = reader(src, summary, skip_bad)
    records = build_records(pairs, summary, max_tokens, template, tokenizer)
    if not records:  # three empty files would only fail later, as an empty dataset
        raise DataError(f"{src}: nothing to write to {out_dir}: {_why_empty(summary)}")
    splits = split_records(records, seed, val_frac, test_frac)
    if not splits["train"]:
        raise ConfigError(
            f"val_frac={val_frac}, test_frac={test_frac}: {len(records)} record(s) leave "
            "nothing for the train split"
        )
    summary.outputs = write_splits(splits, out_dir)
    summary.splits = {name: len(recs) for name, recs in splits.items()}
    return summary


def _why_empty(summary: Summary) -> str:
    """Why no record survived: nothing read, or what dropped the pairs that were."""
    total = summary.total()
    skipped = total.dropped.get("malformed", 0)
    if total.read == 0:
        found = "no question-answer pairs found"
        return found + (f" ({skipped} malformed file(s)/row(s) skipped)" if skipped else "")
    reasons = ", ".join(
        f"{n} {r.replace('_', ' ')}" for r in REASONS if (n := total.dropped.get(r, 0))
    )
    return f"all {total.read} pairs read were dropped ({reasons})"


def format_summary(summary: Summary) -> str:
    """A fixed-width table: one row per source, a total row, then the split sizes."""
    cols = ("read", "kept") + REASONS
    names = sorted(summary.sources, key=_natural_key)
    width = max([len("source"), len("total")] + [len(n) for n in names])
    widths = [max(len(c), 6) for c in cols]
    head = f"{'source':<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(cols, widths))

    def row(name: str, c: SourceCounts) -> str:
        vals = [c.read, c.kept] + [c.dropped.get(r, 0) for r in REASONS]
        return f"{name:<{width}}" + "".join(f"  {v:>{w}}" for v, w in zip(vals, widths))

    lines = [head, "-" * len(head)]
    lines += [row(n, summary.sources[n]) for n in names]
    lines += ["-" * len(head), row("total", summary.total())]
    if summary.splits:
        lines.append("split: " + ", ".join(f"{k} {v}" for k, v in summary.splits.items()))
    return "\n".join(lines)


def _natural_key(name: str) -> tuple:
    """``2_GARD_QA`` before ``12_MPlus...``: MedQuAD folders are numbered."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
