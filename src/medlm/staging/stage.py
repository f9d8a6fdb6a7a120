"""``medlm-prepare stage DIR``: everything a run needs, fetched once where there is internet.

Plan first (every name and path checked, nothing fetched or written), then each item in turn:
skipped when the manifest says it is staged for the same request and its files are there;
otherwise its Hub revision is resolved to a commit, its files are written into a scratch folder
and moved into place together, and its manifest entry is written (see :mod:`.manifest`). An
error stops at the item it happened in: that item leaves nothing behind, the items before it
stay staged, and running the command again continues from there.

DIR's layout, the paths medlm looks for: ``data/<subdir>/...`` (``MEDLM_DATA_DIR``),
``tiktoken-cache/`` (``TIKTOKEN_CACHE_DIR``), ``models/<name>/`` (``model.pretrained``),
``tokenizers/llama3/tokenizer.model`` (``data.tokenizer=llama3:...``), ``manifest.json``.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medlm.errors import ConfigError, MedlmError
from medlm.staging.data_files import DATASETS, FINEWEB_CONFIG, FINEWEB_ROWS, DatasetSpec
from medlm.staging.hub import hub_errors, resolve_revision
from medlm.staging.manifest import ItemFiles, Manifest
from medlm.staging.model_files import parse_model, stage_model
from medlm.staging.tokenizer_files import (
    LLAMA3_REL,
    TIKTOKEN_DIR,
    llama3_request,
    parse_tokenizer,
    stage_llama3,
    stage_tiktoken,
)


@dataclass
class Item:
    """One thing to stage: ``request`` identifies it (an equal request is skipped when staged);
    ``run`` writes its files and returns what else the manifest records (the revision, rows)."""

    key: str
    label: str
    request: dict[str, Any]
    run: Callable[[ItemFiles], dict[str, Any]] = field(repr=False)


def _dataset_item(spec: DatasetSpec, revision: str | None, limit: int | None) -> Item:
    request = {
        "kind": "dataset",
        "source": spec.hub_id,
        "config": spec.config,
        "splits": list(spec.splits),
        "requested_revision": revision,
        "max_rows": limit,
    }

    def run(files: ItemFiles) -> dict[str, Any]:
        import datasets

        sha = resolve_revision(spec.hub_id, "dataset", revision)
        what = f"dataset {spec.describe()}"
        splits = {}
        for split in spec.splits:
            with hub_errors(what, sha):
                splits[split] = datasets.load_dataset(
                    spec.hub_id, spec.config, split=split, revision=sha, streaming=spec.streamed
                )
        if spec.streamed:  # rows download while they are written
            with hub_errors(what, sha):
                rows = spec.write(spec, splits, files, limit)
        else:
            rows = spec.write(spec, splits, files, limit)
        folder = f"{spec.rel}/{spec.config}" if spec.streamed else spec.rel
        return {"revision": sha, "rows": rows, "dir": folder}

    return Item(f"dataset:{spec.name}", spec.describe(), request, run)


def plan(
    datasets: Sequence[str] = (),
    models: Sequence[str] = (),
    tokenizers: Sequence[str] = (),
    fineweb_rows: int = FINEWEB_ROWS,
    fineweb_config: str = FINEWEB_CONFIG,
) -> list[Item]:
    """The items a command line asks for; every name is checked before anything is fetched."""
    if fineweb_rows < 1:
        raise ConfigError(f"--fineweb-rows {fineweb_rows}: must be a positive number of documents")
    items: list[Item] = []
    for entry in dict.fromkeys(datasets):
        name, _, revision = entry.partition("@")
        spec = DATASETS.get(name)
        if spec is None:
            raise ConfigError(
                f"--datasets {name}: unknown dataset; one of {', '.join(DATASETS)} "
                "(optionally <name>@<revision>)"
            )
        limit = None
        if spec.streamed:
            spec, limit = replace(spec, config=fineweb_config), fineweb_rows
        items.append(_dataset_item(spec, revision or None, limit))
    dirs: dict[str, str] = {}
    for entry in dict.fromkeys(models):
        spec = parse_model(entry)
        if spec.name in dirs:
            raise ConfigError(
                f"--models {dirs[spec.name]} and {entry} would both be staged to {spec.rel}"
            )
        dirs[spec.name] = entry
        request = {"kind": "model", "source": spec.hub_id, "requested_revision": spec.revision}

        def run_model(files: ItemFiles, spec=spec) -> dict[str, Any]:
            sha = resolve_revision(spec.hub_id, "model", spec.revision)
            return {"revision": sha, "dir": spec.rel, **stage_model(spec, sha, files)}

        items.append(Item(f"model:{spec.name}", spec.hub_id, request, run_model))
    for entry in dict.fromkeys(tokenizers):
        tok = parse_tokenizer(entry)
        if tok.path is not None:
            request = {"kind": "tokenizer", **llama3_request(tok)}
            items.append(Item(tok.key, str(tok.path), request, lambda f, t=tok: stage_llama3(t, f)))
        else:
            request = {"kind": "tokenizer", "source": f"tiktoken:{tok.name}"}
            items.append(Item(tok.key, tok.name, request, lambda f, t=tok: stage_tiktoken(t, f)))
    keys = [i.key for i in items]
    for key in keys:
        if keys.count(key) > 1:  # pubmedqa and pubmedqa@v1, two llama3: files
            raise ConfigError(f"{key} is asked for twice (with different revisions or files)")
    return items


@dataclass
class StageResult:
    root: Path
    manifest: Manifest
    staged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def env_lines(self) -> list[str]:
        """What makes a run read from ``root``: exports, then command-line overrides."""
        items = self.manifest.items
        kinds = {e.get("kind") for e in items.values()}
        lines = []
        if "dataset" in kinds:
            lines.append(f"export MEDLM_DATA_DIR={self.root / 'data'}")
        if any(str(e.get("source", "")).startswith("tiktoken:") for e in items.values()):
            lines.append(f"export TIKTOKEN_CACHE_DIR={self.root / TIKTOKEN_DIR}")
        if lines:
            lines.append("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
        for key, e in sorted(items.items()):
            if e.get("kind") == "model":
                lines.append(f"model.pretrained={self.root / e['dir']}")
            elif key == "tokenizer:llama3":
                lines.append(f"data.tokenizer=llama3:{self.root / LLAMA3_REL}")
        return lines

    def format(self) -> str:
        out = []
        for key in self.staged + self.skipped:
            e = self.manifest.items[key]
            rev = f" @ {e['revision'][:12]}" if e.get("revision") else ""
            rows = f", {e['rows']:,} rows" if e.get("rows") is not None else ""
            size = sum(f["size"] for f in e["files"])
            state = "staged" if key in self.staged else "already staged"
            config = f" ({e['config']})" if e.get("config") else ""
            out.append(
                f"{state:>14}  {key}  {e.get('source')}{config}{rev}{rows}, "
                f"{len(e['files'])} file(s), {size / 1e6:,.1f} MB"
            )
        out.append(f"manifest: {self.manifest.path}")
        env = self.env_lines()
        exports = [line for line in env if line.startswith("export ")]
        overrides = [line for line in env if not line.startswith("export ")]
        if exports:
            out += ["# environment of every run (compute nodes: hydra.launcher.setup):", *exports]
        if overrides:
            out += ["# overrides for medlm-train / medlm-eval:", *overrides]
        for e in self.manifest.items.values():
            if e.get("kind") == "dataset" and e.get("max_rows") is not None:
                out.append(f"# token shards: medlm-prepare shards {self.root / e['dir']} OUT_DIR")
        return "\n".join(out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_item(item: Item, root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``item``'s files into place: what it reports and the files' entries. A full disk or
    an unwritable DIR is one line; the item's scratch folder goes either way."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        files = ItemFiles(root, item.key)
        try:
            info = item.run(files)
            return info, files.commit()
        finally:
            files.discard()
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        if err.errno == errno.ENOSPC:
            raise MedlmError(
                f"{where}no space left on the device while staging {item.key} into {root}; "
                "nothing of it was kept: free space and run the same command again"
            ) from None
        raise MedlmError(f"{where}{err.strerror or err} while staging {item.key}") from None


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def stage(
    out_dir: str | Path,
    *,
    datasets: Sequence[str] = (),
    models: Sequence[str] = (),
    tokenizers: Sequence[str] = (),
    fineweb_rows: int = FINEWEB_ROWS,
    fineweb_config: str = FINEWEB_CONFIG,
    force: bool = False,
    log: Callable[[str], None] = _log,
) -> StageResult:
    """Stage what is asked into ``out_dir`` (module doc); skip what is staged unless ``force``."""
    items = plan(datasets, models, tokenizers, fineweb_rows, fineweb_config)
    root = Path(out_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    manifest = Manifest(root)
    if not items and not manifest.items:
        raise ConfigError(
            "nothing to stage: give --datasets, --models or --tokenizers "
            "(medlm-prepare stage --help lists them)"
        )
    result = StageResult(root, manifest)
    created = not root.exists()  # a DIR this command made is removed if nothing lands in it
    for item in items:
        if not force and manifest.complete(item.key, item.request):
            result.skipped.append(item.key)
            continue
        log(f"staging {item.key}: {item.label} ...")
        try:
            info, entries = _run_item(item, root)
        except BaseException:
            if created and not result.staged:
                _remove_if_empty(root)
            raise
        entry = {
            **item.request,
            **info,
            "files": entries,
            "staged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        manifest.record(item.key, entry)
        result.staged.append(item.key)
    return result
