"""Where a benchmark's results land: ``results.json``, one predictions file per model, a markdown
and CSV table, and a grouped bar chart; every file written atomically.

Layout under the run folder ``out_dir``::

    results.json           {"benchmark": ..., "models": {NAME: {METRIC: value, ..., "n": items}},
                            "baseline": {...}, "details": {NAME: {...}}}   (the last two optional)
    predictions/NAME.jsonl one line per item: its id, the gold label, the prediction, the scores
    results.md, .csv       one row per model (and the baseline), one column per metric
    results.png            one group of bars per metric, one bar per model; the baseline's value
                           as a dashed line over each metric it has

``results.json`` is written last, so that its presence means the evaluation finished. The table
and chart code is the one the question-pairs comparison of ``medlm.evaluate`` had
(``markdown_table``, ``bar_chart``, its CSV), made independent of that benchmark.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlm.errors import ConfigError
from medlm.utils.io import atomic_path, atomic_write

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_model_name(name: str) -> str:
    """A model's name becomes a file name and an MLflow metric prefix: letters, digits, ``._-``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            f"models.{name}: a model name may hold letters, digits, '.', '_' and '-' "
            "and must start with a letter or digit"
        )
    return name


def plain(value: Any) -> Any:
    """A JSON-safe copy: tensors and numpy scalars become numbers, non-finite floats null."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_names(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The numeric metrics of the models, in first-seen order, without the item count ``n``."""
    names: dict[str, None] = {}
    for metrics in models.values():
        for k, v in metrics.items():
            if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.setdefault(k)
    return list(names)


def results_rows(
    models: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str = "baseline",
) -> list[dict[str, Any]]:
    """One row per model (then the baseline): ``model``, each metric, ``n``."""
    rows = [
        {"model": name, **{k: m.get(k) for k in metrics}, "n": m.get("n")}
        for name, m in models.items()
    ]
    if baseline is not None:
        rows.append(
            {
                "model": baseline_name,
                **{k: baseline.get(k) for k in metrics},
                "n": baseline.get("n"),
            }
        )
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; floats with 4 decimals, integers with thousands separators."""
    if not rows:
        raise ValueError("markdown_table: no rows")
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as CSV with a header of every column in first-seen order."""
    path = Path(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def bar_chart(
    models: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
    path: str | Path,
    title: str,
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str = "baseline",
) -> Path:
    """Grouped bars: one group per metric, one bar per model; the baseline's value for each metric
    it has as a dashed line across that group. PNG, drawn without pyplot (no global backend)."""
    from matplotlib.figure import Figure

    path = Path(path)
    models = plain(models)
    baseline = plain(baseline) if baseline is not None else None
    names = list(models)
    if not names or not metrics:
        raise ValueError("bar_chart: nothing to draw")
    fig = Figure(figsize=(2.2 + 1.4 * len(metrics) + 0.3 * len(names), 4.2))
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        values = [_number(models[name].get(k)) for k in metrics]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    if baseline is not None:
        labelled = False
        for j, k in enumerate(metrics):
            value = baseline.get(k)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ax.hlines(
                    value,
                    j - 0.45,
                    j + 0.45,
                    colors="gray",
                    linestyles="--",
                    lw=1.2,
                    label=None if labelled else baseline_name,
                )
                labelled = True
    ax.set_xticks(range(len(metrics)), list(metrics))
    top = max([1.0] + [_number(m.get(k)) for m in models.values() for k in metrics])
    ax.set_ylim(0, top * 1.18)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", ncol=len(names) + 1, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value == value else 0.0


def write_predictions(path: str | Path, predictions: Iterable[Mapping[str, Any]]) -> Path:
    """JSON Lines, one item per line."""
    path = Path(path)
    with atomic_write(path) as f:
        for p in predictions:
            f.write(json.dumps(plain(p), ensure_ascii=False) + "\n")
    return path


def write_results(
    out_dir: str | Path,
    benchmark: str,
    models: Mapping[str, Mapping[str, Any]],
    predictions: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    chart_metrics: Sequence[str] | None = None,
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str = "baseline",
    details: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write every output of one evaluation under ``out_dir``; returns them by kind
    (``results``, ``table``, ``csv``, ``chart``, ``predictions/NAME``).

    ``models``: per model name, its metrics and ``n`` (items scored). ``metrics``: the table's
    columns (default every numeric metric); ``chart_metrics``: the chart's groups (default the
    table's). ``baseline`` (e.g. PubMedQA's majority class) is a table row, a dashed line in the
    chart and a key of ``results.json``; ``details`` (confusion matrices, settings) go to
    ``results.json`` alone. Prints nothing: the caller shows ``markdown_table``'s text.
    """
    if not models:
        raise ConfigError("no models to report: name at least one (models.NAME=...)")
    for name in models:
        check_model_name(name)
    out = Path(out_dir)
    models = plain(models)
    baseline = plain(baseline) if baseline is not None else None
    metrics = list(metrics) if metrics is not None else metric_names(models)
    chart_metrics = list(chart_metrics) if chart_metrics is not None else metrics
    title = title or benchmark
    paths: dict[str, Path] = {}
    for name, items in (predictions or {}).items():
        check_model_name(name)
        path = out / "predictions" / f"{name}.jsonl"
        paths[f"predictions/{name}"] = write_predictions(path, items)
    rows = results_rows(models, metrics, baseline, baseline_name)
    table = markdown_table(rows)
    with atomic_write(out / "results.md") as f:
        f.write(f"# {title}\n\n{table}\n")
    paths["table"] = out / "results.md"
    paths["csv"] = write_csv(out / "results.csv", rows)
    paths["chart"] = bar_chart(
        models, chart_metrics, out / "results.png", title, baseline, baseline_name
    )
    doc: dict[str, Any] = {"benchmark": benchmark, "models": models}
    if baseline is not None:
        doc["baseline"] = {"name": baseline_name, **baseline}
    if details:
        doc["details"] = plain(details)
    with atomic_write(out / "results.json") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")
    paths["results"] = out / "results.json"
    return paths


@dataclass
class Results:
    """One evaluation, as :func:`write_results` writes it: per model its metrics (``n``: items
    scored) and predictions, the baseline a reader compares with, and details for results.json."""

    benchmark: str
    title: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: list[str] | None = None  # the table's columns (default: every numeric metric)
    chart_metrics: list[str] | None = None
    baseline: dict[str, Any] | None = None
    baseline_name: str = "baseline"
    details: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # more outputs the benchmark wrote (plots)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        return write_results(
            out_dir,
            self.benchmark,
            self.models,
            self.predictions,
            metrics=self.metrics,
            chart_metrics=self.chart_metrics,
            baseline=self.baseline,
            baseline_name=self.baseline_name,
            details=self.details or None,
            title=self.title,
        )

    def table(self) -> str:
        metrics = self.metrics if self.metrics is not None else metric_names(plain(self.models))
        return markdown_table(
            results_rows(plain(self.models), metrics, plain(self.baseline), self.baseline_name)
        )
