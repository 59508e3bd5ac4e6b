"""The facade: run the stages of a STRIDE run by name, all of them, or summarise a finished run.

    from stride_assets.engine.config import load_config
    from stride_assets.engine.artifacts import Store
    from stride_assets.engine import pipeline
    cfg, store = load_config("default"), Store(".stride/store")
    results = pipeline.run_all(cfg, store)
    print(pipeline.summary(cfg, store))

Stages are partitioned by shard, by query batch, or by both (``PARTITIONED_BY``); ``run_stage``
takes the keys. ``run_all`` only runs the blocks whose inputs changed when ``only_new`` is set
(appending a shard then trains that shard's operators, measures its block and re-solves).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Callable

import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine import stages
from stride_assets.engine.artifacts import Store, file_digest
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.datasets_out import read_current
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
    "selected_dataset",
    "contamination_report",
)

# What each stage reads. The query set and the base model read the corpus *source*, not the
# training_corpus blocks: they are built once and do not follow appended shards.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "training_corpus": (),
    "query_set": (),
    "base_model": (),
    "subset_design": ("training_corpus",),
    "steering_operators": ("base_model", "subset_design", "training_corpus"),
    "perturbation_matrix": ("query_set", "steering_operators", "base_model"),
    "influence_scores": ("perturbation_matrix", "subset_design", "training_corpus"),
    "curated_dataset": ("influence_scores", "training_corpus"),
    "selected_dataset": ("influence_scores", "training_corpus", "query_set"),
    "contamination_report": ("influence_scores", "training_corpus", "query_set"),
}

# The engine modules and config sections each stage's output depends on: its code version.
_STAGE_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "training_corpus": (("corpus", "shards"), ("corpus",)),
    "query_set": (("corpus", "shards"), ("corpus", "queries")),
    "base_model": (("lm",), ("corpus", "model")),
    "subset_design": (("design",), ("design",)),
    "steering_operators": (("operators", "training", "backbone", "losses"), ("operators", "training", "model")),
    "perturbation_matrix": (("measure", "backbone"), ("measure", "model")),
    "influence_scores": (("recovery",), ("recovery",)),
    "curated_dataset": (("curation", "datasets_out"), ("curation",)),
    "selected_dataset": (("selection", "datasets_out"), ("selection",)),
    "contamination_report": (("contamination",), ("contamination",)),
}

# Which keys each stage is partitioned by: "shard", "batch", both, or none.
PARTITIONED_BY: dict[str, tuple[str, ...]] = {
    "training_corpus": ("shard",),
    "query_set": ("batch",),
    "base_model": (),
    "subset_design": ("shard",),
    "steering_operators": ("shard",),
    "perturbation_matrix": ("shard", "batch"),
    "influence_scores": ("batch",),
    "curated_dataset": (),
    "selected_dataset": (),
    "contamination_report": (),
}

DESCRIPTIONS: dict[str, str] = {name: (getattr(stages, name).__doc__ or "").strip() for name in STAGES}

__all__ = ["STAGES", "UPSTREAM", "PARTITIONED_BY", "DESCRIPTIONS", "StageResult", "run_stage", "run_all", "summary",
           "attribute", "shard_names", "batch_names"]

shard_names = shards_mod.shard_names
batch_names = shards_mod.batch_names


def code_version(name: str, cfg: StrideConfig) -> str:
    """Hash of what a stage computes: its function, the engine modules it uses and its settings.

    Editing a stage's code or changing its settings changes its version (and only its own), so
    Dagster marks that stage and everything downstream stale while the rest stays fresh.
    """
    modules, sections = _STAGE_CODE[name]
    h = hashlib.sha256(inspect.getsource(getattr(stages, name)).encode())
    engine_dir = Path(stages.__file__).parent
    for module in modules:
        h.update((engine_dir / f"{module}.py").read_bytes())
    dumped = cfg.model_dump(mode="json")
    h.update(json.dumps({s: dumped[s] for s in sections}, sort_keys=True).encode())
    return h.hexdigest()[:12]


def run_stage(name: str, cfg: StrideConfig, store: Store, log: Callable[[str], None] = print,
              shard: str | None = None, batch: str | None = None) -> StageResult:
    """Run one stage (one block of it: ``shard`` and/or ``batch`` as in ``PARTITIONED_BY``);
    its upstream artifacts must already be in ``store``."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    keys = {"shard": shard, "batch": batch}
    wanted = PARTITIONED_BY[name]
    if any(keys[k] is None for k in wanted) or any(keys[k] is not None for k in keys if k not in wanted):
        raise KeyError(f"stage {name!r} takes the keys {wanted or 'none'}; got {({k: v for k, v in keys.items() if v})}")
    start = time.perf_counter()
    result = getattr(stages, name)(cfg, store, log, **{k: keys[k] for k in wanted})
    result.metadata.setdefault("seconds", time.perf_counter() - start)
    if shard is not None and store.path("training_corpus", "train.parquet", shard).exists():
        result.params.setdefault("data_version", file_digest(store.path("training_corpus", "train.parquet", shard))[:16])
    return result


def blocks(name: str, cfg: StrideConfig) -> list[dict[str, str]]:
    """The keyword keys of every block of a stage under the current corpus and query batches."""
    by = PARTITIONED_BY[name]
    shard_list = shard_names(cfg.corpus) if "shard" in by else [None]
    batch_list = batch_names(cfg) if "batch" in by else [None]
    return [{k: v for k, v in (("shard", s), ("batch", b)) if v is not None} for b in batch_list for s in shard_list]


def run_all(cfg: StrideConfig, store: Store, log: Callable[[str], None] = print) -> dict[str, list[StageResult]]:
    """Every block of every stage, in order."""
    return {name: [run_stage(name, cfg, store, log, **keys) for keys in blocks(name, cfg)] for name in STAGES}


def summary(cfg: StrideConfig, store: Store, n_queries: int = 3, top_k: int = 5) -> str:
    """Human-readable digest of a finished run: the top passages for a few queries."""
    batches = batch_names(cfg)
    queries = stages.read_all_queries(store, batches)
    top = stages.read_scores(store, batches, "top_k.parquet")
    kept = read_current(store.stage("curated_dataset"), "keep")
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
