"""Stage ``query_set[batch]``: one batch of queries to attribute."""

from __future__ import annotations

from typing import Callable

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], batch: str) -> StageResult:
    """One batch of queries to attribute: held-out passages and prompts (default) or a query file."""
    queries = shards_mod.load_batch(cfg, batch)
    path = write_parquet(queries, store.file("queries", batch))
    store.seal(path)
    store.write_args("query_set", {**cfg.queries.model_dump(), "batch": batch}, batch)
    kinds = dict(queries.group_by("kind").len().iter_rows())
    log(f"queries {batch}: {queries.height} ({kinds})")
    return StageResult(
        stage="query_set",
        path=path.parent,
        metadata={"rows": queries.height, "batch": batch, "source_digest": shards_mod.batch_digests(cfg)[batch],
                  **{f"kind_{k}": int(v) for k, v in kinds.items()}},
        markdown={"sample": markdown_table(queries.head(5))},
        params={"queries.n_holdout": cfg.queries.n_holdout, "queries.n_prompts": len(cfg.queries.prompts)},
        metrics={"queries": queries.height},
        fingerprint=file_digest(path),
    )
