"""A benchmark task: training data, queries, and the recipe that trains a model on any subset.

Everything that judges attribution quality is written against this protocol: counterfactual
retraining (ground truth), every attribution method (STRIDE and the baselines), and the LDS.
Two families implement it: ``classifier.ClassifierTask`` (an MLP on tabular features, e.g.
scikit-learn's digits) and ``lm_task.LMTask`` (a small GPT-2 on text, e.g. the pydoc corpus).

Conventions
- Examples are addressed by their index 0..n-1 in the training set; ``example_ids`` names them.
- Queries come in two splits: ``"val"`` (used to choose settings) and ``"test"`` (reported).
- A score matrix is (Q, n), float; a positive score means that training on the example
  *lowers* the query's loss. Every method follows this sign.
- Batches are ``dict[str, torch.Tensor]`` with the example axis first; ``take`` slices them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from stride_assets.engine.backbone import Batch, Site


@dataclass
class Trained:
    """A trained model and, for TracIn, the checkpoints along the way with their learning rates."""

    model: nn.Module
    checkpoints: list[tuple[float, dict[str, torch.Tensor]]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. final train loss, seconds


class Task(Protocol):
    name: str
    kind: str  # "classifier" or "lm"
    example_ids: list[str]
    query_ids: dict[str, list[str]]  # split -> ids

    @property
    def n(self) -> int: ...

    def train(self, indices: np.ndarray | None = None, seed: int = 0, checkpoints: int = 0) -> Trained:
        """Train from scratch with the task's recipe on the given training indices (None = all)."""

    def retrain_losses(self, subsets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Query losses of models retrained on each subset: subsets (m, n) bool -> {split: (m, Q)}."""

    def query_losses(self, model: nn.Module, split: str = "test") -> np.ndarray:
        """Per-query loss (Q,) of a model."""

    def train_batch(self, indices: np.ndarray | None = None) -> Batch:
        """Tensors of training examples (all when None)."""

    def query_batch(self, split: str = "test") -> Batch:
        """Tensors of one query split."""

    def example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-example loss (N,) of a model on a batch (differentiable)."""

    def functional_loss(self, model: nn.Module) -> Callable[[dict[str, torch.Tensor], Batch], torch.Tensor]:
        """f(params, batch_of_one) -> scalar loss, for torch.func per-example gradients."""

    def site(self, model: nn.Module, form: str, layer: int | None = None) -> Site:
        """Where STRIDE's operators attach on this task's model."""

    def features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A representation (N, D) for similarity baselines (e.g. mean-pooled last hidden state)."""

    def last_layer(self, model: nn.Module) -> nn.Linear:
        """The final linear layer (the exact last-layer influence function works on it)."""

    def texts(self, split: str | None = None) -> list[str] | None:
        """Raw texts (None split = training examples) for text baselines; None for non-text tasks."""


def draw_subsets(n: int, m: int, fraction: float, seed: int) -> np.ndarray:
    """m random subsets of round(fraction * n) examples each, as a (m, n) bool matrix."""
    rng = np.random.default_rng(seed)
    size = int(round(fraction * n))
    out = np.zeros((m, n), dtype=bool)
    for j in range(m):
        out[j, rng.choice(n, size=size, replace=False)] = True
    return out
