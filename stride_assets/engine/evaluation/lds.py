"""Linear datamodeling score (LDS): does a method's additive prediction rank retrained outcomes?

For query q and evaluation subsets S_1..S_m (models really retrained on each), LDS(q) is the
Spearman correlation across j between sum_{i in S_j} score[q, i] and -loss_j(q): positive
scores mean "training on i lowers q's loss", so a larger predicted sum should mean a lower loss.
The subsets are the *kept* sets, random halves or all-but-a-small-block (leave-out, as Bergson's
``validate``): for those, the sum over the kept set is a constant minus the sum over the block, so
the same score is the Spearman between the predicted effect of removing the block and the loss.
Queries whose correlation is undefined (constant prediction or target) are NaN; they are
counted and reported, never silently dropped from the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata


@dataclass(frozen=True)
class LDS:
    per_query: np.ndarray  # (Q,), NaN where undefined

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.per_query)) if self.n_valid else float("nan")

    @property
    def std(self) -> float:
        return float(np.nanstd(self.per_query)) if self.n_valid else float("nan")

    @property
    def n_nan(self) -> int:
        return int(np.isnan(self.per_query).sum())

    @property
    def n_valid(self) -> int:
        return int((~np.isnan(self.per_query)).sum())

    def as_dict(self) -> dict[str, float | int]:
        return {"lds_mean": self.mean, "lds_std": self.std, "n_nan": self.n_nan, "n_queries": len(self.per_query)}


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching columns of a and b (m, Q) -> (Q,), NaN if a column is constant."""
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(axis=0)
    rb = rb - rb.mean(axis=0)
    denom = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ra * rb).sum(axis=0) / denom
    out[denom <= 1e-12] = np.nan
    return out


def predicted_sums(scores: np.ndarray | sp.spmatrix, subsets: np.ndarray) -> np.ndarray:
    """sum_{i in S_j} score[q, i] for every subset j and query q: (m, Q)."""
    S = subsets.astype(np.float64)
    if sp.issparse(scores):
        return np.asarray(sp.csr_matrix(scores) @ S.T).T
    return S @ np.asarray(scores, dtype=np.float64).T


def lds(scores: np.ndarray | sp.spmatrix, subsets: np.ndarray, losses: np.ndarray) -> LDS:
    """scores (Q, n), subsets (m, n) bool, retrained losses (m, Q) -> per-query LDS."""
    subsets = np.asarray(subsets, dtype=bool)
    losses = np.asarray(losses, dtype=np.float64)
    if subsets.shape[0] != losses.shape[0]:
        raise ValueError(f"{subsets.shape[0]} subsets but losses for {losses.shape[0]}")
    if scores.shape != (losses.shape[1], subsets.shape[1]):
        raise ValueError(f"scores {scores.shape} must be (queries={losses.shape[1]}, n={subsets.shape[1]})")
    return LDS(_spearman_columns(predicted_sums(scores, subsets), -losses))


def seed_agreement(losses_a: np.ndarray, losses_b: np.ndarray) -> LDS:
    """Noise ceiling: per query, Spearman across subsets between two retraining seeds' losses."""
    return LDS(_spearman_columns(np.asarray(losses_a, dtype=np.float64), np.asarray(losses_b, dtype=np.float64)))
