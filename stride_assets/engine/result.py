"""What a stage hands to its caller (the Dagster layer, the CLI, a notebook)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl


@dataclass
class StageResult:
    stage: str
    path: Path  # the stage's folder under the store
    metadata: dict[str, int | float | str | Path] = field(default_factory=dict)  # scalars for the UI (a Path: a link)
    markdown: dict[str, str] = field(default_factory=dict)  # tables for the UI
    plots: dict[str, Path] = field(default_factory=dict)  # PNG files
    params: dict[str, Any] = field(default_factory=dict)  # MLflow params
    metrics: dict[str, float] = field(default_factory=dict)  # MLflow metrics
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # MLflow step series
    files: list[Path] = field(default_factory=list)  # small artifacts worth logging to MLflow
    fingerprint: str = ""  # content hash of the output (a data version)


SIGNIFICANT = 4  # digits a float keeps in the UI's metadata and tables
MARKDOWN_SPECIAL = "\\`*_[]<>|#~"  # characters that would turn cell text into markup


def rounded(value: Any) -> Any:
    """A float to ``SIGNIFICANT`` digits (``0.37309453000000303`` -> ``0.3731``); anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT}g}")
    return value


def escape_markdown(text: str) -> str:
    """Cell text shown literally by a markdown renderer (``__setattr__`` stays ``__setattr__``), on one line."""
    flat = " ".join(str(text).split())
    return "".join(f"\\{c}" if c in MARKDOWN_SPECIAL else c for c in flat)


def _cell(value: Any, max_chars: int) -> str:
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT}g}"
    text = " ".join(str(value).split())
    return escape_markdown(text if len(text) <= max_chars else text[: max_chars - 1] + "…")


def markdown_table(df: pl.DataFrame, max_chars: int = 120) -> str:
    """A markdown table of a small frame: floats to 4 significant digits, text cut to ``max_chars``,
    flattened to one line and escaped (so names like ``__init__`` or ``a|b`` show as they are)."""
    if df.height == 0:
        return "_(empty)_"
    lines = ["| " + " | ".join(escape_markdown(c) for c in df.columns) + " |", "|" + "---|" * df.width]
    lines += ["| " + " | ".join(_cell(v, max_chars) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines)
