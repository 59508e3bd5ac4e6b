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

    fig, ax = plt.subplots(figsize=(8.0, 4.5), dpi=110)  # 880 x 495 px: readable inline in the Dagster UI
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def curves(series: dict[str, Sequence[tuple[int, float]]], path: Path, title: str, log_y: bool = False,
           xlabel: str = "step", marker: str | None = None) -> Path:
    """Line plot of step series (e.g. loss curves, recall at k)."""
    plt, fig, ax = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, marker=marker)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def histogram(values: np.ndarray, path: Path, title: str, xlabel: str, bins: int = 60) -> Path:
    """Histogram with a log count axis (influence scores are heavy-tailed)."""
    return histograms({"": values}, path, title, xlabel, bins)


def histograms(groups: dict[str, np.ndarray], path: Path, title: str, xlabel: str, bins: int = 60) -> Path:
    """Overlaid histograms on shared bins (e.g. kept vs dropped), log count axis."""
    plt, fig, ax = _figure()
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    values = np.concatenate([a for a in arrays.values() if a.size]) if any(a.size for a in arrays.values()) else None
    if values is not None:
        edges = np.histogram_bin_edges(values, bins=bins)
        for name, array in arrays.items():
            if array.size:
                ax.hist(array, bins=edges, alpha=0.6 if len(arrays) > 1 else 1.0, label=name or None)
        ax.set_yscale("log")
        if len(arrays) > 1:
            ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(plt, fig, path)
