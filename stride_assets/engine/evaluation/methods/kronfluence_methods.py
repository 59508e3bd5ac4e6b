"""Kronfluence's influence functions (EK-FAC, KFAC, diagonal) as harness methods, over ``engine.ekfac``.

``cache`` fits the factors on the task's training set (one-time cost); ``attribute(split, damping=...)``
scores a query split (per-query cost), so damping is chosen on the validation draw without refitting.
Every ``nn.Linear`` layer is tracked, the output head included (on pydoc-gpt leaving the tied head out
lowered EK-FAC's LDS from 0.650 to 0.506: ``../shared/docs/peers.md``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stride_assets.engine.evaluation.methods.base import Clock, MethodResult
from stride_assets.engine.evaluation.task import Task, Trained

# None: Kronfluence's heuristic (0.1 x mean eigenvalue); 1e-8 its default
DAMPING_GRID = [{"damping": d} for d in (None, 1e-8, 1e-3, 1e-1)]


def objective_of(task: Task):
    from stride_assets.engine.ekfac import classifier_objective, lm_objective

    return lm_objective if task.kind == "lm" else classifier_objective


class KronfluenceMethod:
    """One Kronfluence strategy on one task; its factors live in a temporary folder while it exists."""

    def __init__(self, strategy: str = "ekfac", include_head: bool = True, damping: float | None = None,
                 seed: int = 0):
        self.strategy, self.include_head, self.damping, self.seed = strategy, include_head, damping, seed
        self.clock = Clock()
        self._influence = None
        self._task: Task | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=f"kronfluence_{strategy}_")
        self._factors = Path(self._tmp.name) / "factors"

    def cache(self, task: Task, trained: Trained) -> None:
        from stride_assets.engine.ekfac import Influence

        with self.clock("one_time"):
            self._influence = Influence(trained.model, objective_of(task), strategy=self.strategy,
                                        include_head=self.include_head, seed=self.seed)
            self._influence.fit(task.train_batch(), into=self._factors)
        self._task = task

    def attribute(self, split: str, **option: Any) -> MethodResult:
        if self._influence is None:
            raise RuntimeError("KronfluenceMethod: call cache(task, trained) before attribute")
        damping = option.get("damping", self.damping)
        self.clock.seconds["per_query"] = 0.0
        with self.clock("per_query"):
            scores = self._influence.scores(self._task.query_batch(split), self._task.train_batch(), self._factors,
                                            damping=damping)
        return self.clock.result(scores, {"strategy": self.strategy, "include_head": self.include_head,
                                          "damping": damping})
