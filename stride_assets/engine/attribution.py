"""The pipeline's attribution methods (``attribution.method``): one query batch -> influence (Q x n).

- ``stride``: the batch's perturbation matrix recovered against the block-diagonal subset design
  (per-query Lasso), as the STRIDE facade does it;
- ``ekfac``: Kronfluence's influence function with the factors of the ``influence_factors`` stage
  (fitted once on the whole training corpus, reused by every batch);
- ``ensemble``: both, each query's row divided by its standard deviation over the examples, then
  blended with ``attribution.ensemble_weight`` on EK-FAC (the paper's LoGRA + STRIDE combination).

Each returns an ``Attribution``: the influence matrix with rows in the batch's query order, a
per-query table (query_id + the method's own diagnostics) and the numbers the stage reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from stride_assets.engine import lm
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.config import StrideConfig, resolve_device
from stride_assets.engine.errors import StrideNumericalError
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride


@dataclass
class Attribution:
    influence: sp.csr_matrix  # (Q, n): rows in per_query's order, columns the corpus's example_index
    per_query: pl.DataFrame  # query_id, then the method's per-query diagnostics
    metadata: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def influence_model(cfg: StrideConfig, model):
    """Kronfluence set up as ``cfg.attribution`` says, on the frozen base model."""
    from stride_assets.engine.ekfac import Influence, lm_objective

    ac = cfg.attribution
    return Influence(model.to(resolve_device(ac.device)), lm_objective, strategy=ac.strategy,
                     include_head=ac.include_head, batch_size=ac.batch_size, seed=ac.seed)


def corpus_tokens(cfg: StrideConfig, tokenizer, rows: list[str] | pl.DataFrame | dict):
    """Texts, or a corpus / query frame (instruction and chat rows: completion-only loss), as a token batch
    (a token batch already, e.g. ``token_attribution``'s one-token queries: moved to the device)."""
    device = resolve_device(cfg.attribution.device)
    if isinstance(rows, dict):
        return {k: v.to(device) for k, v in rows.items()}
    if isinstance(rows, pl.DataFrame):
        return lm.frame_batch(tokenizer, rows, cfg.model.max_length, device)
    return lm.encode_batch(tokenizer, rows, cfg.model.max_length, device)


def by_stride(cfg: StrideConfig, store: Store, batch: str) -> Attribution:
    shard_list = shards_mod.shard_names(cfg.corpus)
    meta, Y = store.read_responses(batch, shard_list)
    stride = Stride(None, cfg)  # the recover phase needs no model
    rec = stride.recover(Y, store.read_block_design(shard_list))
    per_query = meta.with_columns(lambda_ratio=rec.ratio, alpha=rec.alpha, r2=rec.r2, nnz=rec.nnz)
    return Attribution(rec.influence, per_query, {"nnz_per_query": float(rec.nnz.mean()), "r2_mean": float(rec.r2.mean()),
                                                  "lambda_ratio_mean": float(rec.ratio.mean())},
                       stride.seconds["recover"])


def ekfac_scores(cfg: StrideConfig, store: Store, texts: list[str] | pl.DataFrame | dict,
                 shards: list[str]) -> np.ndarray:
    """EK-FAC influence (len(texts), n) of the passages of ``shards`` on each text, with the stored factors."""
    train = store.read_train(shards)
    model, tokenizer = store.load_base_model()
    scores = influence_model(cfg, model).scores(corpus_tokens(cfg, tokenizer, texts),
                                                corpus_tokens(cfg, tokenizer, train),
                                                store.require("factors"), damping=cfg.attribution.damping)
    if not np.isfinite(scores).all():
        raise StrideNumericalError("EK-FAC scores are not finite: set attribution.damping (e.g. 1e-3) instead of "
                                   "Kronfluence's heuristic")
    return scores


def by_ekfac(cfg: StrideConfig, store: Store, batch: str) -> Attribution:
    started = time.perf_counter()
    queries = store.read_queries(batch)
    scores = ekfac_scores(cfg, store, queries, shards_mod.shard_names(cfg.corpus))
    return Attribution(sp.csr_matrix(scores), queries.select("query_id"), {"damping": cfg.attribution.damping or -1.0},
                       time.perf_counter() - started)


def standardised(M: sp.csr_matrix) -> np.ndarray:
    """Each row divided by its standard deviation over the examples (a zero row stays zero)."""
    dense = M.toarray()
    std = dense.std(axis=1, keepdims=True)
    return np.divide(dense, std, out=np.zeros_like(dense), where=std > 0)


def blend(stride: sp.spmatrix, ekfac: sp.spmatrix | np.ndarray, weight: float) -> sp.csr_matrix:
    """The ensemble of two influence matrices of the same queries (rows) and examples (columns)."""
    return sp.csr_matrix((1 - weight) * standardised(sp.csr_matrix(stride)) + weight * standardised(sp.csr_matrix(ekfac)))


def by_ensemble(cfg: StrideConfig, store: Store, batch: str) -> Attribution:
    stride, ekfac = by_stride(cfg, store, batch), by_ekfac(cfg, store, batch)
    order = {q: i for i, q in enumerate(ekfac.per_query["query_id"].to_list())}
    rows = [order[q] for q in stride.per_query["query_id"].to_list()]
    w = cfg.attribution.ensemble_weight
    return Attribution(blend(stride.influence, ekfac.influence[rows], w), stride.per_query,
                       {**stride.metadata, "ensemble_weight": w}, stride.seconds + ekfac.seconds)


METHODS: dict[str, Callable[[StrideConfig, Store, str], Attribution]] = {
    "stride": by_stride, "ekfac": by_ekfac, "ensemble": by_ensemble}


def attribute(cfg: StrideConfig, store: Store, batch: str) -> Attribution:
    """One query batch's influence by the configured method."""
    return METHODS[cfg.attribution.method](cfg, store, batch)


def fit_factors(cfg: StrideConfig, store: Store, into: Path) -> tuple[int, float]:
    """Kronfluence's factors on the whole training corpus, into folder ``into``: (n, seconds)."""
    started = time.perf_counter()
    train = store.read_train(shards_mod.shard_names(cfg.corpus))
    model, tokenizer = store.load_base_model()
    influence_model(cfg, model).fit(corpus_tokens(cfg, tokenizer, train), into)
    return train.height, time.perf_counter() - started
