"""Curation policy: from influence scores to a kept/dropped decision per training example.

Kept: each query's top-k examples by positive influence (above ``min_score``).
Dropped (harmful): examples whose influence summed over the query set is strongly negative:
below median - z * robust std (1.4826 * MAD) of the sums, below zero, and negative for at least
``min_negative_queries`` queries, whatever their top-k status. (A mean - z * std floor drops
nothing on real scores: their long positive tail inflates the std.)
Every row carries its scores, its document (``doc_id``: ``engine/documents.py``) and the reason for
the decision.
"""

from __future__ import annotations

import polars as pl

from stride_assets.engine.config import CurationConfig
from stride_assets.engine.documents import with_doc_id


def curate(scores: pl.DataFrame, corpus: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """``scores``: query_id, example_id, score (non-zeros). ``corpus``: example_id, text (and doc_id
    when windowed).

    Returns one row per example that was kept or dropped: example_id, doc_id, text, decision
    ("keep"/"drop"), reason, score_sum, score_max, n_queries_positive, top_queries.
    """
    ranked = scores.filter(pl.col("score") > cfg.min_score).with_columns(
        pl.col("score").rank("ordinal", descending=True).over("query_id").alias("rank")
    )
    top = (
        ranked.filter(pl.col("rank") <= cfg.top_k_per_query)
        .group_by("example_id")
        .agg(pl.col("query_id").sort_by("score", descending=True).alias("top_queries"))
    )
    totals = scores.group_by("example_id").agg(
        pl.col("score").sum().alias("score_sum"),
        pl.col("score").max().alias("score_max"),
        (pl.col("score") > 0).sum().cast(pl.Int64).alias("n_queries_positive"),
        (pl.col("score") < 0).sum().cast(pl.Int64).alias("n_queries_negative"),
    )
    sums = totals["score_sum"]
    median = float(sums.median() or 0.0)
    spread = 1.4826 * float((sums - median).abs().median() or 0.0)
    floor = median - cfg.exclude_negative_z * spread
    harmful = totals.filter((pl.col("score_sum") < floor) & (pl.col("score_sum") < 0)
                            & (pl.col("n_queries_negative") >= cfg.min_negative_queries)).select("example_id")
    decided = (
        totals.join(top, on="example_id", how="left")
        .join(harmful.with_columns(pl.lit(True).alias("harmful")), on="example_id", how="left")
        .with_columns(pl.col("harmful").fill_null(False))
        .filter(pl.col("top_queries").is_not_null() | pl.col("harmful"))
        .with_columns(
            pl.when(pl.col("harmful")).then(pl.lit("drop")).otherwise(pl.lit("keep")).alias("decision"),
            pl.when(pl.col("harmful"))
            .then(pl.format("summed influence {} below floor {} (negative for {} queries)", pl.col("score_sum").round(5),
                            pl.lit(round(floor, 5)), pl.col("n_queries_negative")))
            .otherwise(pl.format("top-{} for {} queries", pl.lit(cfg.top_k_per_query), pl.col("top_queries").list.len()))
            .alias("reason"),
            pl.col("top_queries").fill_null([]),
        )
        .drop("harmful")
    )
    return (
        with_doc_id(decided.join(corpus.select("example_id", "text"), on="example_id", how="left"), corpus)
        .select("example_id", "doc_id", "text", "decision", "reason", "score_sum", "score_max", "n_queries_positive",
                "n_queries_negative", "top_queries")
        .sort(["decision", "score_sum"], descending=[True, True])
    )
