"""The facade: run the stages of a STRIDE run by name, all of them, or summarise a finished run.

    from stride_assets.engine.config import load_config
    from stride_assets.engine.artifacts import Store, file_digest
    from stride_assets.engine import pipeline
    results = pipeline.run_all(load_config("default"), Store(".stride/store"))
    print(pipeline.summary(Store(".stride/store")))
"""

from __future__ import annotations

import time
from typing import Callable

import polars as pl

from stride_assets.engine import stages
from stride_assets.engine.artifacts import Store, file_digest
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.query import attribute
from stride_assets.engine.result import StageResult

STAGES: tuple[str, ...] = (
    "training_corpus",
    "query_set",
    "base_model",
    "subset_design",
    "steering_operators",
    "perturbation_matrix",
    "influence_scores",
    "curated_dataset",
)

UPSTREAM: dict[str, tuple[str, ...]] = {
    "training_corpus": (),
    "query_set": ("training_corpus",),
    "base_model": ("training_corpus",),
    "subset_design": ("training_corpus",),
    "steering_operators": ("base_model", "subset_design"),
    "perturbation_matrix": ("query_set", "steering_operators"),
    "influence_scores": ("perturbation_matrix",),
    "curated_dataset": ("influence_scores",),
}

DESCRIPTIONS: dict[str, str] = {name: (getattr(stages, name).__doc__ or "").strip() for name in STAGES}

__all__ = ["STAGES", "UPSTREAM", "DESCRIPTIONS", "StageResult", "run_stage", "run_all", "summary", "attribute"]


def run_stage(name: str, cfg: StrideConfig, store: Store, log: Callable[[str], None] = print) -> StageResult:
    """Run one stage; its upstream artifacts must already be in ``store``."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    start = time.perf_counter()
    result = getattr(stages, name)(cfg, store, log)
    result.metadata.setdefault("seconds", time.perf_counter() - start)
    corpus = store.path("training_corpus", "train.parquet")
    if corpus.exists():  # every run records which data it saw
        result.params.setdefault("data_version", file_digest(corpus)[:16])
    return result


def run_all(cfg: StrideConfig, store: Store, log: Callable[[str], None] = print) -> dict[str, StageResult]:
    """Every stage in order."""
    return {name: run_stage(name, cfg, store, log) for name in STAGES}


def summary(store: Store, n_queries: int = 3, top_k: int = 5) -> str:
    """Human-readable digest of a finished run: the top passages for a few queries."""
    queries = stages.read_queries(store)
    top = pl.read_parquet(store.require("influence_scores", "top_k.parquet"))
    kept = pl.read_parquet(store.require("curated_dataset", "data/kept.parquet"))
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
