"""Subset design: the K x n membership matrix M of a random left-d-regular bipartite graph.

Every training example is placed in exactly ``d`` of ``K`` subsets, chosen uniformly at random
from a seed. With high probability M is an expander, which is what makes sparse (l1)
recovery of per-example influence from K << n subset measurements work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stride_assets.engine.errors import StrideConfigError


@dataclass(frozen=True)
class SubsetDesign:
    """The membership matrix M (K x n, CSR, 0/1 float32) and how it was drawn."""

    membership: sp.csr_matrix
    seed: int

    @property
    def K(self) -> int:
        return self.membership.shape[0]

    @property
    def n(self) -> int:
        return self.membership.shape[1]

    @property
    def d(self) -> int:
        return int(self.membership[:, :1].sum()) if self.n else 0

    def subset_sizes(self) -> np.ndarray:
        return np.asarray(self.membership.sum(axis=1)).ravel().astype(np.int64)

    def members_of(self, example: int) -> np.ndarray:
        """The d subsets that contain one example (sorted)."""
        return self.membership.tocsc()[:, example].indices

    def member_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All (subset, example) member pairs as two int64 arrays (n*d long)."""
        coo = self.membership.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)


def shard_K(K: int, d: int, n: int, shard_size: int) -> int:
    """Subsets for a shard of n examples: K per ``shard_size`` examples, so the subset size
    n*d/K is the same in every shard (a small appended shard gets few operators, a cheap block);
    at least d + 1 (too many for a tiny shard is left to ``validate_design`` to report)."""
    return int(max(d + 1, round(K * n / shard_size)))


def validate_design(n: int, K: int, d: int, note: str = "") -> None:
    """Reject designs that cannot carry information, before any work is done (``note`` ends each message)."""
    if n < 2:
        raise StrideConfigError(f"subset design needs at least 2 training examples, got n={n}{note}")
    if K < 2:
        raise StrideConfigError(f"subset design needs K >= 2 subsets, got K={K}{note}")
    if not 1 <= d < K:
        raise StrideConfigError(
            f"each example must sit in d subsets with 1 <= d < K; got d={d}, K={K} "
            f"(d = K would put every example in every subset and measure nothing){note}"
        )
    if n * d < K:
        raise StrideConfigError(
            f"K={K} is too large for n={n}, d={d}: the expected subset size n*d/K = {n * d / K:.2f} < 1 "
            f"leaves subsets empty; lower K or raise d{note}"
        )


def draw_design(n: int, K: int, d: int, seed: int, chunk: int = 65536) -> SubsetDesign:
    """Place each of n examples in d distinct subsets of K, uniformly at random.

    Deterministic in ``seed``. Draws in chunks of examples so memory stays O(chunk * K)
    even for millions of examples. Redraws (with the next seeds of the same stream) until
    no subset is empty, which only matters when n*d/K is small.
    """
    validate_design(n, K, d)
    rng = np.random.default_rng(seed)
    for _attempt in range(100):
        cols = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            # the d smallest of K uniform keys per example = a uniform random d-subset
            keys = rng.random((m, K), dtype=np.float32)
            cols.append(np.argpartition(keys, d - 1, axis=1)[:, :d])
        rows = np.concatenate(cols).ravel()
        examples = np.repeat(np.arange(n), d)
        membership = sp.csr_matrix(
            (np.ones(n * d, dtype=np.float32), (rows, examples)), shape=(K, n), dtype=np.float32
        )
        membership.sort_indices()
        if (np.diff(membership.indptr) > 0).all():
            return SubsetDesign(membership=membership, seed=seed)
    raise StrideConfigError(f"could not draw a design without empty subsets for n={n}, K={K}, d={d}")
