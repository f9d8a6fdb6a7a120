"""The Hugging Face Hub replaced at its API boundary, for staging tests (no network).

:class:`FakeHub` stands in for ``huggingface_hub.HfApi().repo_info``,
``huggingface_hub.snapshot_download`` and ``datasets.load_dataset``, the calls staging makes; it
serves rows in the Hub's real column layout (built here from the real published files where
../shared has them) and model directories saved by transformers. It checks that every download
asks for the commit the revision was resolved to, and counts its calls.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError


def commit_of(repo_id: str, revision: str = "main") -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def _http_error(cls: type, message: str, url: str) -> Exception:
    return cls(message, response=httpx2.Response(404, request=httpx2.Request("GET", url)))


class FakeHub:
    def __init__(self) -> None:
        self.datasets: dict[tuple[str, str | None, str], list[dict]] = {}
        self.models: dict[str, Path] = {}
        self.branches = ("main", "v1")  # the revisions that exist besides commits
        self.calls: list[tuple[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        hub = self

        class FakeHfApi:  # a class, as other modules annotate with it
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def repo_info(self, *args: Any, **kwargs: Any) -> SimpleNamespace:
                return hub.repo_info(*args, **kwargs)

        monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(datasets, "load_dataset", self.load_dataset)
        return self

    def _known(self, repo_id: str, repo_type: str) -> bool:
        if repo_type == "model":
            return repo_id in self.models
        return any(key[0] == repo_id for key in self.datasets)

    def _check_commit(self, repo_id: str, revision: str | None) -> None:
        assert revision in {commit_of(repo_id, b) for b in self.branches}, (
            f"{repo_id}: downloaded at {revision!r}, not at a resolved commit"
        )

    # huggingface_hub.HfApi().repo_info
    def repo_info(
        self, repo_id: str, *, repo_type: str | None = None, revision: str | None = None, **_: Any
    ) -> SimpleNamespace:
        self.calls.append(("repo_info", repo_id))
        url = f"https://huggingface.co/api/{repo_type}s/{repo_id}/revision/{revision}"
        if not self._known(repo_id, repo_type or "model"):
            raise _http_error(
                RepositoryNotFoundError, "404 Client Error: Repository Not Found", url
            )
        commits = {commit_of(repo_id, b): b for b in self.branches}
        if revision is None or revision in self.branches:
            return SimpleNamespace(sha=commit_of(repo_id, revision or "main"))
        if revision in commits:
            return SimpleNamespace(sha=revision)
        raise _http_error(RevisionNotFoundError, "404 Client Error: Revision Not Found", url)

    # datasets.load_dataset
    def load_dataset(
        self,
        path: str,
        name: str | None = None,
        *,
        split: str,
        revision: str | None = None,
        streaming: bool = False,
        **_: Any,
    ):
        self.calls.append(("load_dataset", path))
        self._check_commit(path, revision)
        ds = datasets.Dataset.from_list(self.datasets[(path, name, split)])
        return ds.to_iterable_dataset() if streaming else ds

    # huggingface_hub.snapshot_download
    def snapshot_download(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        allow_patterns: list[str] | None = None,
        local_dir: str | None = None,
        **_: Any,
    ) -> str:
        self.calls.append(("snapshot_download", repo_id))
        self._check_commit(repo_id, revision)
        src, out = self.models[repo_id], Path(local_dir)
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns or ["*"]):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / rel)
        # what the real call leaves beside the files
        (out / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        (out / ".cache" / "huggingface" / "config.json.metadata").write_text(revision or "")
        return str(out)

    def count(self, kind: str | None = None) -> int:
        return sum(1 for c in self.calls if kind is None or c[0] == kind)


# ------------------------------------------------------------- Hub layouts of the real files


def pubmedqa_hub_rows(ori_pqal: Path) -> list[dict]:
    """qiaojin/PubMedQA pqa_labeled's rows for the authors' file: the context is a struct of
    lists, and reasoning_*_pred come as lists of characters, as the Hub's features store them."""
    rows = []
    for pubid, r in json.loads(ori_pqal.read_text(encoding="utf-8")).items():
        rows.append(
            {
                "pubid": int(pubid),
                "question": r["QUESTION"],
                "context": {
                    "contexts": r["CONTEXTS"],
                    "labels": r["LABELS"],
                    "meshes": r["MESHES"],
                    "reasoning_required_pred": list(r["reasoning_required_pred"]),
                    "reasoning_free_pred": list(r["reasoning_free_pred"]),
                },
                "long_answer": r["LONG_ANSWER"],
                "final_decision": r["final_decision"],
            }
        )
    return rows


def mqp_hub_rows(mqp_csv: Path) -> list[dict]:
    """curaihealth/medical_questions_pairs's rows for Curai's CSV (ids and labels as numbers)."""
    import csv

    with open(mqp_csv, newline="", encoding="utf-8") as f:
        return [
            {"dr_id": int(d), "question_1": q1, "question_2": q2, "label": int(label)}
            for d, q1, q2, label in csv.reader(f)
        ]


def medquad_hub_rows(xml_root: Path) -> list[dict]:
    """lavita/MedQuAD's rows (one per question) for MedQuAD's XML documents."""
    rows = []
    for path in sorted(xml_root.rglob("*.xml")):
        root = ET.parse(path).getroot()
        umls = root.find(".//UMLS")
        cuis = [c.text for c in root.iter("CUI") if c.text]
        types = [t.text for t in root.iter("SemanticType") if t.text]
        for qa in root.iter("QAPair"):
            q, a = qa.find("Question"), qa.find("Answer")
            rows.append(
                {
                    "document_id": root.get("id") or root.get("fid"),
                    "document_source": root.get("source") or "CDC",
                    "document_url": root.get("url") or "",
                    "category": root.findtext(".//Category"),
                    "umls_cui": "|".join(cuis) or None,
                    "umls_semantic_types": "|".join(types) or None,
                    "umls_semantic_group": umls.findtext("SemanticGroup")
                    if umls is not None
                    else None,
                    "synonyms": None,
                    "question_id": q.get("qid"),
                    "question_focus": root.findtext("Focus"),
                    "question_type": q.get("qtype"),
                    "question": "".join(q.itertext()),
                    "answer": "".join(a.itertext()) if a is not None else None,
                }
            )
    return rows


def hellaswag_hub_rows(n: int) -> list[dict]:
    """Rowan/hellaswag validation rows: ``label`` a string, as the Hub stores it."""
    return [
        {
            "ind": 24 + i,
            "activity_label": "Roof shingle removal",
            "ctx_a": f"A man is sitting on a roof {i}.",
            "ctx_b": "he",
            "ctx": f"A man is sitting on a roof {i}. he",
            "endings": [f"is using wrap {i}.", "is ripping level tiles off.", "starts.", "sits."],
            "source_id": f"activitynet~v_{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
        for i in range(n)
    ]


def helpsteer_hub_rows(n: int, offset: int = 0, helpful: int | None = None) -> list[dict]:
    """nvidia/HelpSteer rows; helpfulness 0, 1, ... 4, 0, ... unless ``helpful`` is given."""
    return [
        {
            "prompt": f"What helps with headache number {offset + i}?",
            "response": f"Rest and water, case {offset + i}.",
            "helpfulness": i % 5 if helpful is None else helpful,
            "correctness": 3,
            "coherence": 4,
            "complexity": 1,
            "verbosity": 1,
        }
        for i in range(n)
    ]


def fineweb_hub_rows(n: int) -> list[dict]:
    return [
        {
            "text": f"Document {i}: the heart pumps blood through the body. " * (1 + i % 3),
            "id": f"<urn:uuid:{i:08d}>",
            "dump": "CC-MAIN-2024-10",
            "url": f"https://example.org/{i}",
            "score": 3.5,
            "int_score": 4,
            "token_count": 12,
        }
        for i in range(n)
    ]
