"""Checks on stage results: operators that collapsed or ignore their members, scores that are not
finite or all zero, an empty curated dataset. A check reads the result of the block it checks
(so a partitioned stage is checked per partition); the Dagster layer emits the outcome with the
materialization, and a failed blocking check stops what is downstream of that block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from stride_assets.engine.result import StageResult

MAX_TOP_DIRECTION_ENERGY = 0.9  # above: the operator bank collapsed onto one direction
MIN_NONZERO_PER_QUERY = 1.0  # on average, each query should have at least one attributed example


@dataclass
class Outcome:
    """A check's verdict on one result."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    evaluate: Callable[[StageResult, Any], Outcome]  # (result, the stage's config) -> outcome
    blocking: bool = False  # a failure stops the stages downstream of the block
    warn: bool = False  # a failure is a warning, not an error


def _missing(result: StageResult, *keys: str) -> Outcome | None:
    absent = [k for k in keys if k not in result.metadata]
    if absent:
        return Outcome(False, description=f"{result.stage} result lacks metadata {', '.join(absent)}")
    return None


def _partition(result: StageResult) -> dict[str, Any]:
    return {k: result.metadata[k] for k in ("shard", "batch") if k in result.metadata}


def _not_collapsed(result: StageResult, _cfg: Any) -> Outcome:
    if missing := _missing(result, "top_direction_energy"):
        return missing
    energy = float(result.metadata["top_direction_energy"])
    return Outcome(energy < MAX_TOP_DIRECTION_ENERGY, {**_partition(result), "top_direction_energy": energy,
                                                       "threshold": MAX_TOP_DIRECTION_ENERGY})


def _favour_members(result: StageResult, _cfg: Any) -> Outcome:
    if missing := _missing(result, "member_gap_z"):
        return missing
    gap = float(result.metadata["member_gap_z"])
    return Outcome(gap > 0, {**_partition(result), "member_gap_z": gap})


def _scores_usable(result: StageResult, _cfg: Any) -> Outcome:
    if missing := _missing(result, "queries", "nonzero", "non_finite"):
        return missing
    queries, nonzero, non_finite = (int(result.metadata[k]) for k in ("queries", "nonzero", "non_finite"))
    per_query = nonzero / queries if queries else 0.0
    return Outcome(queries > 0 and non_finite == 0 and per_query >= MIN_NONZERO_PER_QUERY,
                   {**_partition(result), "queries": queries, "non_finite": non_finite, "nonzero": nonzero,
                    "nonzero_per_query": per_query})


def _not_empty(result: StageResult, _cfg: Any) -> Outcome:
    if missing := _missing(result, "rows"):
        return missing
    kept = int(result.metadata["rows"])
    return Outcome(kept > 0, {"kept": kept})


operators_not_collapsed = Check(
    "operators_not_collapsed",
    f"The operator bank has not collapsed: its top direction carries < {MAX_TOP_DIRECTION_ENERGY} of the energy.",
    _not_collapsed, blocking=True)
operators_favour_members = Check(
    "operators_favour_members",
    "Operators favour their own members: member_gap_z (member minus non-member response, in std units) > 0.",
    _favour_members, warn=True)
influence_scores_usable = Check(
    "influence_scores_usable",
    f"Scores are finite and each query has at least {MIN_NONZERO_PER_QUERY:g} non-zero score on average.",
    _scores_usable, blocking=True)
curated_dataset_not_empty = Check(
    "curated_dataset_not_empty", "The curated dataset keeps at least one example.", _not_empty)
