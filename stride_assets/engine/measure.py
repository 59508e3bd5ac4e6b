"""Measurement: the response (perturbation) matrix Y, queries x K.

    Y[q, k] = loss_base(q) - loss_k(q)      (positive: operator k lowers the loss on q)

Two modes:
- ``exact``: one steered pass per operator, batched over operators in chunks so memory
  stays bounded for large K;
- ``first_order``: one backward pass from the query loss to the attachment point gives
  g = d loss / d shift; then every response is -<g, shift_k>, i.e.
  Y[q, k] = -<codes_q^T g_q, A_k>, one small matrix product for all K operators.

Per-token responses (``token_responses``, for ``stride attribute --tokens`` on a few queries): an LM
query's loss is the weighted mean of its target tokens' NLLs (weights: the target weights of
``losses.shift_targets``: 0 on padding and, with a ``loss_mask``, on unscored prompt targets), so
its responses decompose over target tokens t,

    Y[q, t, k] = nll_base(q, t) - nll_k(q, t),      Y[q, k] = sum_t w_t Y[q, t, k] / sum_t w_t,

exactly in both modes (first order: the gradient is linear in the loss). Both modes share the
sequence-level bodies, with the per-token loss in place of the sequence loss. First order needs one
backward pass per target token, except on the head and logit forms, where the shift at position t
moves only the logits at t (one pass gives every token's gradient).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from stride_assets.engine import column_logits
from stride_assets.engine.backbone import Batch, Site, take
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.losses import check_finite, shift_targets, token_nll
from stride_assets.engine.operators import OperatorBank

LOCAL_FORMS = ("head", "logit")  # the shift at position t changes only the output at t

Loss = Callable[[Site, torch.Tensor, Batch], torch.Tensor]


def sequence_loss(site: Site, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The site's loss of each example, (N,)."""
    return site.example_loss(logits, batch)


def token_losses(site: Site, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target token's NLL (N, T-1), 0 on unscored targets, and the target weights; checked to
    average (with those weights) to the site's own sequence loss, so the decomposition is the site's."""
    if "input_ids" not in batch:
        raise StrideInputError("per-token responses need a token batch (input_ids, attention_mask)")
    nll, weights = token_nll(logits, batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))
    mean = nll.sum(-1) / weights.sum(-1).clamp_min(1.0)
    if not torch.allclose(mean, site.example_loss(logits, batch), rtol=1e-4, atol=1e-5):
        raise StrideInputError("the site's sequence loss is not the weighted mean of its token NLLs: "
                               "per-token responses would not add up to the query's")
    return nll, weights


def _token_nll(site: Site, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return token_losses(site, logits, batch)[0]


def _project(bank: OperatorBank, codes: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """-<codes^T grad, A_k> for every operator: (N, T, r), (N, T, C) -> (N, K)."""
    return -bank.contract(torch.bmm(codes.transpose(1, 2), grad))


def first_order(
    site: Site, bank: OperatorBank, feats: torch.Tensor, batch: Batch, differentiable: bool = False,
    per_token: bool = False, lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """First-order responses (N, K) of N examples from their cached features; with ``per_token``,
    each target token's (N, T-1, K) (0 on unscored targets).

    The gradient at the attachment point depends only on the frozen model; with
    ``differentiable=True`` the result keeps the graph to the operator parameters. A column bank
    on the logit site needs it only at the bank's columns (``column_logits.loss_gradient``; ``lse``:
    the examples' base log-normalisers when stored, else computed).
    """
    if column_logits.applies(site, bank) and not per_token:
        columns, grad = column_logits.loss_gradient(site, bank, feats, batch, lse)
        with torch.set_grad_enabled(differentiable):
            return -bank.contract(torch.bmm(bank.codes(feats).transpose(1, 2), grad), columns=columns)
    shift0 = torch.zeros(*feats.shape[:-1], site.out_dim, dtype=torch.float32, device=feats.device,
                         requires_grad=True)
    with torch.enable_grad():
        loss = (_token_nll if per_token else sequence_loss)(site, site.logits(feats, batch, shift0), batch)
        check_finite(loss, "query loss")
        if per_token and site.form not in LOCAL_FORMS:
            # one backward pass per target token: its gradient reaches every position up to t
            grads = [torch.autograd.grad(loss[:, t].sum(), shift0, retain_graph=True)[0]
                     for t in range(loss.shape[1])]
        else:
            (grad,) = torch.autograd.grad(loss.sum(), shift0)
    with torch.set_grad_enabled(differentiable):
        codes = bank.codes(feats)
        if not per_token:
            return _project(bank, codes, grad)
        N, T1 = loss.shape
        if site.form in LOCAL_FORMS:  # grad[:, t] is d nll_t / d shift_t (targets t = 0..T-2)
            rows = _project(bank, codes[:, :T1].reshape(N * T1, 1, -1), grad[:, :T1].reshape(N * T1, 1, -1))
            return rows.view(N, T1, bank.K)
        return torch.stack([_project(bank, codes, g) for g in grads], dim=1)


@torch.no_grad()
def exact(site: Site, bank: OperatorBank, feats: torch.Tensor, batch: Batch, operator_chunk: int = 64,
          per_token: bool = False) -> torch.Tensor:
    """Exact responses (N, K): every operator's steered pass, ``operator_chunk`` operators at a time;
    with ``per_token``, each target token's (N, T-1, K)."""
    loss: Loss = _token_nll if per_token else sequence_loss
    base = check_finite(loss(site, site.logits(feats, batch), batch), "query loss")
    out = torch.empty(*base.shape, bank.K, device=feats.device)
    for i in range(feats.shape[0]):
        for start in range(0, bank.K, operator_chunk):
            ops = torch.arange(start, min(start + operator_chunk, bank.K))
            rep = ops.new_full(ops.shape, i)
            f, b = feats[rep], take(batch, rep)
            steered = loss(site, site.logits(f, b, bank.shift(f, ops)), b)  # (ops,) or (ops, T-1)
            out[i, ..., ops] = (base[i] - steered).movedim(0, -1)
    return check_finite(out, "responses")


def _measure(site: Site, bank: OperatorBank, sub: Batch, mode: str, operator_chunk: int,
             per_token: bool = False, feats: torch.Tensor | None = None,
             lse: torch.Tensor | None = None) -> torch.Tensor:
    feats = site.encode(sub) if feats is None else feats
    if mode == "first_order":
        return first_order(site, bank, feats, sub, per_token=per_token, lse=lse)
    if mode == "exact":
        return exact(site, bank, feats, sub, operator_chunk, per_token=per_token)
    raise ValueError(f"unknown measurement mode {mode!r} (first_order or exact)")


def responses(
    site: Site,
    bank: OperatorBank,
    batch: Batch,
    mode: str = "first_order",
    query_batch: int = 16,
    operator_chunk: int = 64,
    progress: Callable[[int, int], None] | None = None,
    feats: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> np.ndarray:
    """The response matrix (N, K) for the N examples of ``batch`` (queries or training probes);
    ``feats``: their features at the site, computed once for every bank (``site.encode``'s, (N, T, in_dim));
    ``lse``: their base log-normalisers (N, T) on the logit site (``query_features``), read by column banks."""
    n = next(iter(batch.values())).shape[0]
    for name, given in (("features", feats), ("log-normalisers", lse)):
        if given is not None and given.shape[0] != n:
            raise StrideInputError(f"{name} of {given.shape[0]} rows for a batch of {n}")
    rows = []
    bank.eval()
    for start in range(0, n, query_batch):
        index = torch.arange(start, min(start + query_batch, n))
        sub = take(batch, index)
        rows.append(_measure(site, bank, sub, mode, operator_chunk, feats=None if feats is None else feats[index],
                             lse=None if lse is None else lse[index]))
        if progress:
            progress(min(start + query_batch, n), n)
    return torch.cat(rows).cpu().numpy().astype(np.float32)


def target_weights(batch: Batch) -> np.ndarray:
    """Each target token's weight in its example's loss (N, T-1): 0 on the targets no loss scores."""
    weights = shift_targets(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))[1]
    return weights.cpu().numpy().astype(np.float64)


def token_responses(site: Site, bank: OperatorBank, batch: Batch, mode: str = "first_order",
                    operator_chunk: int = 64) -> np.ndarray:
    """Per-token responses (N, T-1, K) of a few queries, one query at a time (memory: T-1 x K per query);
    their mean over target tokens weighted by ``target_weights`` is ``responses``."""
    n = batch["input_ids"].shape[0]
    bank.eval()
    device = batch["input_ids"].device
    rows = [_measure(site, bank, take(batch, torch.tensor([i], device=device)), mode, operator_chunk, per_token=True)
            for i in range(n)]
    return torch.cat(rows).detach().cpu().numpy().astype(np.float64)
