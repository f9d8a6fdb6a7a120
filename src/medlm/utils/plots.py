"""Figures that training and evaluation both write: matplotlib's object API (no pyplot state),
imported
only when a figure is drawn, and saved through an atomic rename."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medlm.utils.io import atomic_path, atomic_write


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def write_confusion_matrix(
    counts: Sequence[Sequence[int]], label_names: Sequence[str], stem: Path, title: str
) -> list[Path]:
    """``stem``.csv (rows: true label, columns: predicted) and ``stem``.png, a heat map with the
    counts."""
    from matplotlib.figure import Figure

    counts = [[int(c) for c in row] for row in counts]
    csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
    with atomic_write(csv_path) as f:
        f.write("true\\predicted," + ",".join(label_names) + "\n")
        for name, row in zip(label_names, counts, strict=True):
            f.write(name + "," + ",".join(str(c) for c in row) + "\n")
    n = len(label_names)
    fig = Figure(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n))
    ax = fig.subplots()
    top = max(max(r) for r in counts) or 1
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=top)
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            ax.text(
                j, i, str(c), ha="center", va="center", color="white" if c > top / 2 else "black"
            )
    ax.set_xticks(range(n), label_names)
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=110)
    return [csv_path, png_path]
