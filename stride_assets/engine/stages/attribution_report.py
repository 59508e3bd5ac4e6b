"""Stage ``attribution_report[batch]``: one query batch's influence as a page people can read
(``engine/html_report.py``): per query its most helpful and most harmful training examples."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_text
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.html_report import attribution_page
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store

SHOWN_PER_SIDE = 10  # helpful and harmful examples shown per query


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], batch: str) -> StageResult:
    """A self-contained HTML page of one query batch's influence: each query's most helpful and most
    harmful training examples with their text and score, shared text marked, searchable."""
    queries = store.read_queries(batch)
    scores = store.read_scores([batch]).select("query_id", "example_id", "score")
    train = store.read_train(shards_mod.shard_names(cfg.corpus))
    page = attribution_page(queries, scores, train, SHOWN_PER_SIDE, batch)
    path = write_text(page, store.file("attribution_report", batch))
    store.seal(path)
    store.write_args("attribution_report", {"batch": batch, "shown_per_side": SHOWN_PER_SIDE}, batch)
    shown = scores.filter(pl.col("score") != 0)["example_id"].n_unique()
    log(f"attribution report {batch}: {path} ({queries.height} queries)")
    return StageResult(
        stage="attribution_report",
        path=path.parent,
        metadata={"report": path, "queries": queries.height, "batch": batch, "examples_scored": shown,
                  "bytes": path.stat().st_size},
        params={"report.shown_per_side": SHOWN_PER_SIDE},
        files=[path],
        fingerprint=file_digest(path),
    )
