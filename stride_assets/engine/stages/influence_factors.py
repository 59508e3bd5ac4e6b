"""Stage ``influence_factors``: Kronfluence's curvature factors of the base model on the whole training corpus.

Fitted once and read by every query batch's ``influence_scores`` when ``attribution.method`` is
``ekfac`` or ``ensemble``. One asset, not one per shard: EK-FAC's covariances and eigenvalue
corrections are averages over all the training examples, so a changed shard refits them.
"""

from __future__ import annotations

from typing import Callable

from stride_assets.engine import attribution
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import atomic_dir, file_digest
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """Kronfluence's factors (EK-FAC by default) of the frozen base model, fitted on every shard's passages."""
    ac = cfg.attribution
    target = store.file("factors")
    with atomic_dir(target) as tmp:
        n, seconds = attribution.fit_factors(cfg, store, tmp)
    files = sorted(p for p in target.iterdir() if p.is_file())
    store.seal(*files)
    shards = shards_mod.shard_names(cfg.corpus)
    store.write_args("influence_factors", {**ac.model_dump(), "n": n, "shards": shards})
    size = sum(p.stat().st_size for p in files)
    log(f"influence factors ({ac.strategy}): fitted on n={n} examples in {seconds:.1f}s ({size / 1e6:.1f} MB)")
    return StageResult(
        stage="influence_factors",
        path=store.stage("influence_factors"),
        metadata={"strategy": ac.strategy, "n": n, "shards": len(shards), "include_head": ac.include_head,
                  "seconds": seconds, "factor_megabytes": size / 1e6},
        params={f"attribution.{k}": v for k, v in ac.model_dump().items()},
        metrics={"factor_seconds": seconds, "factor_megabytes": size / 1e6},
        fingerprint=file_digest(*files),
    )
