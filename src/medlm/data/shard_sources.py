"""Where the documents of ``medlm-prepare shards`` come from, one text at a time.

A SOURCE is one of:

- a Hugging Face Hub dataset id (``HuggingFaceFW/fineweb-edu``, with ``--hub-config sample-10BT``),
  read with ``datasets.load_dataset(..., streaming=True)``: rows arrive as they download, so a
  10B-token corpus never sits in memory or whole on disk; ``hub:ID`` forces this reading;
- a local file, folder or glob of JSON Lines (``.jsonl``/``.ndjson``) or parquet files with a text
  field (``--text-field``, default ``text``), or plain ``.txt`` files (one document per file); a
  folder contributes every such file under it, in sorted order;
- ``pubmedqa:PATH``: PubMedQA records (``ori_pqal.json`` and its siblings, or Hub exports); each
  document is the record's context paragraphs and long answer, one per line. A file named
  ``ori_pq*.json`` or a folder holding one (at any depth) is read this way without the prefix;
- ``medquad:PATH``: the answers of MedQuAD's XML documents (or its CSV export). An XML file, or a
  folder holding XML files (its ``readme.txt`` is then not a document), is read this way without
  the prefix.

Documents whose text is empty or only whitespace are skipped and counted. A malformed record is a
DataError naming the file and the line (or row).
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlm.data.cache import cache_key, file_identity, hub_identity
from medlm.errors import ConfigError, DataError, MedlmError

TEXT_SUFFIXES = (".jsonl", ".ndjson", ".parquet", ".txt")
PUBMEDQA_FILE = re.compile(r"^ori_pq[a-z]+\.json$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PREFIXES = ("hub:", "pubmedqa:", "medquad:")


@dataclass
class DocumentSource:
    """Documents of one SOURCE, in a fixed order; ``identity`` changes when the data does."""

    spec: str
    kind: str  # hub, files, pubmedqa, medquad
    identity: Any
    read: Callable[[], Iterator[str]] = field(repr=False)

    def documents(self) -> Iterator[str]:
        return self.read()


# ------------------------------------------------------------------------------- local text files


def files_identity(files: Sequence[Path]) -> dict[str, Any]:
    """A short identity of many files: count, total size, a hash of each path, size and mtime."""
    ids = [file_identity(f) for f in files]
    return {
        "files": len(ids),
        "bytes": sum(i["size"] for i in ids),
        "first": ids[0]["path"] if ids else None,
        "digest": cache_key(files=ids),
    }


def _text_of(row: Any, text_field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected an object with a {text_field!r} field, got {type(row).__name__}"
        )
    if text_field not in row or row[text_field] is None:
        fields = ", ".join(map(str, list(row)[:10])) or "none"
        raise DataError(
            f"{where}: no {text_field!r} field (fields: {fields}); choose one with --text-field"
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is a {type(text).__name__}, not text")
    return text


def iter_jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    """The text field of each line, read line by line (any file size); blank lines are skipped."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {lineno}: not UTF-8 text ({err.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}: line {lineno}: not JSON ({err.msg} at column {err.colno})"
                ) from None
            yield _text_of(row, text_field, f"{path}: line {lineno}")


def iter_parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    """The text column, a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None
    columns = pf.schema_arrow.names
    if text_field not in columns:
        raise DataError(
            f"{path}: no {text_field!r} column (columns: {', '.join(columns[:10])}); "
            "choose one with --text-field"
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                kind = "null" if text is None else f"a {type(text).__name__}"
                raise DataError(f"{path}: row {row}: column {text_field!r} is {kind}, not text")
            yield text
            row += 1


def read_txt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}): {err.reason}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None


def iter_file_texts(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from iter_jsonl_texts(path, text_field)
    elif suffix == ".parquet":
        yield from iter_parquet_texts(path, text_field)
    elif suffix == ".txt":
        yield read_txt(path)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected "
            f"{', '.join(TEXT_SUFFIXES)} (or pubmedqa:PATH, medquad:PATH)"
        )


def text_files(spec: str) -> list[Path]:
    """The files a path, folder or glob names, in a fixed order."""
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec}: the pattern matches no files")
        return files
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(f"{path}: holds no {', '.join(TEXT_SUFFIXES)} files")
    return files


def files_source(spec: str, text_field: str) -> DocumentSource:
    files = text_files(spec)

    def read() -> Iterator[str]:
        for f in files:
            yield from iter_file_texts(f, text_field)

    return DocumentSource(spec, "files", files_identity(files), read)


# ------------------------------------------------------------------------------ medical sources


def pubmedqa_files(path: Path) -> list[Path]:
    """The authors' files under a folder (else its JSON Lines/parquet Hub exports), sorted."""
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob("ori_pq*.json") if PUBMEDQA_FILE.match(p.name))
    found = found or sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet"))
    if not found:
        raise DataError(
            f"{path}: holds no PubMedQA file (ori_pqal.json, ori_pqaa.json, ori_pqau.json, "
            "or .jsonl/.parquet exports of the Hub configs)"
        )
    return found


def pubmedqa_source(spec: str, path: Path) -> DocumentSource:
    from medlm.data.pubmedqa import load_records
    from medlm.data.sources import LocalSource

    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    files = pubmedqa_files(path)

    def read() -> Iterator[str]:
        for record in load_records(LocalSource(tuple(files)), labeled=False):
            yield "\n".join([*record.contexts, record.long_answer])

    return DocumentSource(spec, "pubmedqa", files_identity(files), read)


def medquad_source(spec: str, path: Path) -> DocumentSource:
    from medlm.data.medquad import Summary, detect_format, list_files, read_csv, read_xml

    fmt = detect_format(path)
    files = list_files(path, f".{fmt}")

    def read() -> Iterator[str]:
        pairs = (read_xml if fmt == "xml" else read_csv)(path, Summary())
        for pair in pairs:
            yield pair.answer.strip()

    return DocumentSource(spec, "medquad", files_identity(files), read)


def _holds(path: Path, pattern: str) -> bool:
    return path.is_dir() and next((p for p in path.rglob(pattern) if p.is_file()), None) is not None


# ------------------------------------------------------------------------------------------- hub


def hub_source(
    spec: str, hub_id: str, config: str | None, split: str, text_field: str
) -> DocumentSource:
    def read() -> Iterator[str]:
        import datasets

        where = f"hub {hub_id} ({split}{', ' + config if config else ''})"
        if not spec.startswith("hub:"):  # it might have been meant as a local path
            where = f"{where} (no local file or folder {spec} either)"
        try:
            rows = datasets.load_dataset(hub_id, config, split=split, streaming=True)
        except datasets.exceptions.DatasetNotFoundError as err:
            raise DataError(
                f"{where}: not found on the Hugging Face Hub: {_first_line(err)}"
            ) from None
        except (ConnectionError, TimeoutError, OSError) as err:
            from medlm.staging.data_files import stage_command

            command = stage_command(hub_id, config)
            staged = f" ({command} writes a slice of it)" if command else ""
            raise MedlmError(
                f"{where}: cannot reach the Hugging Face Hub ({type(err).__name__}: "
                f"{_first_line(err)}); on an offline machine, give local JSONL/parquet "
                f"files as SOURCE{staged}"
            ) from None
        except ValueError as err:  # an unknown config or split
            raise ConfigError(f"{where}: {_first_line(err)}") from None
        for i, row in enumerate(rows):
            yield _text_of(row, text_field, f"{where}: row {i}")

    return DocumentSource(spec, "hub", hub_identity(hub_id, config, None, split), read)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------- choose


def open_source(
    spec: str, text_field: str = "text", hub_config: str | None = None, hub_split: str = "train"
) -> DocumentSource:
    """The DocumentSource a SOURCE argument names (see the module docstring)."""
    if spec.startswith("hub:"):
        return hub_source(spec, spec[4:], hub_config, hub_split, text_field)
    if spec.startswith("pubmedqa:"):
        return pubmedqa_source(spec, Path(spec[9:]).expanduser())
    if spec.startswith("medquad:"):
        return medquad_source(spec, Path(spec[8:]).expanduser())
    path = Path(spec).expanduser()
    if not glob.has_magic(spec) and not path.exists():
        if HUB_ID.match(spec):
            return hub_source(spec, spec, hub_config, hub_split, text_field)
        raise DataError(
            f"{spec}: no such file or directory (nor a Hub dataset id such as "
            "HuggingFaceFW/fineweb-edu)"
        )
    if PUBMEDQA_FILE.match(path.name) or _holds(path, "ori_pq*.json"):
        return pubmedqa_source(spec, path)
    if path.suffix.lower() == ".xml" or _holds(path, "*.xml"):
        return medquad_source(spec, path)
    return files_source(spec, text_field)


def open_sources(
    specs: Sequence[str],
    text_field: str = "text",
    hub_config: str | None = None,
    hub_split: str = "train",
) -> list[DocumentSource]:
    if not specs:
        raise ConfigError("no SOURCE given")
    if hub_config is not None and not any(
        s.startswith("hub:") or HUB_ID.match(s) and not Path(s).exists() for s in specs
    ):
        raise ConfigError(f"--hub-config {hub_config}: no SOURCE is a Hub dataset")
    return [open_source(s, text_field, hub_config, hub_split) for s in specs]
