"""What a stage hands to its caller (the Dagster layer, the CLI, a notebook)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


@dataclass
class StageResult:
    stage: str
    path: Path  # the stage's folder under the store
    metadata: dict[str, int | float | str] = field(default_factory=dict)  # scalars for the UI
    markdown: dict[str, str] = field(default_factory=dict)  # tables for the UI
    plots: dict[str, Path] = field(default_factory=dict)  # PNG files
    params: dict[str, Any] = field(default_factory=dict)  # MLflow params
    metrics: dict[str, float] = field(default_factory=dict)  # MLflow metrics
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # MLflow step series
    files: list[Path] = field(default_factory=list)  # small artifacts worth logging to MLflow
    fingerprint: str = ""  # content hash of the output (a data version)


def markdown_table(df: pl.DataFrame) -> str:
    """A markdown table of a small frame (long strings cut, newlines flattened)."""
    if df.height == 0:
        return "_(empty)_"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.iter_rows():
        cells = []
        for v in row:
            s = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(s.replace("\n", " ").replace("|", "\\|")[:120])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
