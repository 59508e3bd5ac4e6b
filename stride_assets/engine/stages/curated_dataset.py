"""Stage ``curated_dataset``: a versioned dataset of the examples kept and dropped, from every batch's influence."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import documents
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.curation import curate
from stride_assets.engine.datasets_out import inputs_version, write_dataset
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.stages._derived import two_split_result
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """Examples kept (top influence for the queries) and dropped (strongly harmful), with reasons: a versioned dataset."""
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    scores, train = store.read_scores(batches), store.read_train(shard_list)
    decided = curate(scores, train, cfg.curation)
    kept, dropped = decided.filter(pl.col("decision") == "keep"), decided.filter(pl.col("decision") == "drop")
    version = inputs_version(store.scored_inputs(batches, shard_list), cfg.curation.model_dump())
    folder = write_dataset(store.stage("curated_dataset"), version, {"keep": kept, "drop": dropped},
                           "stride curated dataset",
                           "Training examples kept (each query's most influential) and dropped (strongly "
                           "harmful across the query set), with their scores and the reason for each decision.")
    by_doc = documents.decision_summary(decided, scores, train)
    store.seal(write_parquet(by_doc, store.file("curated_documents")))
    store.write_args("curated_dataset", cfg.curation.model_dump())
    log(f"curated: kept {kept.height}, dropped {dropped.height} (version {version})")
    return two_split_result(
        "curated_dataset", folder, {"kept": kept, "dropped": dropped},
        ("kept_vs_dropped", store.file("kept_vs_dropped_plot"), "summed influence of curated examples"),
        metadata={"rows": kept.height, "dropped": dropped.height, "version": version, "documents": by_doc.height,
                  "documents_mixed": int((by_doc["decision"] == "mixed").sum())},
        markdown={"kept": markdown_table(kept.head(5).select("example_id", "text", "score_sum", "reason"), 80),
                  "dropped": markdown_table(dropped.head(5).select("example_id", "text", "score_sum", "reason"), 80),
                  "documents": markdown_table(by_doc.head(5))},
        params={f"curation.{k}": v for k, v in cfg.curation.model_dump().items()},
        metrics={"kept": kept.height, "dropped": dropped.height},
    )
