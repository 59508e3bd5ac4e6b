"""Each check passes on healthy results and fails on broken ones (planted results, no engine run),
and the Dagster layer emits it with the materialization of the partition it checks."""

from pathlib import Path

import dagster as dg
import pytest

from stride_assets.defs.checks import check_results, check_specs
from stride_assets.engine import checks
from stride_assets.engine.registry import StageSpec
from stride_assets.engine.result import StageResult


def _result(stage: str, **metadata) -> StageResult:
    return StageResult(stage=stage, path=Path("."), metadata=metadata)


@pytest.mark.parametrize(("energy", "passed"), [(0.35, True), (0.89, True), (0.9, False), (0.99, False)])
def test_operators_not_collapsed(energy: float, passed: bool) -> None:
    outcome = checks.operators_not_collapsed.evaluate(
        _result("steering_operators", top_direction_energy=energy, member_gap_z=1.0, shard="a"), None)
    assert outcome.passed is passed
    assert outcome.metadata["top_direction_energy"] == energy and outcome.metadata["shard"] == "a"


@pytest.mark.parametrize(("gap", "passed"), [(0.8, True), (0.0, False), (-0.4, False)])
def test_operators_favour_members(gap: float, passed: bool) -> None:
    outcome = checks.operators_favour_members.evaluate(_result("steering_operators", member_gap_z=gap), None)
    assert outcome.passed is passed
    assert checks.operators_favour_members.warn and not checks.operators_favour_members.blocking


def test_checks_fail_without_their_metadata() -> None:
    outcome = checks.operators_favour_members.evaluate(_result("steering_operators", K=16), None)
    assert outcome.passed is False and "member_gap_z" in (outcome.description or "")
    assert checks.influence_scores_usable.evaluate(_result("influence_scores"), None).passed is False


@pytest.mark.parametrize(
    ("queries", "nonzero", "non_finite", "passed"),
    [
        (3, 4, 0, True),  # 4 non-zero scores over 3 queries
        (3, 2, 0, False),  # fewer than one per query
        (2, 4, 1, False),  # not finite
        (2, 0, 0, False),  # all zero
        (0, 0, 0, False),  # no queries at all
    ],
)
def test_influence_scores_usable(queries: int, nonzero: int, non_finite: int, passed: bool) -> None:
    result = _result("influence_scores", queries=queries, nonzero=nonzero, non_finite=non_finite, batch="b1")
    outcome = checks.influence_scores_usable.evaluate(result, None)
    assert outcome.passed is passed and outcome.metadata["batch"] == "b1"


@pytest.mark.parametrize(("kept", "passed"), [(2, True), (0, False)])
def test_curated_dataset_not_empty(kept: int, passed: bool) -> None:
    outcome = checks.curated_dataset_not_empty.evaluate(_result("curated_dataset", rows=kept), None)
    assert outcome.passed is passed and outcome.metadata["kept"] == kept


def test_dagster_emits_each_partition_its_own_check(tmp_path: Path) -> None:
    """A partitioned stage's checks run on each partition's own result, with the real Dagster machinery."""
    energies = {"a": 0.2, "b": 0.95}

    def run(cfg, store, log, shard):
        return _result("steering_operators", top_direction_energy=energies[shard], member_gap_z=1.0, shard=shard)

    spec = StageSpec("steering_operators", run, keys=("shard",),
                     checks=(checks.operators_not_collapsed, checks.operators_favour_members))
    parts = dg.StaticPartitionsDefinition(list(energies))

    @dg.asset(name="steering_operators", partitions_def=parts, check_specs=check_specs(spec))
    def asset(context: dg.AssetExecutionContext):
        result = spec.run(None, None, None, shard=context.partition_key)
        return dg.MaterializeResult(check_results=check_results(spec, result, None, context.partition_key))

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        outcomes = {}
        for shard in energies:
            res = dg.materialize([asset], partition_key=shard, instance=instance, raise_on_error=False)
            outcomes[shard] = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert outcomes["a"]["operators_not_collapsed"].passed
    failed = outcomes["b"]["operators_not_collapsed"]
    assert not failed.passed and failed.metadata["shard"].value == "b"
    assert failed.metadata["partition"].value == "b"  # the check's history says which partition failed
    assert failed.description.startswith("steering_operators[b] FAILED")
    assert outcomes["a"]["operators_not_collapsed"].description.startswith("steering_operators[a] passed")
    assert failed.severity == dg.AssetCheckSeverity.ERROR
    assert outcomes["b"]["operators_favour_members"].severity == dg.AssetCheckSeverity.WARN
