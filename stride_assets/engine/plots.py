"""Small PNG plots for the UIs (Dagster metadata, MLflow artifacts). Headless matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stride_assets.engine.artifacts import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.0), dpi=90)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def curves(series: dict[str, Sequence[tuple[int, float]]], path: Path, title: str, log_y: bool = False) -> Path:
    """Line plot of step series (e.g. loss curves)."""
    plt, fig, ax = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel("step")
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def histogram(values: np.ndarray, path: Path, title: str, xlabel: str, bins: int = 60) -> Path:
    """Histogram with a log count axis (influence scores are heavy-tailed)."""
    plt, fig, ax = _figure()
    values = np.asarray(values, dtype=np.float64)
    if values.size:
        ax.hist(values, bins=bins, color="#4477aa")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(plt, fig, path)
