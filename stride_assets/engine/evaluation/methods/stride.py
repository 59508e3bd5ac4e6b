"""STRIDE as a method of the quality harness (the same ``cache`` / ``attribute`` interface as every
baseline), running the engine's facade (``engine/stride.py``) on any ``Task``.

One-time cost (``cache``): caching features, drawing the design, training the operators.
Per-query cost (``attribute``): measuring the split and the Lasso. ``attribute`` takes recovery
settings as its option (e.g. ``lambda_ratio``): the responses of a split are measured once and
re-decoded, which is how lambda is chosen on validation retrains without retraining operators.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from stride_assets.engine.config import StrideConfig
from stride_assets.engine.design import SubsetDesign, draw_design
from stride_assets.engine.evaluation.methods.base import MethodResult
from stride_assets.engine.evaluation.task import Task, Trained
from stride_assets.engine.operators import OperatorBank, top_direction_energy
from stride_assets.engine.stride import Stride
from stride_assets.engine.training import TrainLog


class StrideMethod:
    """STRIDE with the settings of ``config`` (design, operators, training, measure, recovery)."""

    def __init__(self, config: StrideConfig | None = None, log: Callable[[str], None] = lambda _: None):
        self.config = config or StrideConfig()
        self.log = log
        self.stride: Stride | None = None
        self.design: SubsetDesign | None = None
        self.bank: OperatorBank | None = None
        self.trainlog: TrainLog | None = None
        self._task: Task | None = None
        self._responses: dict[str, tuple[np.ndarray, float]] = {}

    def cache(self, task: Task, trained: Trained) -> None:
        """Draw the design and train the operator bank on the task's training set."""
        cfg = self.config
        self.stride = Stride(task.site(trained.model, cfg.operators.form, cfg.operators.layer), cfg)
        batch = task.train_batch()
        feats = self.stride.cache_features(batch)
        with self.stride.phase("fit"):
            self.design = draw_design(task.n, cfg.design.K, cfg.design.d, cfg.design.seed)
        self.bank, self.trainlog = self.stride.fit_operators(feats, batch, self.design, self.log)
        self._task, self._responses = task, {}

    @property
    def one_time_seconds(self) -> float:
        return self.stride.seconds["cache"] + self.stride.seconds["fit"] if self.stride else 0.0

    def responses(self, split: str) -> tuple[np.ndarray, float]:
        """The (Q, K) responses of a query split (measured once) and the seconds they took."""
        if split not in self._responses:
            before = self.stride.seconds["measure"]
            Y = self.stride.measure(self.bank, self._task.query_batch(split))
            self._responses[split] = (Y, self.stride.seconds["measure"] - before)
        return self._responses[split]

    def decode(self, Y: np.ndarray, **option: Any) -> tuple[np.ndarray, float]:
        """Dense (Q, n) influence from responses with the recovery settings updated by ``option``."""
        before = self.stride.seconds["recover"]
        rec = self.stride.recover(Y, self.design.membership, self.config.recovery.model_copy(update=option))
        return rec.influence.toarray(), self.stride.seconds["recover"] - before

    def attribute(self, split: str, **option: Any) -> MethodResult:
        if self.stride is None:
            raise RuntimeError("StrideMethod: call cache(task, trained) before attribute")
        Y, measure_s = self.responses(split)
        scores, decode_s = self.decode(Y, **option)
        rows = self.trainlog.rows
        info = {"diagnostics": {"top_direction_energy": top_direction_energy(self.bank)},
                "final_losses": {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}}
        return MethodResult(scores, self.one_time_seconds, (measure_s + decode_s) / max(1, Y.shape[0]),
                            {**self.config.recovery.model_dump(), **option}, info)


class StrideSweep:
    """STRIDE trained once per config of ``configs`` (label -> StrideConfig; e.g. one per damping weight): the
    option ``variant`` picks the config, the rest goes to its recovery, so a training setting is chosen on the
    validation draw like lambda. Its one-time cost is every variant's, since choosing needs them all."""

    def __init__(self, configs: dict[str, StrideConfig], log: Callable[[str], None] = lambda _: None):
        if not configs:
            raise ValueError("StrideSweep needs at least one config")
        self.runs = {label: StrideMethod(config, log) for label, config in configs.items()}

    def cache(self, task: Task, trained: Trained) -> None:
        for run in self.runs.values():
            run.cache(task, trained)

    def attribute(self, split: str, variant: str | None = None, **option: Any) -> MethodResult:
        label = next(iter(self.runs)) if variant is None else variant
        if label not in self.runs:
            raise ValueError(f"unknown STRIDE variant {label!r}; have {sorted(self.runs)}")
        res = self.runs[label].attribute(split, **option)
        res.one_time_seconds = sum(run.one_time_seconds for run in self.runs.values())
        res.settings = {"variant": label, **res.settings}
        return res
