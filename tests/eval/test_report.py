"""Benchmark outputs: results.json in the issue's shape, one predictions file per model, the table
as markdown and CSV with the baseline beside the models, a chart; bad names write nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medlm.errors import ConfigError
from medlm.eval.report import bar_chart, markdown_table, metric_names, write_results

MODELS = {
    "base": {"acc": 0.5, "macro_f1": 0.31, "precision_yes": 0.6, "n": 500},
    "tuned": {"acc": torch.tensor(0.625), "macro_f1": 0.4512345, "precision_yes": 0.7, "n": 500},
}
BASELINE = {"majority_label": "yes", "acc": 0.552, "macro_f1": 0.2371, "n": 500}
PREDICTIONS = {
    "base": [{"id": "1", "gold": "yes", "prediction": "no", "scores": {"yes": -2.0, "no": -1.5}}],
    "tuned": [
        {"id": "1", "gold": "yes", "prediction": "yes", "scores": {"yes": -0.5, "no": -3.0}},
        {"id": "2", "gold": "no", "prediction": "no", "scores": {"yes": float("-inf"), "no": -0.1}},
    ],
}


def test_every_output_of_one_evaluation(tmp_path: Path) -> None:
    paths = write_results(
        tmp_path,
        "pubmedqa",
        MODELS,
        PREDICTIONS,
        metrics=["acc", "macro_f1"],
        baseline=BASELINE,
        baseline_name="majority (always yes)",
        details={"tuned": {"confusion": [[1, 0], [0, 1]]}},
        title="PubMedQA, official test split",
    )
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["benchmark"] == "pubmedqa"
    assert doc["models"]["tuned"] == {
        "acc": 0.625,
        "macro_f1": 0.4512345,
        "precision_yes": 0.7,
        "n": 500,
    }
    assert doc["baseline"] == {"name": "majority (always yes)", **BASELINE}
    assert doc["details"] == {"tuned": {"confusion": [[1, 0], [0, 1]]}}

    lines = (tmp_path / "predictions" / "tuned.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["1", "2"]
    assert json.loads(lines[1])["scores"] == {"yes": None, "no": -0.1}  # -inf is not JSON

    table = (tmp_path / "results.md").read_text()
    assert table.startswith("# PubMedQA, official test split\n\n| model | acc | macro_f1 | n |")
    assert "| tuned | 0.6250 | 0.4512 | 500 |" in table
    assert "| majority (always yes) | 0.5520 | 0.2371 | 500 |" in table
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["base", "tuned", "majority (always yes)"]
    assert rows[1]["acc"] == "0.625" and rows[2]["macro_f1"] == "0.2371"

    png = (tmp_path / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert set(paths) == {
        "results",
        "table",
        "csv",
        "chart",
        "predictions/base",
        "predictions/tuned",
    }
    assert not list(tmp_path.rglob("*.tmp"))


def test_defaults_take_every_numeric_metric_and_no_baseline(tmp_path: Path) -> None:
    models = {"gpt2": {"acc": 0.28, "acc_norm": 0.29, "acc_norm_bytes": 0.3, "n": 10042}}
    assert metric_names(models) == ["acc", "acc_norm", "acc_norm_bytes"]
    write_results(tmp_path, "hellaswag", models)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc == {"benchmark": "hellaswag", "models": models}
    assert "| gpt2 | 0.2800 | 0.2900 | 0.3000 | 10,042 |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "predictions").exists()


@pytest.mark.parametrize("name", ["a/b", "../x", "", "-x", "two words"])
def test_a_model_name_that_cannot_be_a_file_name_writes_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="a model name may hold letters, digits"):
        write_results(
            tmp_path / "out",
            "pubmedqa",
            {"ok": MODELS["base"], name: MODELS["base"]},
            {"ok": PREDICTIONS["base"]},
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="no models to report"):
        write_results(tmp_path / "out", "pubmedqa", {})


def test_table_and_chart_helpers(tmp_path: Path) -> None:
    rows = [{"arm": "lora", "acc": 0.81234, "trainable params": 1234567, "note": None}]
    assert markdown_table(rows).splitlines() == [
        "| arm | acc | trainable params | note |",
        "|---|---|---|---|",
        "| lora | 0.8123 | 1,234,567 |  |",
    ]
    assert markdown_table(rows, ["arm", "acc"]).splitlines()[2] == "| lora | 0.8123 |"
    path = bar_chart(
        {"a": {"acc": 0.4}, "b": {"acc": float("nan")}},
        ["acc"],
        tmp_path / "c.png",
        "title",
        baseline={"acc": 0.5, "other": 0.1},
    )
    assert path.read_bytes().startswith(b"\x89PNG")
