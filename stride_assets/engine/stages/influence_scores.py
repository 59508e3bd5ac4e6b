"""Stage ``influence_scores[batch]``: one query batch's per-example influence over every shard
(by ``attribution.method``: ``engine/attribution.py``)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine import attribution, documents, plots
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.store import Store

SHOWN_PER_QUERY = 3  # each query's best examples in the UI's table
SHOWN_QUERIES = 50  # queries the UI's table lists (a longer batch: every query in the top_k file)


def influence_table(influence: sp.csr_matrix, query_ids: list[str], train: pl.DataFrame) -> pl.DataFrame:
    """Long table of non-zero scores: query_id, example_id, example_index, score."""
    coo = influence.tocoo()
    return pl.DataFrame({
        "query_id": np.asarray(query_ids, dtype=object)[coo.row].tolist(),
        "example_index": coo.col.astype(np.int64),
        "score": coo.data.astype(np.float32),
    }).join(train.select(pl.col("example_index").cast(pl.Int64), "example_id"), on="example_index").select(
        "query_id", "example_id", "example_index", "score")


def top_k_table(scores: pl.DataFrame, train: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each query's k highest positive scores with the passage text."""
    return (
        scores.filter(pl.col("score") > 0)
        .with_columns(pl.col("score").rank("ordinal", descending=True).over("query_id").alias("rank"))
        .filter(pl.col("rank") <= k)
        .join(train.select("example_id", "text"), on="example_id")
        .sort(["query_id", "rank"])
        .select("query_id", "rank", "example_id", "score", "text")
    )


def top_examples(top: pl.DataFrame, queries: pl.DataFrame, per_query: int = SHOWN_PER_QUERY,
                 max_queries: int = SHOWN_QUERIES) -> pl.DataFrame:
    """The UI's view of the top-k table: each query's id and text beside its best examples' ids and
    text, every query of the batch (up to ``max_queries``); a query with no positive score shows once."""
    best = top.filter(pl.col("rank") <= per_query).select("query_id", "rank", "example_id", "score",
                                                          pl.col("text").alias("example"))
    return (queries.head(max_queries).select("query_id", pl.col("text").alias("query"))
            .join(best, on="query_id", how="left", maintain_order="left"))


def top_examples_markdown(top: pl.DataFrame, queries: pl.DataFrame, top_k_file: str) -> str:
    table = markdown_table(top_examples(top, queries), max_chars=80)
    hidden = queries.height - SHOWN_QUERIES
    return table + (f"\n\n_{hidden} more queries: every query's top examples are in_ `{top_k_file}`" if hidden > 0 else "")


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], batch: str) -> StageResult:
    """One query batch's per-example influence over every shard, by ``attribution.method`` (STRIDE's
    per-query Lasso recovery, EK-FAC with the fitted factors, or their ensemble)."""
    rc, method = cfg.recovery, cfg.attribution.method
    shard_list = shards_mod.shard_names(cfg.corpus)
    train = store.read_train(shard_list)
    found = attribution.attribute(cfg, store, batch)
    query_ids = found.per_query["query_id"].to_list()
    scores = documents.with_doc_id(influence_table(found.influence, query_ids, train), train)
    top = top_k_table(scores, train, rc.top_k)
    paths = [write_parquet(scores, store.file("scores", batch)), write_parquet(top, store.file("top_k", batch)),
             write_parquet(found.per_query, store.file("per_query", batch)),
             write_parquet(documents.doc_scores(scores, train), store.file("doc_scores", batch))]
    store.seal(*paths)
    store.write_args("influence_scores", {**rc.model_dump(), "attribution": cfg.attribution.model_dump(),
                                          "batch": batch, "shards": shard_list}, batch)
    log(f"influence {batch} ({method}): {scores.height} non-zero scores over {len(query_ids)} queries "
        f"in {found.seconds:.1f}s")
    non_finite = int((~np.isfinite(found.influence.data)).sum())
    return StageResult(
        stage="influence_scores",
        path=store.stage("influence_scores", batch),
        metadata={"method": method, "queries": len(query_ids), "batch": batch, "shards": len(shard_list),
                  "nonzero": scores.height, **found.metadata, "seconds": found.seconds,
                  "positive_fraction": float((scores["score"] > 0).mean()) if scores.height else 0.0,
                  "finite": non_finite == 0, "non_finite": non_finite},
        markdown={"top_examples": top_examples_markdown(top, store.read_queries(batch), str(paths[1]))},
        params={f"recovery.{k}": v for k, v in rc.model_dump().items()}
        | {f"attribution.{k}": v for k, v in cfg.attribution.model_dump().items()},
        metrics={"attribution_seconds": found.seconds, **{k: v for k, v in found.metadata.items()
                                                          if k in ("nnz_per_query", "r2_mean")}},
        plots={"scores": plots.histogram(scores["score"].to_numpy(), store.file("scores_plot", batch),
                                         "non-zero influence scores", "score")},
        files=[paths[2]],
        fingerprint=file_digest(*paths),
    )
