"""The optimisation history of a sweep, as Optuna draws it: each trial's value in job order, the
best value so far as a step line, failed trials marked along the bottom."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medlm.utils.plots import save_figure
from medlm.utils.sweeps import COMPLETED, Trial, is_better


def write_sweep_history(
    trials: Sequence[Trial], metric: str, direction: str, path: Path, title: str
) -> Path:
    """``path``.png: value per trial, best so far, and the trials that failed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    done = [t for t in trials if t.status == COMPLETED and t.value is not None]
    failed = [t for t in trials if t not in done]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if done:
        ax.scatter(
            [t.job_num for t in done], [t.value for t in done], color="tab:blue", label="trial"
        )
        steps, best = [], []
        for t in done:
            if not best or is_better(t.value, best[-1], direction):
                best.append(t.value)
            else:
                best.append(best[-1])
            steps.append(t.job_num)
        ax.step(steps, best, where="post", color="tab:red", label=f"best so far ({direction})")
    if failed:
        bottom = min((t.value for t in done), default=0.0)
        ax.scatter(
            [t.job_num for t in failed],
            [bottom] * len(failed),
            marker="x",
            color="gray",
            label="failed",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (job number)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
