"""STRIDE as a method of the quality harness: the engine's own pieces run on any ``Task``.

design -> operators trained on cached features -> responses of the queries -> Lasso.
One-time cost: caching features, drawing the design, training the operators. Per-query cost:
measurement and recovery. ``recover_variants`` re-decodes the same responses with other
lambdas, which is how lambda is chosen on validation retrains without retraining operators.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stride_assets.engine.backbone import encode_all
from stride_assets.engine.config import DesignConfig, MeasureConfig, OperatorConfig, RecoveryConfig, TrainConfig
from stride_assets.engine.design import SubsetDesign, draw_design
from stride_assets.engine.evaluation.task import Task, Trained
from stride_assets.engine.measure import responses
from stride_assets.engine.operators import OperatorBank, top_direction_energy
from stride_assets.engine.recovery import recover
from stride_assets.engine.training import TrainLog, train_operators


class StrideSettings(BaseModel):
    """Everything STRIDE needs besides the data and the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    design: DesignConfig = Field(default_factory=DesignConfig)
    operators: OperatorConfig = Field(default_factory=OperatorConfig)
    training: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)

    def with_(self, **sections: dict) -> "StrideSettings":
        """A copy with some fields of some sections replaced, e.g. with_(design={"K": 128})."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name].update(values)
        return StrideSettings.model_validate(data)


@dataclass
class StrideFit:
    """Trained operators on a task, ready to measure any query split."""

    settings: StrideSettings
    design: SubsetDesign
    bank: OperatorBank
    site: object
    log: TrainLog
    one_time_seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)


def fit(task: Task, trained: Trained, settings: StrideSettings, log: Callable[[str], None] = lambda _: None) -> StrideFit:
    """Draw the design and train the operator bank on the task's training set."""
    start = time.perf_counter()
    site = task.site(trained.model, settings.operators.form, settings.operators.layer)
    batch = task.train_batch()
    feats = encode_all(site, batch)
    design = draw_design(task.n, settings.design.K, settings.design.d, settings.design.seed)
    oc = settings.operators
    bank = OperatorBank(design.K, site.in_dim, site.out_dim, oc.rank, oc.basis, oc.mlp_hidden, oc.init_scale,
                        settings.training.seed)
    bank.set_feature_stats(feats, batch.get("attention_mask"))
    trainlog = train_operators(site, bank, feats, batch, design, settings.training, log)
    return StrideFit(settings, design, bank, site, trainlog, time.perf_counter() - start,
                     {"top_direction_energy": top_direction_energy(bank)})


def measure(task: Task, fitted: StrideFit, split: str) -> tuple[np.ndarray, float]:
    """Responses (Q, K) of one query split and the seconds they took."""
    mc = fitted.settings.measure
    start = time.perf_counter()
    Y = responses(fitted.site, fitted.bank, task.query_batch(split), mc.mode, mc.query_batch, mc.operator_chunk)
    return Y, time.perf_counter() - start


def decode(Y: np.ndarray, fitted: StrideFit, recovery: RecoveryConfig | None = None) -> tuple[np.ndarray, float]:
    """Dense (Q, n) influence from responses, and the seconds the Lasso took."""
    start = time.perf_counter()
    rec = recover(Y, fitted.design.membership, recovery or fitted.settings.recovery)
    return rec.influence.toarray(), time.perf_counter() - start
