"""`stride bench incremental`: what appending data costs, against a full re-attribution, in one run.

The corpus (the embedded pydoc text, or micro's slice with ``quick``) is written as shard files;
the frozen base model and the query batch are built once and shared. Then, timed in the same
process:

- incremental: a new shard of ``append_fraction`` of the data is appended to the attributed
  store: its corpus block, design and operator bank, its perturbation block, the recovery of the
  query batch over every shard (the fan-in) and the curated outputs;
- full: every shard's blocks and the same recovery and curation, from scratch in a fresh store.

Both end with the same influence scores (each shard's seeds derive from its name, so the old
banks are the ones a full rebuild trains again); the report says how close they are.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from stride_assets.engine import pipeline, registry
from stride_assets.engine.artifacts import write_json
from stride_assets.engine.config import load_config
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.engine.stages import STAGES as SPECS
from stride_assets.engine.store import BenchFolder, Store

SHARED = ("base_model", "query_set", "query_features")  # frozen model, queries and their features: built once
TARGET = "curated_dataset"  # what is timed: the blocks a corpus change re-runs up to the curated dataset


def _timed_blocks(cfg, store: Store, shards: list[str], log: Callable[[str], None]) -> dict[str, float]:
    """The stages that make ``TARGET`` (but the shared ones), on the blocks of the given shards (and the
    default batch) only, in the stage table's order; seconds per stage."""
    seconds: dict[str, float] = {}
    timed = registry.upstream(SPECS, TARGET) - set(SHARED) | {TARGET}
    for stage in [s for s in pipeline.STAGES if s in timed]:
        start = time.perf_counter()
        for keys in pipeline.blocks(stage, cfg):
            if keys.get("shard", shards[0]) in shards and keys.get("batch", DEFAULT_BATCH) == DEFAULT_BATCH:
                pipeline.run_stage(stage, cfg, store, lambda _: None, **keys)
        seconds[stage] = time.perf_counter() - start
    log(f"  {len(shards)} shard(s): " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return seconds


def _scores(store: Store) -> pl.DataFrame:
    return store.read_scores([DEFAULT_BATCH]).select("query_id", "example_id", "score")


def run(out: Path, quick: bool = False, base_shards: int = 5, append_fraction: float = 0.1,
        log: Callable[[str], None] = print) -> dict:
    out = Path(out)
    folder = BenchFolder(out)
    profile = "micro" if quick else "default"
    passages = load_passages(load_config(profile).corpus)
    per_shard = int(passages.height * (1 - append_fraction) // base_shards)
    n_new = max(8, round(append_fraction * per_shard * base_shards))
    data = folder.file("data")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    names = [f"shard-{i:02d}" for i in range(base_shards)]
    for i, name in enumerate(names):
        passages[i * per_shard:(i + 1) * per_shard].select("text").write_parquet(data / f"{name}.parquet")
    cfg = load_config(profile, {"corpus": {"source": "files", "paths": [str(data)], "max_examples": None,
                                           "shard_size": int(per_shard)}})
    inc_store, full_store = Store(folder.file("store", "incremental")), Store(folder.file("store", "full"))
    for root in (inc_store.root, full_store.root):
        shutil.rmtree(root, ignore_errors=True)
    log(f"[incremental] {profile} profile: {base_shards} shards of {per_shard} passages, appending {n_new}")
    start = time.perf_counter()
    for stage in SHARED:
        pipeline.run_stage(stage, cfg, inc_store, lambda _: None,
                           **{k: DEFAULT_BATCH for k in pipeline.spec(stage, cfg).keys})  # both take no key or the batch
    shared_seconds = time.perf_counter() - start
    log("[incremental] initial attribution")
    initial = _timed_blocks(cfg, inc_store, names, log)

    start_new = base_shards * per_shard
    passages[start_new:start_new + n_new].select("text").write_parquet(data / "shard-new.parquet")
    log("[incremental] append one shard: its blocks + the fan-in")
    incremental = _timed_blocks(cfg, inc_store, ["shard-new"], log)
    log("[incremental] full re-attribution of the grown corpus")
    for stage in SHARED:
        shutil.copytree(inc_store.stage(stage), full_store.stage(stage))
    full = _timed_blocks(cfg, full_store, [*names, "shard-new"], log)

    a, b = _scores(inc_store), _scores(full_store)
    joined = a.join(b, on=["query_id", "example_id"], how="full", coalesce=True).fill_null(0.0)
    diff = float(np.abs(joined["score"] - joined["score_right"]).max()) if joined.height else 0.0
    report = {
        "incremental_ratio": sum(incremental.values()) / sum(full.values()),
        "incremental_seconds": sum(incremental.values()), "full_seconds": sum(full.values()),
        "stages": {"incremental": incremental, "full": full, "initial": initial},
        "shared_seconds": shared_seconds,
        "n_base": int(per_shard * base_shards), "n_appended": int(n_new), "base_shards": base_shards,
        "append_fraction": n_new / (per_shard * base_shards), "profile": profile,
        "max_abs_score_difference": diff, "nonzero_scores": {"incremental": a.height, "full": b.height},
        "target": "incremental_ratio <= 0.2",
    }
    write_json(report, folder.file("report"))
    log(f"[incremental] incremental {report['incremental_seconds']:.1f}s vs full {report['full_seconds']:.1f}s: "
        f"ratio {report['incremental_ratio']:.3f} (target <= 0.2); max |score difference| {diff:.2e}")
    return report


def tracked_run(report: dict, out: Path) -> "TrackedRun":
    """What to log: the ratio, both timings and each stage's seconds as metrics; report.json as a file."""
    from stride_assets.engine.evaluation.report import TrackedRun

    metrics = {k: float(report[k]) for k in ("incremental_ratio", "incremental_seconds", "full_seconds",
                                              "max_abs_score_difference")}
    metrics |= {f"{phase}.{stage}": s for phase, stages in report["stages"].items() for stage, s in stages.items()}
    params = {k: report[k] for k in ("n_base", "n_appended", "base_shards", "profile")}
    return TrackedRun("bench incremental", {"stride_bench": "incremental"}, params, metrics,
                      files=[BenchFolder(out).file("report")])
