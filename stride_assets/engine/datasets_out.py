"""Curated outputs as versioned parquet datasets that ``datasets.load_dataset`` reads as they are.

    <stage>/versions/<version>/<split>.parquet   one file per split (e.g. keep, drop)
    <stage>/versions/<version>/README.md         dataset card whose YAML names the splits
    <stage>/current.json                          {"version", "path", "splits"}: the latest version

A version is named by the content hash of what produced it, so re-deriving from the same scores
and settings rewrites the same version, and older versions stay for comparison. Each version
folder is written whole in a temporary folder and renamed into place.

    datasets.load_dataset(".stride/store/curated_dataset/versions/<version>")   # splits keep, drop
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from stride_assets.engine.artifacts import atomic_dir, file_digest, read_json, write_json
from stride_assets.engine.errors import StrideInputError


def _card(title: str, description: str, splits: list[str]) -> str:
    files = "\n".join(f"  - split: {s}\n    path: {s}.parquet" for s in splits)
    return f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n---\n# {title}\n\n{description}\n"


def write_dataset(folder: Path, version: str, splits: dict[str, pl.DataFrame], title: str, description: str) -> Path:
    """Write ``splits`` as version ``version`` under ``folder`` and make it current; returns its folder."""
    target = Path(folder) / "versions" / version
    with atomic_dir(target) as tmp:
        for name, frame in splits.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        (tmp / "README.md").write_text(_card(title, description, list(splits)))
    write_json({"version": version, "path": str(target), "splits": list(splits)}, Path(folder) / "current.json")
    return target


def read_current(folder: Path, split: str) -> pl.DataFrame:
    """A split of the current version."""
    pointer = Path(folder) / "current.json"
    if not pointer.exists():
        raise StrideInputError(f"no dataset version under {folder}: materialize its stage first")
    current = read_json(pointer)
    if split not in current["splits"]:
        raise StrideInputError(f"dataset {folder} has splits {current['splits']}, not {split!r}")
    return pl.read_parquet(Path(current["path"]) / f"{split}.parquet")


def inputs_version(inputs: list[Path], settings: dict[str, Any]) -> str:
    """Version of a derived dataset: a hash of the files it was derived from and its settings."""
    return file_digest(*inputs)[:8] + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:4]
