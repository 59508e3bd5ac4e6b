"""Stage ``subset_design[shard]``: the membership matrix M of one shard (K subsets, each example in d)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.design import draw_design, shard_K
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], shard: str) -> StageResult:
    """K subsets of one shard's training examples, each example in exactly d of them."""
    n = store.read_corpus(shard).height
    dc = cfg.design
    seed = shards_mod.derive_seed(dc.seed, shard)
    K = shard_K(dc.K, dc.d, n, cfg.corpus.shard_size)
    design = draw_design(n, K, dc.d, seed)
    subsets, examples = design.member_table()
    pairs = pl.DataFrame({"subset": subsets.astype(np.int32), "example_index": examples.astype(np.int32)})
    path = write_parquet(pairs.sort(["subset", "example_index"]), store.file("membership", shard))
    store.seal(path)
    store.write_args("subset_design", {**dc.model_dump(), "K": K, "seed": seed, "n": n, "shard": shard}, shard)
    sizes = design.subset_sizes()
    log(f"design {shard}: K={K}, d={dc.d}, n={n}, subset sizes {sizes.min()}..{sizes.max()}")
    return StageResult(
        stage="subset_design",
        path=path.parent,
        metadata={"K": K, "d": dc.d, "n": n, "shard": shard, "subset_size_min": int(sizes.min()),
                  "subset_size_mean": float(sizes.mean()), "subset_size_max": int(sizes.max())},
        params={"design.K": K, "design.d": dc.d, "design.seed": seed, "n": n},
        metrics={"subset_size_mean": float(sizes.mean())},
        fingerprint=file_digest(path),
    )
