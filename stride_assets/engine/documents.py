"""Documents: which training example belongs to which document, and influence per document.

A windowed corpus (``corpus.chunk_tokens``, ``engine/token_windows.py``) stores each window with
its ``doc_id``; an unchunked corpus has no such column and every example is its own document
(``doc_id`` = ``example_id``), so the per-document tables always exist. Scores stay per chunk
(example); ``doc_scores`` sums and maxes them over each document's chunks, a chunk absent from the
sparse score table counting as 0.
"""

from __future__ import annotations

import polars as pl

from stride_assets.engine.errors import StrideInputError

DOC_SCORES_SCHEMA = {"query_id": pl.Utf8, "doc_id": pl.Utf8, "score_sum": pl.Float64, "score_max": pl.Float64,
                     "chunks": pl.Int64, "scored_chunks": pl.Int64}


def doc_map(corpus: pl.DataFrame) -> pl.DataFrame:
    """example_id -> doc_id, chunk_index (an example without a ``doc_id`` column is its own document)."""
    if "example_id" not in corpus.columns:
        raise StrideInputError(f"corpus lacks column 'example_id' (has {corpus.columns})")
    if "doc_id" in corpus.columns:
        return corpus.select("example_id", "doc_id", pl.col("chunk_index").cast(pl.Int64))
    return corpus.select("example_id", pl.col("example_id").alias("doc_id"), pl.lit(0, pl.Int64).alias("chunk_index"))


def with_doc_id(frame: pl.DataFrame, corpus: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with an ``example_id`` column) with its examples' ``doc_id`` added after ``example_id``."""
    if "doc_id" in frame.columns:
        return frame
    out = frame.join(doc_map(corpus).select("example_id", "doc_id"), on="example_id", how="left",
                     maintain_order="left")
    missing = out.filter(pl.col("doc_id").is_null())
    if missing.height:
        raise StrideInputError(f"{missing.height} scored example(s) are not in the corpus, e.g. "
                               f"{missing['example_id'][0]!r}: re-materialize the scores on this corpus")
    order = list(frame.columns)
    order.insert(order.index("example_id") + 1, "doc_id")
    return out.select(order)


def doc_scores(scores: pl.DataFrame, corpus: pl.DataFrame) -> pl.DataFrame:
    """Per (query, document): ``score_sum`` and ``score_max`` over the document's chunks, ``chunks`` (the
    document's windows) and ``scored_chunks`` (those with a non-zero score for the query).

    ``scores``: query_id, example_id, score (non-zeros only); a chunk without a row scores 0, so a
    document whose scored chunks are all negative but has unscored ones has ``score_max`` 0.
    """
    missing = [c for c in ("query_id", "example_id", "score") if c not in scores.columns]
    if missing:
        raise StrideInputError(f"scores lack columns {missing} (has {scores.columns})")
    docs = doc_map(corpus)
    sizes = docs.group_by("doc_id").agg(pl.len().cast(pl.Int64).alias("chunks"))
    grouped = (
        with_doc_id(scores.select("query_id", "example_id", "score"), corpus)
        .group_by("query_id", "doc_id")
        .agg(pl.col("score").cast(pl.Float64).sum().alias("score_sum"),
             pl.col("score").cast(pl.Float64).max().alias("score_max"),
             pl.len().cast(pl.Int64).alias("scored_chunks"))
        .join(sizes, on="doc_id", how="left")
        .with_columns(pl.when(pl.col("scored_chunks") < pl.col("chunks"))
                      .then(pl.max_horizontal("score_max", pl.lit(0.0))).otherwise(pl.col("score_max"))
                      .alias("score_max"))
    )
    return grouped.select(list(DOC_SCORES_SCHEMA)).cast(DOC_SCORES_SCHEMA).sort(
        ["query_id", "score_sum", "doc_id"], descending=[False, True, False])


def decision_summary(decided: pl.DataFrame, scores: pl.DataFrame, corpus: pl.DataFrame) -> pl.DataFrame:
    """Per document with a curated chunk: its ``chunks``, how many were ``kept`` and ``dropped``, the
    ``decision`` (keep, drop or mixed) and ``score_sum``, its influence summed over every query and chunk."""
    sizes = doc_map(corpus).group_by("doc_id").agg(pl.len().cast(pl.Int64).alias("chunks"))
    totals = with_doc_id(scores.select("example_id", "score"), corpus).group_by("doc_id").agg(
        pl.col("score").cast(pl.Float64).sum().alias("score_sum"))
    counts = with_doc_id(decided.select("example_id", "decision"), corpus).group_by("doc_id").agg(
        (pl.col("decision") == "keep").sum().cast(pl.Int64).alias("kept"),
        (pl.col("decision") == "drop").sum().cast(pl.Int64).alias("dropped"))
    return (
        counts.join(sizes, on="doc_id", how="left").join(totals, on="doc_id", how="left")
        .with_columns(pl.when(pl.col("dropped") == 0).then(pl.lit("keep"))
                      .when(pl.col("kept") == 0).then(pl.lit("drop")).otherwise(pl.lit("mixed")).alias("decision"),
                      pl.col("score_sum").fill_null(0.0))
        .select("doc_id", "chunks", "kept", "dropped", "decision", "score_sum")
        .sort(["decision", "score_sum", "doc_id"], descending=[True, True, False])
    )
