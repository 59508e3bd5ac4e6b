"""Stage ``attribution_report[batch]``: one query batch's influence as a page people can read
(``engine/html_report.py``): per query its most helpful and most harmful training examples, and for
``report.token_queries`` queries of the batch (the user's prompts first, then in batch order) the
query tokens each shown example drives
(``token_attribution.pair_tokens``: the stored operators or factors, applied once more)."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_text
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.html_report import attribution_page, top_examples
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], batch: str) -> StageResult:
    """A self-contained HTML page of one query batch's influence: each query's most helpful and most
    harmful training examples with their text and score, shared text marked, the query tokens each
    example helps or hurts shaded (the user's prompts first), searchable."""
    rc = cfg.report
    queries = store.read_queries(batch)
    scores = store.read_scores([batch]).select("query_id", "example_id", "score")
    train = store.read_train(shards_mod.shard_names(cfg.corpus))
    tokens = strings = None
    if rc.token_queries:
        from stride_assets.engine.token_attribution import pair_tokens  # it reads the stages' tables: a cycle at import

        order = queries.sort(pl.col("kind") != "prompt", maintain_order=True) if "kind" in queries.columns else queries
        first = order.head(rc.token_queries)  # the user's prompts first
        shown = top_examples(scores.join(first.select("query_id"), on="query_id"), rc.shown_per_side)
        tokens, strings = pair_tokens(first, shown, store, batch)
    page = attribution_page(queries, scores, train, rc.shown_per_side, batch, tokens=tokens, strings=strings)
    path = write_text(page, store.file("attribution_report", batch))
    store.seal(path)
    store.write_args("attribution_report", {"batch": batch, **rc.model_dump()}, batch)
    shown_examples = scores.filter(pl.col("score") != 0)["example_id"].n_unique()
    log(f"attribution report {batch}: {path} ({queries.height} queries)")
    return StageResult(
        stage="attribution_report",
        path=path.parent,
        metadata={"report": path, "queries": queries.height, "batch": batch, "examples_scored": shown_examples,
                  "queries_with_token_scores": min(rc.token_queries, queries.height), "bytes": path.stat().st_size},
        params={f"report.{k}": v for k, v in rc.model_dump().items()},
        files=[path],
        fingerprint=file_digest(path),
    )
