"""What the curated outputs share: the result of a versioned dataset split in two by influence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from stride_assets.engine import plots
from stride_assets.engine.artifacts import file_digest
from stride_assets.engine.result import StageResult


def two_split_result(stage: str, folder: Path, splits: dict[str, pl.DataFrame], plot: tuple[str, Path, str],
                     **fields: Any) -> StageResult:
    """The result of a dataset version in ``folder`` with two ``splits``; ``plot`` = (name, path, title)
    of the histogram of their summed influence. ``fields`` go to the ``StageResult`` as they are."""
    name, path, title = plot
    histogram = plots.histograms({label: frame["score_sum"].to_numpy() for label, frame in splits.items()},
                                 path, title, "score summed over queries")
    return StageResult(stage=stage, path=folder, plots={name: histogram}, files=[folder / "README.md"],
                       fingerprint=file_digest(*sorted(folder.glob("*.parquet"))), **fields)
