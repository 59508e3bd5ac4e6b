"""The exact influence function restricted to the last linear layer (features held fixed).

With theta = [W | b] of the last layer (C outputs, H inputs; row-major, P = C * (H + 1)) and the
layer's input h at every position r of an example (one position for a classifier, one per token
for a language model), the example loss depends on theta only through the logits z_r = W h_r + b:

- gradient: g = sum_r delta_r (x) [h_r, 1], with delta_r = d loss / d z_r;
- Hessian:  sum_r B_r (x) [h_r, 1][h_r, 1]^T, with B_r = d^2 loss / d z_r^2 (for softmax cross-
  entropy w_r (diag(p) - p p^T), w_r the position's weight in the example loss).

The logits are linear in theta, so this Gauss-Newton form is the exact Hessian. delta_r and B_r
come from autograd on the task's own ``example_loss`` (a hook on the last layer swaps its output
for a leaf tensor), so masks, per-token averaging and label conventions are whatever the task
uses; the only assumption is that the loss is a sum of per-position terms (true for CE).

H = mean over training examples of the per-example Hessian, plus the recipe's weight decay
(objective mean loss + wd / 2 ||theta||^2), damped by ``damping`` * mean eigenvalue of H.
Upweighting example i by eps moves theta by -eps H^-1 g_i and the query loss by
-eps g_q^T H^-1 g_i, so score[q, i] = g_q^T (H + lambda I)^-1 g_i (positive = lowers the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stride_assets.engine.backbone import Batch
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.methods.base import (
    Clock,
    DampedSolver,
    MethodResult,
    chunks,
    evaluating,
    weight_decay_of,
)
from stride_assets.engine.evaluation.task import Task, Trained

IF_EXACT_MAX_PARAMS = 16_384  # P x P float64 Hessian: 2 GiB at the limit
_ROW_ELEMENTS = 1 << 24  # bound on rows x (H+1)^2 elements per Hessian accumulation step


def last_layer_size(layer: nn.Linear) -> int:
    return layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)


@dataclass
class LogitTerms:
    """Per position r of each example: layer input h (N, R, H1, bias column included), delta, B."""

    h: torch.Tensor  # (N, R, H1)
    delta: torch.Tensor  # (N, R, C)
    curvature: torch.Tensor | None  # (N, R, C, C)

    def grads(self) -> torch.Tensor:
        """Per-example gradients (N, C * H1) w.r.t. [W | b], row-major."""
        return torch.einsum("nrc,nrj->ncj", self.delta, self.h).reshape(self.h.shape[0], -1)

    def hessian_sum(self) -> torch.Tensor:
        """sum over examples and positions of kron(B_r, h_r h_r^T): (P, P)."""
        C, H1 = self.delta.shape[-1], self.h.shape[-1]
        B = self.curvature.reshape(-1, C * C)
        h = self.h.reshape(-1, H1)
        M = torch.zeros(C * C, H1 * H1, dtype=torch.float64)
        step = max(1, _ROW_ELEMENTS // (H1 * H1))
        for s in range(0, h.shape[0], step):
            hh = (h[s : s + step, :, None] * h[s : s + step, None, :]).reshape(-1, H1 * H1)
            M += B[s : s + step].T @ hh
        return M.reshape(C, C, H1, H1).permute(0, 2, 1, 3).reshape(C * H1, C * H1)


def logit_terms(task: Task, model: nn.Module, batch: Batch, layer: nn.Linear, curvature: bool) -> LogitTerms:
    """delta (and B if ``curvature``) of the task's example loss w.r.t. the last layer's outputs."""
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        store["h"] = inputs[0].detach()
        store["z"] = output.detach().requires_grad_(True)
        return store["z"]

    handle = layer.register_forward_hook(hook)
    try:
        with evaluating(model), torch.enable_grad():
            loss = task.example_loss(model, batch)
    finally:
        handle.remove()
    z = store["z"]
    (delta,) = torch.autograd.grad(loss.sum(), z, create_graph=curvature)
    n, C = loss.shape[0], z.shape[-1]
    B = None
    if curvature:  # column c of every position's block at once (positions do not interact)
        cols = [torch.autograd.grad(delta[..., c].sum(), z, retain_graph=c < C - 1)[0] for c in range(C)]
        B = torch.stack(cols, dim=-1).detach().reshape(n, -1, C, C).double()
    h = store["h"].reshape(n, -1, store["h"].shape[-1]).double()
    if layer.bias is not None:
        h = torch.cat([h, torch.ones(*h.shape[:-1], 1, dtype=h.dtype)], dim=-1)
    return LogitTerms(h, delta.detach().reshape(n, -1, C).double(), B)


def if_exact(task: Task, trained: Trained, split: str, damping: float = 0.01, weight_decay: float | str = "auto",
             chunk_size: int = 1024) -> MethodResult:
    """score[q, i] = g_q^T (H + lambda I)^-1 g_i on the last linear layer (see the module docstring).

    ``weight_decay``: the L2 coefficient of the training objective, added to H. "auto" reads
    ``task.recipe.weight_decay`` for classifier tasks (``MLPRecipe``: mean CE + wd / 2 ||theta||^2)
    and uses 0 otherwise (an LM task's ``TinyModelConfig`` one is AdamW's decoupled decay, not an
    L2 term; damping stands in for it); a number overrides it.
    """
    model = trained.model
    layer = task.last_layer(model)
    P = last_layer_size(layer)
    if P > IF_EXACT_MAX_PARAMS:
        raise StrideConfigError(
            f"if_exact: the last layer has {P} parameters (> {IF_EXACT_MAX_PARAMS}); it does not apply"
        )
    if weight_decay == "auto":
        wd = weight_decay_of(task) if getattr(task, "kind", None) == "classifier" else 0.0
    else:
        wd = float(weight_decay)
    clock = Clock()
    with clock("one_time"):
        H = torch.zeros(P, P, dtype=torch.float64)
        G_train = []
        for part in chunks(task.train_batch(None), chunk_size):
            terms = logit_terms(task, model, part, layer, curvature=True)
            G_train.append(terms.grads())
            H += terms.hessian_sum()
        G_train = torch.cat(G_train)
        H = H / G_train.shape[0] + wd * torch.eye(P, dtype=torch.float64)
        solver = DampedSolver.fit(H, damping)
    with clock("per_query"):
        G_query = torch.cat([logit_terms(task, model, part, layer, curvature=False).grads()
                             for part in chunks(task.query_batch(split), chunk_size)])
        scores = solver.solve(G_query.T).T @ G_train.T
    return clock.result(scores, {"damping": damping, "weight_decay": wd, "chunk_size": chunk_size},
                        lam=solver.lam, last_layer_params=P)
