"""Attribute new queries with the stored operators: one measurement and one sparse solve, no retraining."""

from __future__ import annotations

import numpy as np
import polars as pl

from stride_assets.engine import lm
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import MeasureConfig, RecoveryConfig, StrideConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.engine.stages.influence_scores import influence_table, top_k_table
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride


def attribute(texts: list[str], store: Store, top_k: int = 10, batch: str = DEFAULT_BATCH) -> pl.DataFrame:
    """Top-k training passages for each text: columns query, rank, example_id, score, text.

    Uses the shards and recovery settings recorded by the influence scores of query batch ``batch``.
    """
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise StrideInputError("attribute needs one or more non-empty query strings")
    model, tokenizer = store.load_base_model()
    rec_args = store.read_args("influence_scores", batch)
    shard_list = rec_args.pop("shards")
    rec_args.pop("batch")
    cfg = StrideConfig(recovery=RecoveryConfig(**rec_args))
    tokens = lm.encode_batch(tokenizer, texts, store.model_ref()["max_length"])
    blocks = []
    for shard in shard_list:
        bank, op_args = store.load_bank(shard)
        measure = MeasureConfig(mode=op_args.get("measure_mode", "first_order"))
        stride = Stride(make_site(model, op_args["operators"]["form"], op_args["layer"]),
                        cfg.model_copy(update={"measure": measure}))
        blocks.append(stride.measure(bank, tokens))
    rec = Stride(None, cfg).recover(np.hstack(blocks), store.read_block_design(shard_list))
    train = store.read_train(shard_list)
    ids = [f"q{i}" for i in range(len(texts))]
    scores = influence_table(rec.influence, ids, train)
    top = top_k_table(scores, train, top_k)
    lookup = pl.DataFrame({"query_id": ids, "query": texts})
    return top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
