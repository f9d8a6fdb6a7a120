"""``DIR/manifest.json``: what a staging directory holds, and writing one item's files safely.

Every staged item (a dataset, a model, a tokenizer) has one entry, keyed ``<kind>:<name>``: the
request that made it (kind, source, config, the revision asked for, the rows asked for), the Hub
commit it was pinned to (``revision``), and each file's path (relative to DIR), size and sha256.
An item is written by :class:`ItemFiles`: its files go into a scratch folder under
``DIR/.staging/``, each written atomically, and are renamed into place together once all of them
are complete; the manifest entry is written (atomically) after that. A failure leaves the item's
old files and entry as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medlm.data.shards import file_sha256
from medlm.errors import MedlmError
from medlm.utils.io import atomic_write

MANIFEST = "manifest.json"
FORMAT = 1
SCRATCH = ".staging"  # DIR/.staging/<item>/: an item's files until they are complete


class Manifest:
    """The manifest of staging directory ``root`` (empty when there is none yet)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / MANIFEST
        self.items: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise MedlmError(
                    f"{self.path}: cannot be read ({err}); delete it to stage everything again"
                ) from None
            if not isinstance(doc, dict) or not isinstance(doc.get("items"), dict):
                raise MedlmError(
                    f"{self.path}: not a medlm staging manifest (no 'items' object); "
                    "delete it to stage everything again"
                )
            self.items = doc["items"]

    def complete(self, key: str, request: Mapping[str, Any]) -> bool:
        """Staged before for the same request, and every file still there at its size."""
        entry = self.items.get(key)
        if entry is None or any(entry.get(k) != v for k, v in request.items()):
            return False
        for f in entry.get("files", []):
            path = self.root / f["path"]
            if not path.is_file() or path.stat().st_size != f["size"]:
                return False
        return True

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """Set ``key``'s entry; files the previous entry listed and this one does not go."""
        old = self.items.get(key)
        self.items[key] = entry
        self.save()
        if old is not None:
            kept = {f["path"] for f in entry["files"]}
            for f in old.get("files", []):
                if f["path"] not in kept:
                    (self.root / f["path"]).unlink(missing_ok=True)

    def save(self) -> None:
        doc = {"format": FORMAT, "items": dict(sorted(self.items.items()))}
        with atomic_write(self.path, encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")


class ItemFiles:
    """One item's files: written under a scratch folder, renamed into ``root`` together.

    ``path(rel)`` declares a file and returns where to write it (write it with
    ``medlm.utils.io.atomic_write``/``atomic_path``); ``adopt(rel, src)`` declares a file that a
    library wrote into :attr:`scratch` (a Hub download). Only declared files are moved.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.scratch = root / SCRATCH / key.replace(":", "-").replace("/", "-")
        shutil.rmtree(self.scratch, ignore_errors=True)  # a previous attempt's leftovers
        self.scratch.mkdir(parents=True)
        self._files: dict[str, Path] = {}

    def path(self, rel: str) -> Path:
        target = self.scratch / "files" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        self._files[rel] = target
        return target

    def adopt(self, rel: str, src: Path) -> None:
        if not src.is_file():
            raise MedlmError(f"{src}: expected a downloaded file here, found none")
        self._files[rel] = src

    def declared(self) -> list[str]:
        return sorted(self._files)

    def commit(self) -> list[dict[str, Any]]:
        """Move every declared file into place; their paths, sizes and sha256, sorted by path."""
        if not self._files:
            raise MedlmError(f"{self.scratch}: nothing was written for this item")
        entries = []
        for rel, src in sorted(self._files.items()):
            if not src.is_file():
                raise MedlmError(f"{src}: declared for {rel} but never written")
            entries.append({"path": rel, "size": src.stat().st_size, "sha256": file_sha256(src)})
        for rel, src in sorted(self._files.items()):
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
        self.discard()
        return entries

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            self.scratch.parent.rmdir()  # DIR/.staging, once no item is in progress
        except OSError:
            pass
