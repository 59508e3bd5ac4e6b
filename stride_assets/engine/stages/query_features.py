"""Stage ``query_features[batch]``: one query batch's features at the operators' site and its base
losses, computed once and read by every shard's ``perturbation_matrix[batch|shard]`` block.

The frozen model below the site is the same for every shard's bank, so its forward pass over the
queries is done here once instead of once per shard (on GPT-2 124M it is ~45% of a block's work),
and a shard whose operators change is re-measured without running it again. On the logit site it also
keeps each token's base log-normaliser, so a column bank's block computes logits only at its own
columns (``column_logits.loss_gradient``), not over the vocabulary once per shard."""

from __future__ import annotations

from typing import Callable

import torch

from stride_assets.engine import lm
from stride_assets.engine.artifacts import file_digest, save_tensors
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import StrideConfig, resolve_device
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], batch: str) -> StageResult:
    """The batch's queries through the frozen model up to the operators' site (their cached features)
    and each query's base loss: what every shard's perturbation block shares."""
    oc, device = cfg.operators, resolve_device(cfg.measure.device)
    queries = store.read_queries(batch)
    model, tokenizer = store.load_base_model()
    stride = Stride(make_site(model.to(device), oc.form, oc.layer), cfg)
    tokens = lm.frame_batch(tokenizer, queries, cfg.model.max_length, device)
    with torch.no_grad():
        feats = stride.cache_features(tokens)
    base, lse = stride.base_pass(tokens, feats)
    tensors = {"features": feats, "base_loss": torch.as_tensor(base)}
    if lse is not None:  # the logit site: every token's base log-normaliser, for the column banks' responses
        tensors["lse"] = lse
    path = save_tensors(tensors, store.file("query_features", batch))
    store.seal(path)
    layer = getattr(stride.site, "layer", None)
    store.write_args("query_features", {"form": oc.form, "layer": layer, "max_length": cfg.model.max_length,
                                         "query_ids": queries["query_id"].to_list(), "batch": batch}, batch)
    seconds = stride.seconds["cache"]
    log(f"query features {batch}: {tuple(feats.shape)} at the {oc.form} site in {seconds:.1f}s")
    return StageResult(
        stage="query_features",
        path=path.parent,
        metadata={"queries": queries.height, "batch": batch, "form": oc.form, "layer": -1 if layer is None else layer,
                  "shape": str(tuple(feats.shape)), "bytes": path.stat().st_size, "seconds": seconds,
                  "mean_base_loss": float(base.mean())},
        params={"operators.form": oc.form, "operators.layer_used": layer, "model.max_length": cfg.model.max_length},
        metrics={"feature_seconds": seconds, "mean_query_base_loss": float(base.mean())},
        fingerprint=file_digest(path),
    )
