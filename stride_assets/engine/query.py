"""Attribute new queries with the stored operators: one measurement and one sparse solve, no retraining."""

from __future__ import annotations

import polars as pl

from stride_assets.engine.artifacts import Store
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import MeasureConfig, RecoveryConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import responses
from stride_assets.engine.recovery import recover


def attribute(texts: list[str], store: Store, top_k: int = 10) -> pl.DataFrame:
    """Top-k training passages for each text: columns query, rank, example_id, score, text."""
    from stride_assets.engine import stages

    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise StrideInputError("attribute needs one or more non-empty query strings")
    model, tokenizer = stages.load_base_model(store)
    bank, op_args = stages.load_bank(store)
    measure = MeasureConfig(**store.read_args("perturbation_matrix")) if store.path(
        "perturbation_matrix", "args.json").exists() else MeasureConfig(mode=op_args.get("measure_mode", "first_order"))
    recovery = RecoveryConfig(**store.read_args("influence_scores")) if store.path(
        "influence_scores", "args.json").exists() else RecoveryConfig()
    max_length = stages.read_json(store.require("base_model", "model_ref.json"))["max_length"]
    site = make_site(model, op_args["operators"]["form"], op_args["layer"])
    batch = stages.encode_texts(tokenizer, texts, max_length)
    Y = responses(site, bank, batch, measure.mode, measure.query_batch, measure.operator_chunk)
    rec = recover(Y, stages.read_design(store).membership, recovery)
    train = stages.read_corpus(store)
    ids = [f"q{i}" for i in range(len(texts))]
    scores = stages.influence_table(rec.influence, ids, train)
    top = stages.top_k_table(scores, train, top_k)
    lookup = pl.DataFrame({"query_id": ids, "query": texts})
    return top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
