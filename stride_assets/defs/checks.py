"""Asset checks on the stage outputs: operators that collapsed or ignore their members, scores
that are not finite or all zero, an empty curated dataset.

The operator diagnostics exist only as engine metadata of the latest materialization; influence
scores and the curated dataset are read back from the store. Blocking checks stop the rest of the
run when they fail, so nothing is attributed with broken operators or curated from broken scores.
"""

from typing import Any

import dagster as dg
import polars as pl
from dagster._core.errors import DagsterInvalidPropertyError

from stride_assets.engine.datasets_out import read_current
from stride_assets.engine.shards import DEFAULT_BATCH
from stride_assets.resources import StrideResource

MAX_TOP_DIRECTION_ENERGY = 0.9  # above: the operator bank collapsed onto one direction
MIN_NONZERO_PER_QUERY = 1.0  # on average, each query should have at least one attributed example


def latest_metadata(context: dg.AssetCheckExecutionContext, asset: str) -> dict[str, Any]:
    """The raw metadata values of the asset's latest materialization ({} if there is none)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def run_partition(context: dg.AssetCheckExecutionContext, default: str) -> str:
    """The partition key of the run the check belongs to (``default`` outside a partitioned run)."""
    try:
        return context.run.tags.get("dagster/partition") or default
    except DagsterInvalidPropertyError:  # a check context built outside a run (tests, notebooks)
        return default


def _missing(keys: list[str], asset: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False, description=f"{asset} materialization lacks metadata {', '.join(keys)}"
    )


@dg.asset_check(
    asset="steering_operators",
    blocking=True,
    description=f"The operator bank has not collapsed: its top direction carries < {MAX_TOP_DIRECTION_ENERGY} "
    "of the energy.",
)
def operators_not_collapsed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    meta = latest_metadata(context, "steering_operators")
    if "top_direction_energy" not in meta:
        return _missing(["top_direction_energy"], "steering_operators")
    energy = float(meta["top_direction_energy"])
    return dg.AssetCheckResult(
        passed=energy < MAX_TOP_DIRECTION_ENERGY,
        metadata={"top_direction_energy": energy, "threshold": MAX_TOP_DIRECTION_ENERGY},
    )


@dg.asset_check(
    asset="steering_operators",
    description="Operators favour their own members: member_gap_z (member minus non-member response, "
    "in std units) > 0.",
)
def operators_favour_members(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    meta = latest_metadata(context, "steering_operators")
    if "member_gap_z" not in meta:
        return _missing(["member_gap_z"], "steering_operators")
    gap = float(meta["member_gap_z"])
    return dg.AssetCheckResult(
        passed=gap > 0, severity=dg.AssetCheckSeverity.WARN, metadata={"member_gap_z": gap}
    )


@dg.asset_check(
    asset="influence_scores",
    blocking=True,
    description=f"Scores are finite and each query has at least {MIN_NONZERO_PER_QUERY:g} non-zero score "
    "on average.",
)
def influence_scores_usable(context: dg.AssetCheckExecutionContext, stride: StrideResource) -> dg.AssetCheckResult:
    store, batch = stride.store(), run_partition(context, DEFAULT_BATCH)
    scores = pl.read_parquet(store.require("influence_scores", "scores.parquet", batch))
    queries = pl.read_parquet(store.require("influence_scores", "per_query.parquet", batch)).height
    non_finite = int((~scores["score"].is_finite()).sum())
    nonzero = int((scores["score"] != 0).sum())
    per_query = nonzero / queries if queries else 0.0
    return dg.AssetCheckResult(
        passed=queries > 0 and non_finite == 0 and per_query >= MIN_NONZERO_PER_QUERY,
        metadata={"batch": batch, "queries": queries, "non_finite": non_finite, "nonzero": nonzero, "nonzero_per_query": per_query},
    )


@dg.asset_check(asset="curated_dataset", description="The curated dataset keeps at least one example.")
def curated_dataset_not_empty(context: dg.AssetCheckExecutionContext, stride: StrideResource) -> dg.AssetCheckResult:
    kept = read_current(stride.store().stage("curated_dataset"), "keep").height
    return dg.AssetCheckResult(passed=kept > 0, metadata={"kept": kept})
