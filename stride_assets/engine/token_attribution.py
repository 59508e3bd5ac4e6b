"""Per-token attribution of a query: which of its tokens each top training example helps most.

A query's loss is the weighted mean of its target tokens' NLLs (``measure.target_weights``: 0 on
targets no loss scores, e.g. a prompt), so its responses decompose exactly over target tokens,
y = sum_t v_t y_t / sum_t v_t (``measure.token_responses``). The query's influence row w is the
Lasso solution of y against the membership M,

    w = argmin_w 1/(2K) ||y - b - M w||^2 + alpha ||w||_1.

On its support S with signs s the solution is affine in y (KKT: Mc_S^T (yc - Mc_S w_S) = K alpha s,
Mc: M centred over the subsets, yc: y centred, for the fitted intercept; no centring without one):

    w_S(y) = G^-1 (Mc_S^T yc - K alpha s),      G = Mc_S^T Mc_S.

Applying that map to each token's responses y_t, with the shrinkage term K alpha s shared equally
by the tokens, gives per-token scores w_{S,t} = G^-1 (Mc_S^T yc_t - K alpha s); since the map is
affine and the y_t average to y, their weighted mean over the scored tokens is w_S. We evaluate it
in the equivalent form centred at the solver's solution,

    w_{S,t} = w_S + G^+ Mc_S^T (yc_t - yc)        (G^+ by least squares: a rank-deficient Mc_S is fine),

which is the same number when the Lasso is solved exactly and makes the mean-over-tokens identity
exact whatever the solver's tolerance (an unconverged solve moves every token's score by the same
KKT residual, about ``recovery.tol`` relative; ``tests/test_token_attribution.py`` checks both forms).
Examples off the support score 0 at every token (an empty support: all zeros). A block-diagonal
design solved shard by shard (``recovery.per_shard``) gets the same construction per block (its own
intercept; the per-block alpha_s = alpha K / K_s gives the same shrinkage term K alpha s). The ridge
solver is linear in y: its per-token scores are the ridge solution of each y_t.

EK-FAC (``attribution.method: ekfac``) is linear in the query's gradient, and the gradient of the mean
NLL is the mean of the tokens' gradients: each scored target t becomes one query row of its own whose
``loss_mask`` keeps only t (``one_token_queries``), and Kronfluence's scores of those rows are the
per-token scores; their mean over the scored tokens is the query's score (up to float rounding).
``ensemble`` blends (1 - w) s / sd(s) + w e / sd(e) per query (``attribution.blend``, sd over the
examples): each part split over the tokens as above, with the query's own sd's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from stride_assets.engine import lm
from stride_assets.engine.attribution import blend, ekfac_scores
from stride_assets.engine.config import RecoveryConfig, StrideConfig
from stride_assets.engine.corpus import query_frame
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import target_weights
from stride_assets.engine.query import run_settings, stride_responses
from stride_assets.engine.recovery import diagonal_blocks, ridge
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.engine.stages.influence_scores import influence_table, top_k_table
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride



def query_responses(token_Y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The queries' responses (N, K) from their tokens' (N, T-1, K): the weighted mean over targets."""
    return np.einsum("ntk,nt->nk", token_Y, weights) / np.maximum(weights.sum(1), 1e-12)[:, None]


def _blocks(M: sp.csr_matrix, cfg: RecoveryConfig) -> list[tuple[slice, slice]]:
    """The designs' parts solved with their own intercept (as ``recovery.recover`` solves them)."""
    return diagonal_blocks(M) if cfg.per_shard else [(slice(0, M.shape[0]), slice(0, M.shape[1]))]


def lasso_token_scores(token_y: np.ndarray, weights: np.ndarray, w: np.ndarray, M: sp.spmatrix,
                       examples: np.ndarray, cfg: RecoveryConfig) -> np.ndarray:
    """Per-token scores (T', m) of examples ``examples`` for one query: its scored tokens' responses
    ``token_y`` (T', K) with weights (T',), its Lasso row ``w`` (n,) solved on their weighted mean."""
    M = sp.csr_matrix(M, dtype=np.float64)
    diff = token_y - weights @ token_y / weights.sum()  # y_t - y
    out = np.zeros((token_y.shape[0], len(examples)))
    for rows, cols in _blocks(M, cfg):
        support = np.flatnonzero(w[cols]) + cols.start
        wanted = np.flatnonzero(np.isin(examples, support))
        if not len(wanted):
            continue
        Mc = M[rows][:, support].toarray()
        d = diff[:, rows]
        if cfg.fit_intercept:
            Mc, d = Mc - Mc.mean(axis=0), d - d.mean(axis=1, keepdims=True)
        step = np.linalg.lstsq(Mc, d.T, rcond=None)[0]  # G^+ Mc_S^T (yc_t - yc), (|S|, T')
        at = np.searchsorted(support, examples[wanted])
        out[:, wanted] = w[examples[wanted]] + step[at].T
    return out


def token_scores(token_y: np.ndarray, weights: np.ndarray, w: np.ndarray, M: sp.spmatrix, examples: np.ndarray,
                 cfg: RecoveryConfig) -> np.ndarray:
    """Per-token scores (T', m) of one query's examples by the recovery's solver; their mean over the
    scored tokens, weighted by ``weights``, is the query's coefficient."""
    if cfg.solver != "ridge":
        return lasso_token_scores(token_y, weights, w, M, examples, cfg)
    ratio = float(cfg.lambda_ratio)  # ridge refuses 'auto'
    return ridge(sp.csr_matrix(M, dtype=np.float64), token_y, ratio)[0][:, examples]


def one_token_queries(batch: dict, weights: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    """One row per scored target of each query, its ``loss_mask`` keeping that target alone, and each
    query's rows' target positions (the query's loss is the mean of its rows' losses)."""
    index, positions, masks = [], [], []
    for i in range(weights.shape[0]):
        scored = np.flatnonzero(weights[i] > 0)
        positions.append(scored)
        for t in scored:
            index.append(i)
            mask = torch.zeros_like(batch["input_ids"][i])
            mask[t + 1] = 1  # target t is token t + 1
            masks.append(mask)
    rows = {k: v[torch.as_tensor(index)] for k, v in batch.items() if k != "loss_mask"}
    return {**rows, "loss_mask": torch.stack(masks)}, positions


def blended_token_scores(stride_tokens: np.ndarray, stride_row: np.ndarray, ekfac_tokens: np.ndarray,
                         ekfac_row: np.ndarray, weight: float) -> np.ndarray:
    """The ensemble's per-token scores (T', m): each method's split scaled as ``attribution.blend`` scales
    its query's row (``stride_row``, ``ekfac_row``: all n examples)."""
    def scale(row: np.ndarray) -> float:  # attribution.standardised's divisor
        std = float(row.std())
        return 1.0 / std if std > 0 else 0.0

    return (1 - weight) * stride_tokens * scale(stride_row) + weight * ekfac_tokens * scale(ekfac_row)


@dataclass
class TokenAttribution:
    """``top``: each query's top examples (query, rank, example_id, score, text, as ``query.attribute``);
    ``tokens``: one row per top example and scored query token (query, rank, example_id, position: the
    token's index in the query's tokens, token, token_score); ``texts``: each query's tokens, as strings."""

    top: pl.DataFrame
    tokens: pl.DataFrame
    texts: dict[str, list[str]]


@dataclass
class _Measured:
    """A query frame measured for per-token attribution: the run's settings, each query's tokens
    (strings) and target weights, and what each method needs to split a query's scores over them."""

    cfg: StrideConfig
    shards: list[str]
    strings: list[list[str]]  # each query's tokens, padding dropped
    weights: np.ndarray  # (N, T-1) target weights
    influence: sp.csr_matrix  # the queries' scores (N, n), by the run's method
    M: sp.csr_matrix | None = None  # STRIDE: the block design, ...
    token_Y: np.ndarray | None = None  # ... the per-token responses (N, T-1, K) ...
    stride_inf: sp.csr_matrix | None = None  # ... and the Lasso rows
    ekfac_tokens: list[np.ndarray] | None = None  # EK-FAC: each query's per-scored-token scores (T', n) ...
    ekfac: np.ndarray | None = None  # ... and their means, the queries' scores

    def split(self, i: int, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Query ``i``'s scored target positions (T',) and the per-token scores (T', m) of ``examples``."""
        scored = np.flatnonzero(self.weights[i] > 0)
        method, weight = self.cfg.attribution.method, self.cfg.attribution.ensemble_weight
        if self.stride_inf is not None:
            w = np.asarray(self.stride_inf[i].toarray()).ravel().astype(np.float64)
            per = token_scores(self.token_Y[i, scored], self.weights[i, scored], w, self.M, examples, self.cfg.recovery)
        if self.ekfac is not None:
            ek = self.ekfac_tokens[i][:, examples]
            per = ek if method == "ekfac" else blended_token_scores(per, w, ek, self.ekfac[i], weight)
        return scored, per


def _measure_frame(frame: pl.DataFrame, store: Store, batch: str) -> _Measured:
    """Per-token measurement of a query frame (``corpus.query_frame`` / the stored queries) with the
    settings, shards and artifacts of query batch ``batch``'s influence scores."""
    cfg, shard_list = run_settings(store, batch)
    method, blend_weight = cfg.attribution.method, cfg.attribution.ensemble_weight
    model, tokenizer = store.load_base_model()
    batch_tokens = lm.frame_batch(tokenizer, frame, cfg.model.max_length)
    weights = target_weights(batch_tokens)
    strings = [[tokenizer.decode([int(t)]) for t in ids[: int(mask.sum())]]
               for ids, mask in zip(batch_tokens["input_ids"], batch_tokens["attention_mask"])]
    found = _Measured(cfg, shard_list, strings, weights, sp.csr_matrix((len(strings), 0)))
    if method != "ekfac":
        found.M = store.read_block_design(shard_list)
        found.token_Y = stride_responses(cfg, store, model, batch_tokens, shard_list, per_token=True)
        found.stride_inf = Stride(None, cfg).recover(query_responses(found.token_Y, weights), found.M).influence
    if method != "stride":
        one_token, positions = one_token_queries(batch_tokens, weights)
        ekfac_tokens = ekfac_scores(cfg, store, one_token, shard_list)  # (sum of scored tokens, n)
        found.ekfac_tokens = np.split(ekfac_tokens, np.cumsum([len(p) for p in positions])[:-1])
        found.ekfac = np.stack([t.mean(axis=0) for t in found.ekfac_tokens])  # the queries' EK-FAC scores
    found.influence = (found.stride_inf if found.ekfac is None else sp.csr_matrix(found.ekfac)
                       if found.stride_inf is None else blend(found.stride_inf, found.ekfac, blend_weight))
    return found


_TOKEN_SCHEMA = {"position": pl.Int64, "token": pl.String, "token_score": pl.Float64}


def attribute_tokens(queries: list[str | dict], store: Store, top_k: int = 10,
                     batch: str = DEFAULT_BATCH) -> TokenAttribution:
    """Each query's top-k examples (as ``query.attribute``, whose query formats it takes) and their
    per-token scores on its scored tokens (a prompt/completion or chat query: its completion's).

    For a handful of queries: STRIDE's measurement is one pass per query (T - 1 backward passes on the
    activation form), EK-FAC's one query gradient per scored token."""
    if not queries:
        raise StrideInputError("attribute needs one or more non-empty queries")
    frame = query_frame(list(queries))
    found = _measure_frame(frame, store, batch)
    train = store.read_train(found.shards)
    ids, texts = frame["query_id"].to_list(), frame["text"].to_list()
    top = top_k_table(influence_table(found.influence, ids, train), train, top_k).join(
        train.select("example_id", pl.col("example_index").cast(pl.Int64)), on="example_id")
    rows = []
    for i, (qid, text) in enumerate(zip(ids, texts)):
        mine = top.filter(pl.col("query_id") == qid)
        if mine.is_empty():
            continue
        scored, per = found.split(i, mine["example_index"].to_numpy())
        for j, (rank, example_id) in enumerate(zip(mine["rank"].to_list(), mine["example_id"].to_list())):
            rows += [{"query": text, "rank": rank, "example_id": example_id, "position": int(t) + 1,
                      "token": found.strings[i][t + 1], "token_score": float(per[a, j])} for a, t in enumerate(scored)]
    lookup = pl.DataFrame({"query_id": ids, "query": texts})
    top = top.join(lookup, on="query_id").select("query", "rank", "example_id", "score", "text").sort(
        ["query", "rank"], maintain_order=True)
    schema = {"query": pl.String, "rank": pl.Int64, "example_id": top.schema["example_id"], **_TOKEN_SCHEMA}
    return TokenAttribution(top, pl.DataFrame(rows, schema=schema), dict(zip(texts, found.strings)))


def pair_tokens(queries: pl.DataFrame, pairs: pl.DataFrame, store: Store,
                batch: str = DEFAULT_BATCH) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Per-token scores of chosen (query_id, example_id) ``pairs`` of the stored queries ``queries``
    (e.g. the examples an attribution report shows): a frame query_id, example_id, position, token,
    token_score over each pair's scored tokens, and each query's tokens by query_id. A pair whose
    example is off the query's support (STRIDE) scores 0 at every token."""
    found = _measure_frame(queries, store, batch)
    index = store.read_train(found.shards).select("example_id", pl.col("example_index").cast(pl.Int64))
    wanted = pairs.select("query_id", "example_id").unique(maintain_order=True).join(index, on="example_id")
    rows = []
    for i, qid in enumerate(queries["query_id"].to_list()):
        mine = wanted.filter(pl.col("query_id") == qid)
        if mine.is_empty():
            continue
        scored, per = found.split(i, mine["example_index"].to_numpy())
        for j, example_id in enumerate(mine["example_id"].to_list()):
            rows += [{"query_id": qid, "example_id": example_id, "position": int(t) + 1,
                      "token": found.strings[i][t + 1], "token_score": float(per[a, j])} for a, t in enumerate(scored)]
    schema = {"query_id": queries.schema["query_id"], "example_id": index.schema["example_id"], **_TOKEN_SCHEMA}
    return pl.DataFrame(rows, schema=schema), dict(zip(queries["query_id"].to_list(), found.strings))


def bracketed(tokens: list[str], positions: list[int]) -> str:
    """The query's tokens joined back, those at ``positions`` in [brackets] (after their leading space)."""
    chosen = set(positions)

    def mark(tok: str) -> str:
        body = tok.lstrip()
        return f"{tok[:len(tok) - len(body)]}[{body or tok}]"

    return "".join(mark(tok) if p in chosen else tok for p, tok in enumerate(tokens))
