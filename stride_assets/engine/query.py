"""Attribute new queries with the stored operators: one measurement and one sparse solve, no retraining."""

from __future__ import annotations

import numpy as np
import polars as pl

from stride_assets.engine.artifacts import Store
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import MeasureConfig, RecoveryConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import responses
from stride_assets.engine.recovery import recover
from stride_assets.engine.shards import DEFAULT_BATCH


def attribute(texts: list[str], store: Store, top_k: int = 10, batch: str = DEFAULT_BATCH) -> pl.DataFrame:
    """Top-k training passages for each text: columns query, rank, example_id, score, text.

    Uses the shards and recovery settings recorded by the influence scores of query batch ``batch``.
    """
    from stride_assets.engine import stages

    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise StrideInputError("attribute needs one or more non-empty query strings")
    model, tokenizer = stages.load_base_model(store)
    rec_args = store.read_args("influence_scores", batch)
    shard_list = rec_args.pop("shards")
    rec_args.pop("batch")
    recovery = RecoveryConfig(**rec_args)
    max_length = stages.read_json(store.require("base_model", "model_ref.json"))["max_length"]
    tokens = stages.encode_texts(tokenizer, texts, max_length)
    blocks = []
    for shard in shard_list:
        bank, op_args = stages.load_bank(store, shard)
        measure = MeasureConfig(mode=op_args.get("measure_mode", "first_order"))
        site = make_site(model, op_args["operators"]["form"], op_args["layer"])
        blocks.append(responses(site, bank, tokens, measure.mode, measure.query_batch, measure.operator_chunk))
    rec = recover(np.hstack(blocks), stages.read_block_design(store, shard_list), recovery)
    train = stages.read_train(store, shard_list)
    ids = [f"q{i}" for i in range(len(texts))]
    scores = stages.influence_table(rec.influence, ids, train)
    top = stages.top_k_table(scores, train, top_k)
    lookup = pl.DataFrame({"query_id": ids, "query": texts})
    return top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
