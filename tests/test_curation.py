"""The curation policy on planted scores: kept = each query's top-k, dropped = strongly harmful across queries."""

import polars as pl

from stride_assets.engine.config import CurationConfig
from stride_assets.engine.curation import curate


def _frame(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"query_id": pl.String, "example_id": pl.String, "score": pl.Float64}, orient="row")


def test_harmful_examples_are_dropped_despite_a_long_positive_tail() -> None:
    rows = [(f"q{q}", f"e{i}", 0.01 * ((i + q) % 5 - 2)) for q in range(6) for i in range(40)]  # noise around 0
    rows += [(f"q{q}", "star", 5.0) for q in range(6)]  # a long positive tail that inflates the plain std
    rows += [(f"q{q}", "harm", -0.5) for q in range(4)]  # hurts four queries
    rows += [("q0", "once", -0.9)]  # hurts one query only: not "across the query set"
    corpus = pl.DataFrame({"example_id": [f"e{i}" for i in range(40)] + ["star", "harm", "once"]}).with_columns(
        text=pl.lit("t"))
    decided = curate(_frame(rows), corpus, CurationConfig(top_k_per_query=1, exclude_negative_z=3.0, min_negative_queries=2))
    dropped = decided.filter(pl.col("decision") == "drop")
    assert dropped["example_id"].to_list() == ["harm"]
    assert "negative for 4 queries" in dropped["reason"][0]
    kept = decided.filter(pl.col("decision") == "keep")
    assert kept["example_id"].to_list() == ["star"] and kept["top_queries"][0].len() == 6
    # the old mean - z*std floor drops nothing here: the tail's std is too large
    sums = _frame(rows).group_by("example_id").agg(pl.col("score").sum())["score"]
    assert not (sums < sums.mean() - 3.0 * sums.std()).any()
