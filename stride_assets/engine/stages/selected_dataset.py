"""Stage ``selected_dataset``: data selection, the examples with the most influence on the queries, versioned."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.datasets_out import inputs_version, write_dataset
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.selection import select
from stride_assets.engine.stages._derived import two_split_result
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """Data selection: the training examples with the most influence on the queries (tasks take turns), a versioned dataset."""
    sc = cfg.selection
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    train, queries = store.read_train(shard_list), store.read_queries(batches)
    if sc.task_column in queries.columns:
        queries = queries.with_columns(pl.col(sc.task_column).cast(pl.Utf8).alias("task"))
    n = max(1, round(sc.fraction * train.height))
    chosen = select(store.read_scores(batches).select("query_id", "example_id", "score"),
                    train.select("example_id", "text", "shard"), queries.select("query_id", *(
                        ["task"] if "task" in queries.columns else [])), n)
    picked, rest = chosen.filter(pl.col("selected")), chosen.filter(~pl.col("selected"))
    version = inputs_version(store.scored_inputs(batches, shard_list), sc.model_dump())
    folder = write_dataset(store.stage("selected_dataset"), version, {"selected": picked, "not_selected": rest},
                           "stride data selection", f"The {n} training examples with the most influence on the "
                           "query set (tasks taking turns), and the others, each with its reason.")
    store.write_args("selected_dataset", {**sc.model_dump(), "n": n})
    log(f"selected {picked.height} of {chosen.height} examples (version {version})")
    return two_split_result(
        "selected_dataset", folder, {"selected": picked, "not selected": rest},
        ("selected_vs_not", store.file("selected_vs_not_plot"), "influence on the query set"),
        metadata={"rows": picked.height, "candidates": chosen.height, "version": version,
                  "tasks": int(picked["task"].n_unique()) if picked.height else 0},
        markdown={"selected": markdown_table(picked.head(5).select("example_id", "text", "task", "score", "reason"), 80)},
        params={f"selection.{k}": v for k, v in sc.model_dump().items()},
        metrics={"selected": picked.height},
    )
