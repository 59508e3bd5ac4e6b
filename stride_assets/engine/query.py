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
from stride_assets.engine.corpus import query_frame
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import token_responses
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.engine.stages.influence_scores import influence_table, top_k_table
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride


def stride_responses(cfg: StrideConfig, store: Store, model, tokens: dict, shard_list: list[str],
                     per_token: bool = False) -> np.ndarray:
    """The tokens' responses to every shard's stored operators (``model``: the stored base model), shards
    side by side: (N, K), or each target token's (N, T-1, K) with ``per_token`` (``token_responses``)."""
    blocks = []
    for shard in shard_list:
        bank, op_args = store.load_bank(shard)
        measure = MeasureConfig(mode=op_args.get("measure_mode", "first_order"))
        stride = Stride(make_site(model, op_args["operators"]["form"], op_args["layer"]),
                        cfg.model_copy(update={"measure": measure}))
        blocks.append(token_responses(stride.site, bank, tokens, measure.mode, cfg.measure.operator_chunk)
                      if per_token else stride.measure(bank, tokens))
    return np.concatenate(blocks, axis=-1)


def _stride_influence(cfg: StrideConfig, store: Store, queries: pl.DataFrame, shard_list: list[str]) -> sp.csr_matrix:
    """STRIDE: the queries measured against every shard's stored operators, then the sparse recovery."""
    model, tokenizer = store.load_base_model()
    Y = stride_responses(cfg, store, model, lm.frame_batch(tokenizer, queries, cfg.model.max_length), shard_list)
    return Stride(None, cfg).recover(Y, store.read_block_design(shard_list)).influence


def run_settings(store: Store, batch: str = DEFAULT_BATCH) -> tuple[StrideConfig, list[str]]:
    """The settings (recovery, attribution method, max_length) and shards that the influence scores of
    query batch ``batch`` were made with."""
    rec_args = store.read_args("influence_scores", batch)
    shard_list = rec_args.pop("shards")
    rec_args.pop("batch")
    settings = AttributionConfig(**rec_args.pop("attribution", {}))
    cfg = StrideConfig(recovery=RecoveryConfig(**rec_args), attribution=settings,
                       model=ModelConfig(max_length=store.model_ref()["max_length"]))
    return cfg, shard_list


def attribute(texts: list[str | dict], store: Store, top_k: int = 10, batch: str = DEFAULT_BATCH) -> pl.DataFrame:
    """Top-k training passages for each query: columns query, rank, example_id, score, text.

    A query is a string (every token scored), a ``{prompt, completion}`` or a ``{messages}`` mapping
    (its completion / last assistant message alone scored; ``formats``); ``query`` shows its full text.
    Uses the shards, attribution method and recovery settings recorded by the influence scores of
    query batch ``batch`` (STRIDE: the stored operators; EK-FAC: the stored factors; or both).
    """
    if not texts:
        raise StrideInputError("attribute needs one or more non-empty queries")
    queries = query_frame(list(texts))
    cfg, shard_list = run_settings(store, batch)
    settings = cfg.attribution
    if settings.method == "ekfac":
        influence = sp.csr_matrix(ekfac_scores(cfg, store, queries, shard_list))
    else:
        influence = _stride_influence(cfg, store, queries, shard_list)
        if settings.method == "ensemble":
            influence = blend(influence, ekfac_scores(cfg, store, queries, shard_list), settings.ensemble_weight)
    train = store.read_train(shard_list)
    ids = queries["query_id"].to_list()
    scores = influence_table(influence, ids, train)
    top = top_k_table(scores, train, top_k)
    lookup = queries.select("query_id", pl.col("text").alias("query"))
    return top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
