"""Calibration of influence scores on a few real retrains: one gain per training example.

Any method's scores s (queries x n) predict a retrained model's outcome on query q as the sum of
s[q, i] over the examples it was trained on. Given J models really retrained on subsets X (J x n,
bool) and their losses on some queries (J x Q), a calibration fits, per training example i, a gain
c_i shared by every query,

    s'[q, i] = c_i * s[q, i] / sd_q        (sd_q: the spread of query q's scores over the examples)

so that, for each calibration query, sum_{i in S_j} s'[q, i] follows -loss_j(q) up to a per-query
scale (LDS is a per-query rank correlation: only the shape across subsets counts). The gains repair
examples whose influence a method over- or under-states on every query. They are shrunk to 1 by a
ridge penalty chosen by cross-validation over the retrains (held-out subsets, the calibration
queries), and "no calibration" is among the choices, so a calibration that does not help on
held-out retrains is not applied.

An LDS of calibrated scores must come from retrains the fit never saw: in the benchmark harness the
fit uses the validation draw (``Protocol.m_val`` retrains, the validation queries) and the test draw
scores the result. The price is those retrains: J models trained on J subsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stride_assets.engine.evaluation.lds import lds

RIDGE_GRID = (1.0, 10.0, 100.0, 1000.0)  # the penalty on (c_i - 1)^2, against standardised residuals
ALTERNATIONS = 3  # rounds of per-query scale <-> gains least squares
MIN_RETRAINS = 4


@dataclass(frozen=True)
class Calibration:
    """Per-example gains (n,), the ridge they were fitted with (None: the identity won the
    cross-validation) and the cross-validated LDS of every choice."""

    gains: np.ndarray
    ridge: float | None = None
    cv_lds: dict[str, float] = field(default_factory=dict)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated scores of any queries (Q, n)."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != self.gains.shape[0]:
            raise ValueError(f"scores of shape {scores.shape}, calibration for {self.gains.shape[0]} examples")
        return self.gains * _unit_spread(scores, axis=1)

    def as_dict(self) -> dict:
        g = self.gains
        return {"ridge": self.ridge, "cv_lds": self.cv_lds, "gain_min": float(g.min()), "gain_max": float(g.max()),
                "gain_std": float(g.std())}


def _unit_spread(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` divided by its std along ``axis`` (left as it is where that std is 0)."""
    sd = x.std(axis=axis, keepdims=True)
    return x / np.where(sd > 0, sd, 1.0)


def _checked(scores, subsets, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, losses = np.asarray(scores, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=bool)
    if scores.ndim != 2 or subsets.ndim != 2 or subsets.shape[1] != scores.shape[1]:
        raise ValueError(f"subsets of shape {subsets.shape} and scores of shape {scores.shape}: "
                         "both must be 2-D over the same n examples")
    if losses.shape != (subsets.shape[0], scores.shape[0]):
        raise ValueError(f"losses of shape {losses.shape}, expected (retrains={subsets.shape[0]}, "
                         f"queries={scores.shape[0]})")
    if subsets.shape[0] < MIN_RETRAINS:
        raise ValueError(f"calibration needs at least {MIN_RETRAINS} retrains, got {subsets.shape[0]}")
    if not (np.isfinite(losses).all() and np.isfinite(scores).all()):
        raise ValueError("calibration needs finite scores and losses (NaN or inf given)")
    return scores, subsets, losses


def fit(scores, subsets, losses, ridge: float) -> Calibration:
    """Gains for ``scores`` (Q, n) from retrains on ``subsets`` (J, n) with query ``losses`` (J, Q)."""
    scores, subsets, losses = _checked(scores, subsets, losses)
    s = _unit_spread(scores, axis=1)
    X = subsets.astype(np.float64)
    Xc = X - X.mean(0)  # a constant over the retrains is free (each query's intercept)
    t = _unit_spread(-(losses - losses.mean(0)), axis=0)  # (J, Q): every query counts alike
    n = s.shape[1]
    gains = np.ones(n)
    for _ in range(ALTERNATIONS):
        pred = Xc @ (gains * s).T  # (J, Q)
        scale = (pred * t).sum(0) / np.maximum((pred**2).sum(0), 1e-12)  # each query's least-squares scale
        # row (j, q): scale_q * sum_i Xc[j, i] s[q, i] c_i  ~  t[j, q]
        F = (scale[None, :, None] * Xc[:, None, :] * s[None, :, :]).reshape(-1, n)
        gains = np.linalg.solve(F.T @ F + ridge * np.eye(n), F.T @ t.ravel() + ridge)
    return Calibration(gains, ridge)


def choose(scores, subsets, losses, grid=RIDGE_GRID, folds: int = 3, seed: int = 0) -> Calibration:
    """The ridge of ``grid``, or none, with the best mean LDS on held-out retrains over ``folds`` folds of
    the subsets, refitted on all of them."""
    scores, subsets, losses = _checked(scores, subsets, losses)
    fold = np.random.default_rng(seed).permutation(subsets.shape[0]) % folds
    results: dict[str, float] = {}
    for ridge in (None, *grid):
        values = []
        for f in range(folds):
            train, held = fold != f, fold == f
            gains = np.ones(scores.shape[1]) if ridge is None else fit(
                scores, subsets[train], losses[train], ridge).gains
            values.append(lds(Calibration(gains).apply(scores), subsets[held], losses[held]).mean)
        results["none" if ridge is None else f"{ridge:g}"] = float(np.nanmean(values))
    best = max(results, key=results.get)
    if best == "none":
        return Calibration(np.ones(scores.shape[1]), None, results)
    return Calibration(fit(scores, subsets, losses, float(best)).gains, float(best), results)
