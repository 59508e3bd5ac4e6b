"""Gradient baselines: Grad-Dot, Grad-Cos, TracIn-CP and projected-gradient influence (LoGra/TRAK style).

``logra`` is an influence function on projected per-example gradients with a Gauss-Newton
curvature (see its docstring and benchmarks/notes_logra.md for what was measured).

Per-example gradients of the example loss w.r.t. all parameters come from
``vmap(grad(task.functional_loss(model)))`` in chunks of examples. Optionally each chunk is
compressed at once by a seeded CountSketch (a hash bucket and a sign per coordinate), so no
dense P x D projection matrix and no (n, P) gradient matrix is ever held.

Signs: one gradient-descent step on example i moves the parameters by -eta * g_i and changes the
query loss by about -eta * <g_q, g_i>, so training on i lowers the query loss when
<g_q, g_i> > 0. Every score here is therefore a positively weighted inner product.

Settings shared by all four methods
- ``proj_dim``: "auto" (exact gradients up to ``AUTO_EXACT_MAX`` parameters, else a CountSketch to
  ``AUTO_PROJ_DIM``), None (exact), or an int (CountSketch to that size; exact if not smaller
  than the number of parameters);
- ``seed``: the CountSketch's seed; ``chunk_size``: examples per vmap call ("auto": as many as
  keep a chunk's raw gradients near ``AUTO_CHUNK_ELEMENTS`` floats; each vmap call has a fixed
  overhead, so small chunks are slow on small models).
Training-set gradients of the final model are cached (a few entries, keyed on the live model
object and its parameters' versions) so that a settings grid re-uses them; a cache hit still
reports the seconds the gradients took when they were computed.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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
    trainable,
)
from stride_assets.engine.evaluation.task import Task, Trained

AUTO_EXACT_MAX = 16_384  # parameters up to which "auto" keeps exact gradients
AUTO_PROJ_DIM = 4_096
AUTO_CHUNK_ELEMENTS = 1 << 25  # 128 MiB of float32 gradients per chunk
_CACHE_SIZE = 4


# --- projection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountSketch:
    """x -> S x with S (k, D) having one +-1 per column: coordinate j goes to bucket h(j) with sign s(j).

    Unbiased for inner products (E <Sx, Sy> = <x, y>), relative error about sqrt(2 / k).
    Only the D bucket indices and D signs are stored.
    """

    buckets: torch.Tensor  # (D,) int64 in [0, k)
    signs: torch.Tensor  # (D,) float32, +-1
    dim_out: int

    @classmethod
    def make(cls, dim_in: int, dim_out: int, seed: int) -> "CountSketch":
        gen = torch.Generator().manual_seed(int(seed))
        buckets = torch.randint(dim_out, (dim_in,), generator=gen)
        signs = torch.randint(0, 2, (dim_in,), generator=gen).to(torch.float32) * 2 - 1
        return cls(buckets, signs, int(dim_out))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project rows: (N, D) -> (N, k)."""
        out = x.new_zeros(x.shape[0], self.dim_out)
        return out.index_add_(1, self.buckets, x * self.signs.to(x.dtype))


def resolve_proj_dim(proj_dim: int | str | None, n_params: int) -> int | None:
    """The projection size actually used (None = exact gradients)."""
    if proj_dim == "auto":
        return None if n_params <= AUTO_EXACT_MAX else AUTO_PROJ_DIM
    if proj_dim is None:
        return None
    if not isinstance(proj_dim, int) or proj_dim < 1:
        raise StrideConfigError(f"proj_dim must be 'auto', None or a positive int, got {proj_dim!r}")
    return None if proj_dim >= n_params else proj_dim


def resolve_chunk_size(chunk_size: int | str, n_params: int) -> int:
    if chunk_size == "auto":
        return max(1, AUTO_CHUNK_ELEMENTS // max(1, n_params))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise StrideConfigError(f"chunk_size must be 'auto' or a positive int, got {chunk_size!r}")
    return chunk_size


# --- per-example gradients ---------------------------------------------------------------------


def per_example_grads_and_losses(
    task: Task, model: nn.Module, batch: Batch, chunk_size: int | str = "auto", sketch: CountSketch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (N, D) of each example's loss w.r.t. all parameters, or (N, k) sketched chunk by chunk,
    and the losses (N,) themselves (from the same pass: ``grad_and_value``)."""
    params = trainable(model)
    chunk_size = resolve_chunk_size(chunk_size, sum(p.numel() for p in params.values()))
    grad_fn = torch.func.vmap(torch.func.grad_and_value(task.functional_loss(model)), in_dims=(None, 0))
    out, losses = [], []
    with evaluating(model):
        for part in chunks(batch, chunk_size):
            grads, loss = grad_fn(params, part)
            flat = torch.cat([grads[k].reshape(grads[k].shape[0], -1) for k in params], dim=1)
            out.append(sketch(flat) if sketch is not None else flat)
            losses.append(loss.detach().reshape(-1))
    return torch.cat(out).to(torch.float32), torch.cat(losses).to(torch.float64)


def per_example_grads(
    task: Task, model: nn.Module, batch: Batch, chunk_size: int | str = "auto", sketch: CountSketch | None = None
) -> torch.Tensor:
    """Gradients (N, D) of each example's loss w.r.t. all parameters, or (N, k) sketched chunk by chunk."""
    return per_example_grads_and_losses(task, model, batch, chunk_size, sketch)[0]


@dataclass(frozen=True)
class GradientSpace:
    """How gradients are taken: the projection (or none) and the chunk size."""

    sketch: CountSketch | None
    proj_dim: int | None
    chunk_size: int

    @classmethod
    def for_model(
        cls, model: nn.Module, proj_dim: int | str | None, seed: int, chunk_size: int | str
    ) -> "GradientSpace":
        n_params = sum(p.numel() for p in trainable(model).values())
        dim = resolve_proj_dim(proj_dim, n_params)
        sketch = None if dim is None else CountSketch.make(n_params, dim, seed)
        return cls(sketch, dim, resolve_chunk_size(chunk_size, n_params))

    def grads(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.grads_and_losses(task, model, batch)[0]

    def grads_and_losses(self, task: Task, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return per_example_grads_and_losses(task, model, batch, self.chunk_size, self.sketch)


_cache: "OrderedDict[tuple, tuple[weakref.ref, weakref.ref, torch.Tensor, torch.Tensor, float]]" = OrderedDict()


def _versions(model: nn.Module) -> tuple:
    return tuple((k, p._version) for k, p in model.named_parameters())


def train_grads(task: Task, model: nn.Module, space: GradientSpace, seed: int) -> tuple[torch.Tensor, float]:
    """Training-set gradients of ``model`` in ``space`` and the seconds they took when computed."""
    G, _, seconds = train_grads_and_losses(task, model, space, seed)
    return G, seconds


def train_grads_and_losses(task: Task, model: nn.Module, space: GradientSpace,
                           seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Training-set gradients and losses of ``model`` in ``space``, and the seconds they took when computed.

    Cached per (live task, live model, parameter versions, projection, chunk size): an in-place
    change of the parameters (``load_state_dict``, an optimizer step) bumps their versions, and a
    dead model's entry can never match a new one at the same address.
    """
    key = (id(task), id(model), _versions(model), space.proj_dim, seed, space.chunk_size)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is task and hit[1]() is model:
        _cache.move_to_end(key)
        return hit[2], hit[3], hit[4]
    start = time.perf_counter()
    G, losses = space.grads_and_losses(task, model, task.train_batch(None))
    seconds = time.perf_counter() - start
    _cache[key] = (weakref.ref(task), weakref.ref(model), G, losses, seconds)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return G, losses, seconds


def clear_cache() -> None:
    """Drop the cached training-set gradients (frees their memory)."""
    _cache.clear()


# --- methods -----------------------------------------------------------------------------------


def _settings(space: GradientSpace, proj_dim: int | str | None, seed: int, chunk_size: int | str,
              **extra: Any) -> dict[str, Any]:
    """The settings as requested, plus what "auto" resolved to."""
    return {"proj_dim": proj_dim, "seed": seed, "chunk_size": chunk_size, **extra,
            "proj_dim_used": space.proj_dim, "chunk_size_used": space.chunk_size}


def _final_model_grads(task: Task, trained: Trained, split: str, clock: Clock, proj_dim, seed, chunk_size):
    """(G_query, G_train, space) of the final model, with the time booked one-time / per-query."""
    space = GradientSpace.for_model(trained.model, proj_dim, seed, chunk_size)
    G_train, seconds = train_grads(task, trained.model, space, seed)
    clock.add("one_time", seconds)
    with clock("per_query"):
        G_query = space.grads(task, trained.model, task.query_batch(split))
    return G_query, G_train, space


def grad_dot(task: Task, trained: Trained, split: str, proj_dim: int | str | None = "auto", seed: int = 0,
             chunk_size: int | str = "auto") -> MethodResult:
    """score[q, i] = <g_q, g_i> at the final model."""
    clock = Clock()
    G_query, G_train, space = _final_model_grads(task, trained, split, clock, proj_dim, seed, chunk_size)
    with clock("per_query"):
        scores = G_query.double() @ G_train.double().T
    return clock.result(scores, _settings(space, proj_dim, seed, chunk_size))


def _unit_rows(G: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    G = G.double()
    return G / G.norm(dim=1, keepdim=True).clamp_min(eps)


def grad_cos(task: Task, trained: Trained, split: str, proj_dim: int | str | None = "auto", seed: int = 0,
             chunk_size: int | str = "auto") -> MethodResult:
    """score[q, i] = cos(g_q, g_i) at the final model."""
    clock = Clock()
    G_query, G_train, space = _final_model_grads(task, trained, split, clock, proj_dim, seed, chunk_size)
    with clock("one_time"):
        U_train = _unit_rows(G_train)
    with clock("per_query"):
        scores = _unit_rows(G_query) @ U_train.T
    return clock.result(scores, _settings(space, proj_dim, seed, chunk_size))


def tracin(task: Task, trained: Trained, split: str, proj_dim: int | str | None = "auto", seed: int = 0,
           chunk_size: int | str = "auto") -> MethodResult:
    """TracIn-CP: score[q, i] = sum over checkpoints t of lr_t * <g_q(t), g_i(t)>.

    Needs ``trained.checkpoints`` (train the model with ``checkpoints > 0``); the final model
    alone is not used unless it is one of the checkpoints.
    """
    if not trained.checkpoints:
        raise StrideConfigError("tracin needs checkpoints: train the model with task.train(..., checkpoints=k > 0)")
    clock = Clock()
    work = copy.deepcopy(trained.model)
    space = GradientSpace.for_model(work, proj_dim, seed, chunk_size)
    train_batch, query_batch = task.train_batch(None), task.query_batch(split)
    scores = None
    for lr, state in trained.checkpoints:
        work.load_state_dict(state)
        with clock("one_time"):
            G_train = space.grads(task, work, train_batch).double()
        with clock("per_query"):
            part = float(lr) * (space.grads(task, work, query_batch).double() @ G_train.T)
            scores = part if scores is None else scores + part
    return clock.result(scores, _settings(space, proj_dim, seed, chunk_size, checkpoints=len(trained.checkpoints)))


CURVATURES = ("gauss_newton", "trak", "fisher")
_ONE_MINUS_P_FLOOR = 1e-6  # float32 losses below ~1e-7 round to 0; such examples' rows are ~0 anyway


def curvature_weights(losses: torch.Tensor, curvature: str) -> torch.Tensor:
    """Per-example row weights w_i of the curvature features Phi_i = w_i g_i, from the losses.

    With p_i = exp(-loss_i) (the correct-class probability; for a sequence exp of minus its mean
    token loss) and 1 - p_i = -expm1(-loss_i), floored at ``_ONE_MINUS_P_FLOOR``:
    - "gauss_newton": sqrt(p / (1 - p)). For the logistic loss on a linear model g = -(1-p) x and
      the Hessian is p (1-p) x x^T = (p / (1-p)) g g^T: the exact per-example Gauss-Newton (for a
      softmax, exact when the residual sits on one wrong class);
    - "trak": 1 / (1 - p): TRAK's features, the gradients of the margin log(p / (1-p));
    - "fisher": 1 (the empirical Fisher sum g g^T; it under-weights well-fit examples by (1-p)).
    """
    if curvature not in CURVATURES:
        raise StrideConfigError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    losses = losses.to(torch.float64).clamp_min(0.0)
    if curvature == "fisher":
        return torch.ones_like(losses)
    one_minus_p = (-torch.expm1(-losses)).clamp_min(_ONE_MINUS_P_FLOOR)
    if curvature == "trak":
        return 1.0 / one_minus_p
    return (torch.exp(-losses) / one_minus_p).sqrt()


def logra(task: Task, trained: Trained, split: str, damping: float = 1.0, proj_dim: int | str | None = "auto",
          seed: int = 0, chunk_size: int | str = "auto", curvature: str = "gauss_newton") -> MethodResult:
    """Projected-gradient influence function: scores = G_q (Phi^T Phi + lambda I)^-1 G_train^T.

    G (n, k) are the (CountSketch-projected, or exact) loss gradients of all parameters at the final
    model; the curvature features are Phi_i = w_i G_i with the weights of ``curvature_weights``
    (default "gauss_newton": w = sqrt(p / (1-p)), the Gauss-Newton of the cross-entropy per
    example; "trak" gives TRAK's margin-gradient curvature, "fisher" the empirical Fisher of the
    version before issue 10). lambda = damping * trace(Phi^T Phi) / min(n, k): damping is relative
    to the mean *nonzero* eigenvalue (at most min(n, k) of them); the older trace / k made the
    grid's 1.0 a 7-14x smaller ridge whenever n < k, below every optimum measured.
    When n < k the scores come from the kernel form (Woodbury)
    (Phi^T Phi + lambda I)^-1 = (I - Phi^T (Phi Phi^T + lambda I)^-1 Phi) / lambda; with
    Phi = diag(w) G only the n x n Gram G G^T is needed, and (Phi Phi^T + lambda I)^-1 Phi G^T is
    one-time, so a query costs its n inner products <g_q, g_i> and an n x n product.
    It is TRAK-like (one model, projected gradients, a Gauss-Newton-type curvature, no ensemble);
    ``curvature="trak"`` is TRAK's estimator up to a per-query scale (but with a CountSketch). Best damping on validation (benchmarks/notes_logra.md): about
    0.3-10 (digits 1, breast cancer 10, wine 1, iris 0.3, pydoc-gpt quick 1-3); tune it there.
    """
    if curvature not in CURVATURES:
        raise StrideConfigError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    clock = Clock()
    space = GradientSpace.for_model(trained.model, proj_dim, seed, chunk_size)
    G_train, losses, seconds = train_grads_and_losses(task, trained.model, space, seed)
    clock.add("one_time", seconds)
    with clock("per_query"):
        G_query = space.grads(task, trained.model, task.query_batch(split))
    n, k = G_train.shape
    G = G_train.double()
    with clock("one_time"):
        w = curvature_weights(losses, curvature)
        kernel = n < k
        if kernel:  # Phi = diag(w) G: one n x n Gram G G^T gives Phi Phi^T and Phi G^T
            GG = G @ G.T
            solver = DampedSolver.fit(w[:, None] * GG * w[None, :], damping)  # mean eigenvalue over n
            if solver.lam <= 0:
                raise StrideConfigError("logra in kernel form (n < k parameters) needs damping > 0")
            M = solver.solve(w[:, None] * GG)  # (Phi Phi^T + lambda I)^-1 Phi G^T
        else:
            Phi = G * w[:, None]
            solver = DampedSolver.fit(Phi.T @ Phi, damping)  # mean eigenvalue over k
    with clock("per_query"):
        Gq = G_query.double()
        if kernel:
            S = Gq @ G.T
            scores = (S - (S * w[None, :]) @ M) / solver.lam
        else:
            scores = solver.solve(Gq.T).T @ G.T
    return clock.result(scores, _settings(space, proj_dim, seed, chunk_size, damping=damping, curvature=curvature),
                        lam=solver.lam, form="kernel" if kernel else "primal")
