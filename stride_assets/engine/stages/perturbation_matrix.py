"""Stage ``perturbation_matrix[batch|shard]``: one block of the response matrix, a query batch x a shard's
operators, from the batch's features at the site (``query_features[batch]``, shared by every shard)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from stride_assets.engine import lm, plots
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import StrideConfig, resolve_device
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store, block_key
from stride_assets.engine.stride import Stride


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], shard: str, batch: str) -> StageResult:
    """One block of responses, queries of a batch x operators of a shard: loss_base(q) - loss_k(q)."""
    mc = cfg.measure
    device = resolve_device(mc.device)
    queries = store.read_queries(batch)
    model, tokenizer = store.load_base_model()
    bank, args = store.load_bank(shard)
    form, layer = args["operators"]["form"], args["layer"]
    stride = Stride(make_site(model.to(device), form, layer), cfg)
    tokens = lm.frame_batch(tokenizer, queries, cfg.model.max_length, device)
    feats, base, lse = store.load_query_features(batch, form, layer, queries["query_id"].to_list(), device)
    Y = stride.measure(bank.to(device), tokens, progress=lambda done, total: log(f"measured {done}/{total} queries"),
                       feats=feats, lse=lse)
    seconds = stride.seconds["measure"]
    frame = pl.DataFrame({"query_id": queries["query_id"], "base_loss": base.astype(np.float32),
                          "response": Y.tolist()}, schema_overrides={"response": pl.Array(pl.Float32, bank.K)})
    key = block_key(shard, batch)
    path = write_parquet(frame, store.file("responses", key))
    store.seal(path)
    store.write_args("perturbation_matrix", {**mc.model_dump(), "shard": shard, "batch": batch}, key)
    return StageResult(
        stage="perturbation_matrix",
        path=path.parent,
        metadata={"queries": Y.shape[0], "K": Y.shape[1], "shard": shard, "batch": batch, "mode": mc.mode,
                  "seconds": seconds, "seconds_per_query": seconds / max(1, Y.shape[0]),
                  "mean_abs_response": float(np.abs(Y).mean()), "mean_base_loss": float(base.mean())},
        params={f"measure.{k}": v for k, v in mc.model_dump().items()},
        metrics={"measure_seconds": seconds, "mean_abs_response": float(np.abs(Y).mean()),
                 "mean_query_base_loss": float(base.mean())},
        plots={"responses": plots.histogram(Y.ravel(), store.file("responses_plot", key),
                                            "responses y[q,k]", "loss_base - loss_k")},
        fingerprint=file_digest(path),
    )
