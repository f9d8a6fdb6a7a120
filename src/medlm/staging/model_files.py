"""Pretrained weights from the Hub -> ``models/<name>/``: config.json and safetensors, no pickles.

``huggingface_hub.snapshot_download`` fetches, at the pinned commit, only what medlm's loader
reads: ``config.json``, the safetensors weights (one file, or shards with their index), and a
Llama 3 ``tokenizer.model`` where the repository has one (also under ``original/``). A repository
with no safetensors has its ``pytorch_model.bin`` read weights-only (no pickled code runs) and
written as ``model.safetensors``; the ``.bin`` is not kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlm.errors import ConfigError, MedlmError
from medlm.staging.hub import hub_errors
from medlm.staging.manifest import ItemFiles
from medlm.utils.io import atomic_path

SAFE_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.model",
    "original/tokenizer.model",
]
KEPT_SUFFIXES = (".json", ".safetensors", ".model")
PICKLE_PATTERNS = ["config.json", "generation_config.json", "pytorch_model.bin"]


@dataclass(frozen=True)
class ModelSpec:
    """``--models`` entry ``<hub id>[@<revision>]``: staged to ``models/<last part of the id>``."""

    hub_id: str
    revision: str | None

    @property
    def name(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1]

    @property
    def rel(self) -> str:
        return f"models/{self.name}"


def parse_model(spec: str) -> ModelSpec:
    hub_id, _, revision = spec.partition("@")
    parts = hub_id.split("/")
    if not hub_id or len(parts) > 2 or not all(parts) or hub_id.startswith((".", "~")):
        raise ConfigError(
            f"--models {spec}: not a Hugging Face Hub model id (gpt2, meta-llama/Llama-3.2-1B), "
            "optionally @<revision>"
        )
    return ModelSpec(hub_id, revision or None)


def _download(spec: ModelSpec, sha: str, patterns: list[str], into: Path) -> Path:
    import huggingface_hub

    with hub_errors(f"model {spec.hub_id}", sha):
        return Path(
            huggingface_hub.snapshot_download(
                spec.hub_id, revision=sha, allow_patterns=patterns, local_dir=str(into)
            )
        )


def _bin_to_safetensors(bin_path: Path, target: Path) -> None:
    """``pytorch_model.bin`` read weights-only, written as safetensors (tied tensors copied)."""
    from safetensors.torch import save_file

    from medlm.models.checkpoint import read_checkpoint

    state = read_checkpoint(bin_path)
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def stage_model(spec: ModelSpec, sha: str, files: ItemFiles) -> dict[str, Any]:
    """Download ``spec`` at commit ``sha`` into ``files``; what the manifest records of it."""
    from medlm.models.checkpoint import read_hf_config

    directory = _download(spec, sha, SAFE_PATTERNS, files.scratch / "download")
    weights = "safetensors"
    if not any((directory / f).is_file() for f in SAFE_PATTERNS[2:4]) and not list(
        directory.glob("model-*.safetensors")
    ):
        directory = _download(spec, sha, PICKLE_PATTERNS, files.scratch / "download")
        if not (directory / "pytorch_model.bin").is_file():
            raise MedlmError(
                f"model {spec.hub_id}@{sha[:12]}: no model.safetensors, safetensors shards or "
                "pytorch_model.bin in the repository"
            )
        _bin_to_safetensors(
            directory / "pytorch_model.bin", files.path(f"{spec.rel}/model.safetensors")
        )
        weights = "pytorch_model.bin converted to safetensors"
    read_hf_config(directory)  # a config.json medlm can read
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise MedlmError(f"model {spec.hub_id}@{sha[:12]}: shards {missing} did not download")
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        # what snapshot_download fetched, without its bookkeeping under .cache/
        if path.is_file() and not rel.startswith(".") and rel.endswith(KEPT_SUFFIXES):
            files.adopt(f"{spec.rel}/{rel}", path)
    return {"weights": weights}
