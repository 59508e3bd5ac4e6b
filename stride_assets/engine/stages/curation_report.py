"""Stage ``curation_report``: the curated dataset and the contamination audit as pages people can
read (``engine/html_report.py``): kept and dropped examples with their reasons, flagged leaks
with the text the query and the example share."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_text
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.html_report import contamination_page, curation_page
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """Self-contained HTML pages of the curated dataset (kept / dropped examples, with reasons) and of
    the contamination audit (each suspected leak with the shared text marked), searchable."""
    kept, dropped = store.read_dataset("curated_dataset", "keep"), store.read_dataset("curated_dataset", "drop")
    leaks = pl.read_parquet(store.verify(store.require("leaks")))
    queries = store.read_queries(shards_mod.batch_names(cfg))
    train = store.read_train(shards_mod.shard_names(cfg.corpus))
    paths = [write_text(curation_page(kept, dropped), store.file("curation_page")),
             write_text(contamination_page(leaks, queries, train, cfg.contamination.ngram),
                        store.file("contamination_page"))]
    store.seal(*paths)
    store.write_args("curation_report", {"ngram": cfg.contamination.ngram})
    log(f"curation report: {paths[0]}, {paths[1]}")
    return StageResult(
        stage="curation_report",
        path=store.stage("curation_report"),
        metadata={"report": paths[0], "contamination_report": paths[1], "kept": kept.height,
                  "dropped": dropped.height, "suspected_leaks": leaks.height},
        files=paths,
        fingerprint=file_digest(*paths),
    )
