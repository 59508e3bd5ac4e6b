"""Each asset check passes on healthy outputs and fails on broken ones (hand-made, no engine run)."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from stride_assets.defs import checks
from stride_assets.engine.errors import StrideInputError
from stride_assets.resources import StrideResource


@pytest.fixture(scope="module")
def instance():
    """One instance for the module: each test reports its own latest materialization first."""
    with dg.instance_for_test() as inst:
        yield inst


def _report(instance: dg.DagsterInstance, asset: str, **metadata: float) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata=metadata))


def _run(check: dg.AssetChecksDefinition, instance: dg.DagsterInstance, store: Path | None = None) -> dg.AssetCheckResult:
    resources = {"stride": StrideResource(profile="micro", storage_root=str(store))} if store else {}
    return check(dg.build_asset_check_context(instance=instance, resources=resources))


@pytest.mark.parametrize(("energy", "passed"), [(0.35, True), (0.89, True), (0.9, False), (0.99, False)])
def test_operators_not_collapsed(instance: dg.DagsterInstance, energy: float, passed: bool) -> None:
    _report(instance, "steering_operators", top_direction_energy=energy, member_gap_z=1.0)
    result = _run(checks.operators_not_collapsed, instance)
    assert result.passed is passed
    assert result.metadata["top_direction_energy"].value == energy


@pytest.mark.parametrize(("gap", "passed"), [(0.8, True), (0.0, False), (-0.4, False)])
def test_operators_favour_members(instance: dg.DagsterInstance, gap: float, passed: bool) -> None:
    _report(instance, "steering_operators", top_direction_energy=0.2, member_gap_z=gap)
    result = _run(checks.operators_favour_members, instance)
    assert result.passed is passed
    assert result.severity == dg.AssetCheckSeverity.WARN


def test_operator_checks_fail_without_diagnostics(instance: dg.DagsterInstance) -> None:
    with dg.instance_for_test() as fresh:
        assert _run(checks.operators_not_collapsed, fresh).passed is False  # never materialized
    _report(instance, "steering_operators", K=16)
    result = _run(checks.operators_favour_members, instance)
    assert result.passed is False and "member_gap_z" in (result.description or "")


def _write_scores(store: Path, scores: list[float], queries: int) -> None:
    folder = store / "influence_scores" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    query_ids = [f"q{i % queries}" for i in range(len(scores))]
    frame = pl.DataFrame({"query_id": query_ids, "score": scores}, schema={"query_id": pl.String, "score": pl.Float32})
    frame.write_parquet(folder / "scores.parquet")
    pl.DataFrame({"query_id": [f"q{i}" for i in range(queries)]}).write_parquet(folder / "per_query.parquet")


@pytest.mark.parametrize(
    ("scores", "queries", "passed"),
    [
        ([0.5, -0.1, 0.2, 0.3], 3, True),  # 4 non-zero scores over 3 queries
        ([0.5, 0.2], 3, False),  # fewer than one per query
        ([0.5, float("nan"), 0.2, 0.3], 2, False),  # not finite
        ([0.5, float("inf"), 0.2, 0.3], 2, False),
        ([0.0, 0.0, 0.0, 0.0], 2, False),  # all zero
        ([], 0, False),  # no queries at all
    ],
)
def test_influence_scores_usable(
    instance: dg.DagsterInstance, tmp_path: Path, scores: list[float], queries: int, passed: bool
) -> None:
    _write_scores(tmp_path, scores, queries)
    assert _run(checks.influence_scores_usable, instance, tmp_path).passed is passed


def test_influence_check_names_a_missing_artifact(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    with pytest.raises(StrideInputError, match="influence_scores"):
        _run(checks.influence_scores_usable, instance, tmp_path)


@pytest.mark.parametrize(("kept", "passed"), [(["e1", "e2"], True), ([], False)])
def test_curated_dataset_not_empty(instance: dg.DagsterInstance, tmp_path: Path, kept: list[str], passed: bool) -> None:
    from stride_assets.engine.datasets_out import write_dataset

    keep = pl.DataFrame({"example_id": kept}, schema={"example_id": pl.String})
    write_dataset(tmp_path / "curated_dataset", "v1", {"keep": keep, "drop": keep.clear()}, "t", "d")
    result = _run(checks.curated_dataset_not_empty, instance, tmp_path)
    assert result.passed is passed and result.metadata["kept"].value == len(kept)
