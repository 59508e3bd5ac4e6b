"""Measurement: the response (perturbation) matrix Y, queries x K.

    Y[q, k] = loss_base(q) - loss_k(q)      (positive: operator k lowers the loss on q)

Two modes:
- ``exact``: one steered pass per operator, batched over operators in chunks so memory
  stays bounded for large K;
- ``first_order``: one backward pass from the query loss to the attachment point gives
  g = d loss / d shift; then every response is -<g, shift_k>, i.e.
  Y[q, k] = -<codes_q^T g_q, A_k>, one small matrix product for all K operators.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from stride_assets.engine.backbone import Batch, Site, take
from stride_assets.engine.losses import check_finite
from stride_assets.engine.operators import OperatorBank


def first_order(
    site: Site, bank: OperatorBank, feats: torch.Tensor, batch: Batch, differentiable: bool = False
) -> torch.Tensor:
    """First-order responses (N, K) of N examples from their cached features.

    The gradient at the attachment point depends only on the frozen model; with
    ``differentiable=True`` the result keeps the graph to the operator parameters.
    """
    shift0 = torch.zeros(*feats.shape[:-1], site.out_dim, dtype=torch.float32, requires_grad=True)
    with torch.enable_grad():
        loss = site.example_loss(site.logits(feats, batch, shift0), batch)
        check_finite(loss, "query loss")
        (grad,) = torch.autograd.grad(loss.sum(), shift0)
    with torch.set_grad_enabled(differentiable):
        projected = torch.einsum("ntr,ntc->nrc", bank.codes(feats), grad)
        return -bank.contract(projected)


@torch.no_grad()
def exact(site: Site, bank: OperatorBank, feats: torch.Tensor, batch: Batch, operator_chunk: int = 64) -> torch.Tensor:
    """Exact responses (N, K): every operator's steered pass, ``operator_chunk`` operators at a time."""
    base = check_finite(site.example_loss(site.logits(feats, batch), batch), "query loss")
    out = torch.empty(feats.shape[0], bank.K)
    for i in range(feats.shape[0]):
        for start in range(0, bank.K, operator_chunk):
            ops = torch.arange(start, min(start + operator_chunk, bank.K))
            rep = ops.new_full(ops.shape, i)
            f, b = feats[rep], take(batch, rep)
            steered = site.example_loss(site.logits(f, b, bank.shift(f, ops)), b)
            out[i, ops] = base[i] - steered
    return check_finite(out, "responses")


def responses(
    site: Site,
    bank: OperatorBank,
    batch: Batch,
    mode: str = "first_order",
    query_batch: int = 16,
    operator_chunk: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The response matrix (N, K) for the N examples of ``batch`` (queries or training probes)."""
    n = next(iter(batch.values())).shape[0]
    rows = []
    bank.eval()
    for start in range(0, n, query_batch):
        sub = take(batch, torch.arange(start, min(start + query_batch, n)))
        feats = site.encode(sub)
        if mode == "first_order":
            rows.append(first_order(site, bank, feats, sub))
        elif mode == "exact":
            rows.append(exact(site, bank, feats, sub, operator_chunk))
        else:
            raise ValueError(f"unknown measurement mode {mode!r} (first_order or exact)")
        if progress:
            progress(min(start + query_batch, n), n)
    return torch.cat(rows).numpy().astype(np.float32)
