"""Stage ``contamination_report``: suspected test-set leaks, influential examples that share text with a query."""

from __future__ import annotations

from typing import Callable

import numpy as np

from stride_assets.engine import documents, plots
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet, write_text
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.contamination import audit, audit_markdown, documents_markdown, leaks_by_document
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """Suspected test-set leaks: highly influential training examples that share text with a query, with evidence."""
    cc = cfg.contamination
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    train, queries = store.read_train(shard_list), store.read_queries(batches)
    leaks = audit(store.read_scores(batches).select("query_id", "example_id", "score"),
                  queries.select("query_id", "text"), train.select("example_id", "text"),
                  k=cc.k, min_overlap=cc.min_overlap, n=cc.ngram)
    leaks = documents.with_doc_id(leaks, train)
    by_doc = leaks_by_document(leaks)
    summary = "\n\n".join(part for part in (audit_markdown(leaks), documents_markdown(by_doc)) if part)
    paths = [write_parquet(leaks, store.file("leaks")), write_text(summary, store.file("leaks_summary")),
             write_parquet(by_doc, store.file("leak_documents"))]
    store.write_args("contamination_report", cc.model_dump())
    n_queries = int(leaks["query_id"].n_unique()) if leaks.height else 0
    log(f"contamination: {leaks.height} suspected leaks for {n_queries} of {queries.height} queries")
    return StageResult(
        stage="contamination_report",
        path=store.stage("contamination_report"),
        metadata={"rows": leaks.height, "queries_with_leaks": n_queries, "queries": queries.height,
                  "documents_with_leaks": int(by_doc["doc_id"].n_unique()) if by_doc.height else 0},
        markdown={"summary": summary},
        params={f"contamination.{k}": v for k, v in cc.model_dump().items()},
        metrics={"suspected_leaks": leaks.height, "queries_with_leaks": n_queries},
        plots={"overlap": plots.histogram(leaks["overlap"].to_numpy() if leaks.height else np.zeros(0),
                                          store.file("overlap_plot"), "text overlap of suspected leaks",
                                          f"share of the query's word {cc.ngram}-grams in the example")},
        files=paths,
        fingerprint=file_digest(*paths),
    )
