"""Attribute new queries with what the run stored: STRIDE's operators (one measurement and one sparse
solve) or EK-FAC's factors (one pass of query gradients), no retraining."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine import lm
from stride_assets.engine.attribution import blend, ekfac_scores
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import AttributionConfig, MeasureConfig, ModelConfig, RecoveryConfig, StrideConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.engine.stages.influence_scores import influence_table, top_k_table
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride


def _stride_influence(cfg: StrideConfig, store: Store, texts: list[str], shard_list: list[str]) -> sp.csr_matrix:
    """STRIDE: the texts measured against every shard's stored operators, then the sparse recovery."""
    model, tokenizer = store.load_base_model()
    tokens = lm.encode_batch(tokenizer, texts, cfg.model.max_length)
    blocks = []
    for shard in shard_list:
        bank, op_args = store.load_bank(shard)
        measure = MeasureConfig(mode=op_args.get("measure_mode", "first_order"))
        stride = Stride(make_site(model, op_args["operators"]["form"], op_args["layer"]),
                        cfg.model_copy(update={"measure": measure}))
        blocks.append(stride.measure(bank, tokens))
    return Stride(None, cfg).recover(np.hstack(blocks), store.read_block_design(shard_list)).influence


def attribute(texts: list[str], store: Store, top_k: int = 10, batch: str = DEFAULT_BATCH) -> pl.DataFrame:
    """Top-k training passages for each text: columns query, rank, example_id, score, text.

    Uses the shards, attribution method and recovery settings recorded by the influence scores of
    query batch ``batch`` (STRIDE: the stored operators; EK-FAC: the stored factors; or both).
    """
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise StrideInputError("attribute needs one or more non-empty query strings")
    rec_args = store.read_args("influence_scores", batch)
    shard_list = rec_args.pop("shards")
    rec_args.pop("batch")
    settings = AttributionConfig(**rec_args.pop("attribution", {}))
    cfg = StrideConfig(recovery=RecoveryConfig(**rec_args), attribution=settings,
                       model=ModelConfig(max_length=store.model_ref()["max_length"]))
    if settings.method == "ekfac":
        influence = sp.csr_matrix(ekfac_scores(cfg, store, texts, shard_list))
    else:
        influence = _stride_influence(cfg, store, texts, shard_list)
        if settings.method == "ensemble":
            influence = blend(influence, ekfac_scores(cfg, store, texts, shard_list), settings.ensemble_weight)
    train = store.read_train(shard_list)
    ids = [f"q{i}" for i in range(len(texts))]
    scores = influence_table(influence, ids, train)
    top = top_k_table(scores, train, top_k)
    lookup = pl.DataFrame({"query_id": ids, "query": texts})
    return top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
