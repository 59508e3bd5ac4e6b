"""The one interface of every attribution method (``AttributionMethod``: ``cache`` once, then
``attribute`` a query split), what it returns, and the small pieces the baselines share (timing,
batching, damped solves).

Sign convention (as everywhere in the harness): ``scores[q, i] > 0`` means that training on
example ``i`` *lowers* the loss of query ``q``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from stride_assets.engine.backbone import Batch
from stride_assets.engine.errors import StrideConfigError, StrideNumericalError
from stride_assets.engine.stride import accumulate


@dataclass
class MethodResult:
    """Scores (Q, n) of one method on one query split, with its cost split into two parts.

    ``one_time_seconds``: work that does not depend on the queries (training-set gradients,
    projections, Hessians, fits, extra models). ``per_query_seconds``: the query-dependent work
    divided by the number of queries.
    """

    scores: np.ndarray
    one_time_seconds: float
    per_query_seconds: float
    settings: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


class AttributionMethod(Protocol):
    """One attribution method on one task (dattri's ``cache`` / ``attribute``).

    ``cache`` does the query-independent work once (features, operators, gradients of the training
    set, ...); ``attribute`` scores one query split. ``option`` holds the settings a method may
    choose on the validation draw without redoing ``cache`` (e.g. STRIDE's Lasso lambda).
    """

    def cache(self, task: Any, trained: Any) -> None: ...

    def attribute(self, split: str, **option: Any) -> MethodResult: ...


@dataclass
class FunctionMethod:
    """A method written as one function ``fn(task, trained, split, **settings) -> MethodResult``
    (every baseline): ``cache`` keeps the task and model, ``attribute`` calls the function."""

    fn: Callable[..., MethodResult]
    settings: dict[str, Any] = field(default_factory=dict)
    _cached: tuple[Any, Any] | None = None

    def cache(self, task: Any, trained: Any) -> None:
        self._cached = (task, trained)

    def attribute(self, split: str, **option: Any) -> MethodResult:
        if self._cached is None:
            raise RuntimeError(f"{self.fn.__name__}: call cache(task, trained) before attribute")
        task, trained = self._cached
        return self.fn(task, trained, split, **{**self.settings, **option})


class Clock:
    """Accumulates wall seconds under two keys, ``one_time`` and ``per_query``."""

    def __init__(self) -> None:
        self.seconds = {"one_time": 0.0, "per_query": 0.0}

    def __call__(self, key: str):
        """A block timed into ``seconds[key]``."""
        return accumulate(self.seconds, key)

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] += float(seconds)

    def result(self, scores: np.ndarray | torch.Tensor, settings: dict[str, Any], **info: Any) -> MethodResult:
        if isinstance(scores, torch.Tensor):
            scores = scores.detach().cpu().numpy()
        scores = np.asarray(scores, dtype=np.float64)
        n_queries = max(1, scores.shape[0])
        per_query = self.seconds["per_query"] / n_queries
        return MethodResult(scores, self.seconds["one_time"], per_query, dict(settings), info)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) for the duration of the block; its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def batch_len(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def chunks(batch: Batch, size: int) -> Iterator[Batch]:
    """Consecutive slices of at most ``size`` examples of every tensor of a batch."""
    if size < 1:
        raise StrideConfigError(f"chunk_size must be >= 1, got {size}")
    n = batch_len(batch)
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in batch.items()}


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (tied ones once), detached: the point where gradients are taken.

    ``requires_grad`` is ignored on purpose: trained models come back frozen (``lm.train_lm``
    turns it off), yet all their parameters were trained.
    """
    return {k: p.detach() for k, p in model.named_parameters()}


def weight_decay_of(task: object) -> float:
    """The L2 coefficient of the task's training objective (wd/2 ||theta||^2), 0 if not exposed."""
    for owner in (task, getattr(task, "recipe", None)):
        value = getattr(owner, "weight_decay", None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


@dataclass
class DampedSolver:
    """Cholesky factor of A + lambda I, lambda = damping * mean eigenvalue of A (trace / size).

    ``size`` defaults to A's order; a kernel (n x n) form of a k x k problem passes k.
    """

    factor: torch.Tensor
    lam: float

    @classmethod
    def fit(cls, A: torch.Tensor, damping: float, size: int | None = None) -> "DampedSolver":
        if damping < 0:
            raise StrideConfigError(f"damping must be >= 0, got {damping}")
        A = A.to(torch.float64)
        lam = float(damping) * float(torch.trace(A)) / (size or A.shape[0])
        factor, info = torch.linalg.cholesky_ex(A + lam * torch.eye(A.shape[0], dtype=A.dtype))
        if int(info) != 0:
            raise StrideNumericalError(
                f"matrix of size {A.shape[0]} is not positive definite at damping {damping}; raise damping"
            )
        return cls(factor, lam)

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """(A + lambda I)^-1 B for B (size, k)."""
        return torch.cholesky_solve(B.to(torch.float64), self.factor)
