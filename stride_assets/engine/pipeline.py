"""Run the stages of a STRIDE run by name, all of them, or summarise a finished run (no Dagster).

    from stride_assets.engine.config import load_config
    from stride_assets.engine.store import Store
    from stride_assets.engine import pipeline
    cfg, store = load_config("default"), Store(".stride/store")
    results = pipeline.run_all(cfg, store)
    print(pipeline.summary(cfg, store))

Everything here reads the stage table of the configured method (``stages.stages_for(
cfg.attribution.method)``): a stage's blocks are the shards and/or query batches its ``keys``
name; ``run_stage`` takes those keys.
"""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import registry
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.preflight import preflight
from stride_assets.engine.query import attribute
from stride_assets.engine.result import StageResult
from stride_assets.engine.stages import STAGES as SPECS
from stride_assets.engine.stages import stages_for
from stride_assets.engine.store import Store

STAGES: tuple[str, ...] = tuple(s.name for s in SPECS)  # the default method's (stride)
BY_NAME = registry.by_name(SPECS)

__all__ = ["STAGES", "BY_NAME", "StageResult", "stage_names", "run_stage", "run_all", "blocks", "summary", "code_version",
           "attribute", "shard_names", "batch_names"]

shard_names = shards_mod.shard_names
batch_names = shards_mod.batch_names


def stage_names(cfg: StrideConfig) -> tuple[str, ...]:
    """The stages of a run with ``cfg``'s attribution method, in order."""
    return tuple(s.name for s in stages_for(cfg.attribution.method))


def spec(name: str, cfg: StrideConfig) -> registry.StageSpec:
    specs = registry.by_name(stages_for(cfg.attribution.method))
    if name not in specs:
        raise KeyError(f"unknown stage {name!r} for attribution.method {cfg.attribution.method!r}; "
                       f"stages are {', '.join(specs)}")
    return specs[name]


def code_version(name: str, cfg: StrideConfig) -> str:
    """Hash of what a stage computes (its code and settings): see ``registry.code_version``."""
    return registry.code_version(spec(name, cfg), cfg)


def run_stage(name: str, cfg: StrideConfig, store: Store, log: Callable[[str], None] = print,
              shard: str | None = None, batch: str | None = None) -> StageResult:
    """Run one block of a stage (``shard`` and/or ``batch`` as its spec's keys); its upstream artifacts
    must already be in ``store``."""
    keys = {k: v for k, v in (("shard", shard), ("batch", batch)) if v is not None}
    return registry.execute(spec(name, cfg), cfg, store, log, **keys)


def blocks(name: str, cfg: StrideConfig) -> list[dict[str, str]]:
    """The keyword keys of every block of a stage under the current corpus and query batches."""
    by = spec(name, cfg).keys
    shard_list = shard_names(cfg.corpus) if "shard" in by else [None]
    batch_list = batch_names(cfg) if "batch" in by else [None]
    return [{k: v for k, v in (("shard", s), ("batch", b)) if v is not None} for b in batch_list for s in shard_list]


def run_all(cfg: StrideConfig, store: Store, log: Callable[[str], None] = print) -> dict[str, list[StageResult]]:
    """Every block of every stage, in order (after ``preflight``: bad shards fail before any work)."""
    preflight(cfg)
    return {name: [run_stage(name, cfg, store, log, **keys) for keys in blocks(name, cfg)]
            for name in stage_names(cfg)}


def summary(cfg: StrideConfig, store: Store, n_queries: int = 3, top_k: int = 5) -> str:
    """Human-readable digest of a finished run: the top passages for a few queries."""
    batches = batch_names(cfg)
    queries = store.read_queries(batches)
    top = store.read_scores(batches, "top_k")
    kept = store.read_dataset("curated_dataset", "keep")
    chosen = queries.sort("kind", descending=True).head(n_queries)  # prompts first, then held-out passages
    lines = [f"stride run in {store.root}", f"  queries: {queries.height}; curated: {kept.height} kept", ""]
    for qid, text in chosen.select("query_id", "text").iter_rows():
        lines.append(f"query {qid}: {text[:100]!r}")
        rows = top.filter(pl.col("query_id") == qid).head(top_k)
        if rows.height == 0:
            lines.append("    (no positively influential passage recovered)")
        for rank, eid, score, passage in rows.select("rank", "example_id", "score", "text").iter_rows():
            lines.append(f"  {rank:>2}. {score:+.4f}  {eid}  {passage[:80]!r}")
        lines.append("")
    return "\n".join(lines)
