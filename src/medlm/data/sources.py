"""Where a dataset's records come from, and reading them with errors that point at the bad line.

Resolution order, the same for every dataset:
1. an explicit ``data.path`` (a file, or a directory holding one of the dataset's file names);
2. ``$MEDLM_DATA_DIR/<dataset subdir>`` when it holds one of those names;
3. the Hugging Face Hub through ``datasets.load_dataset(hub_id, config, split=...)``.

Local files are JSON (one document, or JSON Lines written under a ``.json`` name, as
``Dataset.to_json`` does), JSON Lines or parquet. Every record keeps where it came from
(file and line, row or top-level key) so that a validation error can name it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medlm.data.cache import file_identity, hub_identity
from medlm.errors import ConfigError, DataError, MedlmError

DATA_DIR_ENV = "MEDLM_DATA_DIR"


@dataclass(frozen=True)
class RawRecord:
    """One undecoded record and its place in the source, for error messages."""

    origin: str  # the file, or the hub dataset, it came from
    where: str | None  # "line 3", "row 3" or "item 3"; None for a value under a top-level JSON key
    key: str | None  # the top-level key of a JSON object file (the PubMed id in ori_pqal.json)
    data: Any

    def location(self) -> str:
        return f"{self.origin}: {self.where}" if self.where else self.origin


# ---------------------------------------------------------------------------------------- readers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}): {err.reason}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse one JSON document; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[RawRecord]:
    """Records of a JSON Lines file; blank lines are skipped; a bad line is named by number."""
    path = Path(path)
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: line {lineno} column {err.colno}: malformed JSON: {err.msg}"
            ) from None
        yield RawRecord(str(path), f"line {lineno}", None, obj)


def read_parquet(path: str | os.PathLike) -> list[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None
    return [RawRecord(str(path), f"row {i}", None, row) for i, row in enumerate(rows)]


def _json_records(path: Path) -> list[RawRecord]:
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        first = text.lstrip().split("\n", 1)[0]
        if err.msg == "Extra data" and _is_json_object(first):  # JSON Lines under a .json name
            return list(iter_jsonl(path))
        raise DataError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if isinstance(doc, dict):
        return [RawRecord(str(path), None, str(k), v) for k, v in doc.items()]
    if isinstance(doc, list):
        return [RawRecord(str(path), f"item {i}", None, v) for i, v in enumerate(doc)]
    raise DataError(f"{path}: expected a JSON object or list of records, got {type(doc).__name__}")


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_records(path: str | os.PathLike) -> list[RawRecord]:
    """All records of a ``.json``, ``.jsonl``/``.ndjson`` or ``.parquet`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return list(iter_jsonl(path))
    if suffix == ".json":
        return _json_records(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(
        f"{path}: unsupported file type {suffix or '(none)'}; expected .json, .jsonl or .parquet"
    )


# ---------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class LocalSource:
    """One or more local files (several: the shards of one split)."""

    files: tuple[Path, ...]

    def identity(self) -> dict[str, Any]:
        return {"files": [file_identity(f) for f in self.files]}

    def describe(self) -> str:
        return (
            str(self.files[0])
            if len(self.files) == 1
            else f"{self.files[0].parent} ({len(self.files)} files)"
        )

    def records(self) -> Iterator[RawRecord]:
        for f in self.files:
            yield from read_records(f)


@dataclass(frozen=True)
class HubSource:
    """A split of a Hugging Face Hub dataset; the hints only shape the message when it is
    unreachable."""

    hub_id: str
    config: str | None
    split: str = "train"
    revision: str | None = None
    hint_subdir: str = field(default="", compare=False)
    hint_file: str = field(default="", compare=False)
    note: str = field(default="", compare=False)

    def identity(self) -> dict[str, Any]:
        return hub_identity(self.hub_id, self.config, self.revision, self.split)

    def describe(self) -> str:
        config = f", {self.config}" if self.config else ""
        return f"hub {self.hub_id} ({self.split}{config})"

    def unreachable_message(self) -> str:
        from medlm.staging.data_files import stage_command

        config = f" ({self.config})" if self.config else ""
        command = stage_command(self.hub_id, self.config)
        stage = (
            f"; on a machine with internet, {command} writes it for {DATA_DIR_ENV}=DIR/data"
            if command
            else ""
        )
        return (
            f"cannot reach the Hugging Face Hub for {self.hub_id}{config} and no local data is "
            f"configured: set data.path=/path/to/{self.hint_file} or {DATA_DIR_ENV}=/path/to/data "
            f"(with {self.hint_subdir}/{self.hint_file})" + self.note + stage
        )

    def load(self):
        """``datasets.load_dataset``: the Hub, or the local Hugging Face cache in offline mode."""
        import datasets

        try:
            return datasets.load_dataset(
                self.hub_id, self.config, split=self.split, revision=self.revision
            )
        except datasets.exceptions.DatasetNotFoundError as err:
            if not _offline():
                raise DataError(
                    f"{self.describe()}: not found on the Hugging Face Hub: {_first_line(err)}"
                ) from None
            raise MedlmError(
                f"{self.unreachable_message()} [{type(err).__name__}: {_first_line(err)}]"
            ) from None
        except (
            ConnectionError,
            TimeoutError,
            OSError,
        ) as err:  # offline, DNS failure, proxy, no cache
            raise MedlmError(
                f"{self.unreachable_message()} [{type(err).__name__}: {_first_line(err)}]"
            ) from None
        except ValueError as err:  # an unknown config or split name
            raise ConfigError(f"{self.describe()}: {_first_line(err)}") from None

    def records(self) -> Iterator[RawRecord]:
        origin = self.describe()
        for i, row in enumerate(self.load()):
            yield RawRecord(origin, f"row {i}", None, row)


Source = LocalSource | HubSource


def _offline() -> bool:
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def find_data_files(directory: Path, patterns: Sequence[str]) -> tuple[Path, ...]:
    """The files of the first glob pattern that matches anything in ``directory``, sorted."""
    if not directory.is_dir():
        return ()
    for pattern in patterns:
        matches = sorted(p for p in directory.glob(pattern) if p.is_file())
        if matches:
            return tuple(matches)
    return ()


def resolve_sources(
    path: str | os.PathLike | None,
    *,
    subdir: str | None,
    patterns: Mapping[str, Sequence[str]],
    hub: Mapping[str, HubSource | None] | None,
) -> dict[str, Source | None] | None:
    """Each split's source, by the order in the module docstring.

    ``patterns`` maps each split to its file names (globs) in order of preference, relative to the
    dataset's directory; the first split is the one that must exist. ``data.path`` may name one
    file (the first split), that directory, or the data root above it (``<root>/<subdir>``).
    ``hub`` gives each split's Hub source; None (no Hub dataset configured) returns None when no
    local files are found.
    """
    first = next(iter(patterns))

    def local(directory: Path) -> dict[str, Source | None] | None:
        found = {split: find_data_files(directory, names) for split, names in patterns.items()}
        if not found[first]:
            return None
        return {split: LocalSource(files) if files else None for split, files in found.items()}

    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data.path={path}: no such file or directory")
        if p.is_file():
            return {split: LocalSource((p,)) if split == first else None for split in patterns}
        found = local(p) or (local(p / subdir) if subdir else None)
        if found is None:
            where = f" (nor {subdir}/ with them)" if subdir else ""
            raise DataError(
                f"data.path={path}: directory holds none of {', '.join(patterns[first])}{where}"
            )
        return found
    env = os.environ.get(DATA_DIR_ENV)
    note = ""
    if env and subdir:
        found = local(Path(env).expanduser() / subdir)
        if found is not None:
            return found
        note = f" ({DATA_DIR_ENV}={env} holds none of {subdir}/{{{', '.join(patterns[first])}}})"
    if hub is None:
        return None
    return {split: replace(h, note=note) if h is not None else None for split, h in hub.items()}


def resolve_source(
    path: str | os.PathLike | None, *, subdir: str, patterns: Sequence[str], hub: HubSource
) -> Source:
    """The source of a dataset with one split (see :func:`resolve_sources`)."""
    found = resolve_sources(path, subdir=subdir, patterns={"train": patterns}, hub={"train": hub})
    return found["train"]
