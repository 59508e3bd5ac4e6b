"""The whole asset graph on the micro profile: every stage materializes, checks run, MLflow has a run per stage."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

import definitions
from stride_assets.engine.pipeline import STAGES


@pytest.fixture(scope="module")
def code_location() -> dg.Definitions:
    return definitions.defs()


def test_materialize_everything_on_micro(
    tmp_path: Path, micro_resources: dict[str, Any], mlflow_uri: str, code_location: dg.Definitions
) -> None:
    assets = [a for a in code_location.assets or [] if not set(a.group_names_by_key.values()) & {"evaluation"}]
    checks = [c for c in code_location.asset_checks or [] if all(k.asset_key.to_user_string() in STAGES
                                                                  for k in c.check_keys)]
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        result = dg.materialize([*assets, *checks], resources=micro_resources, instance=instance)
        assert result.success

        materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
        assert materialized == set(STAGES)
        for stage in STAGES:
            record = instance.get_latest_materialization_event(dg.AssetKey(stage))
            assert record is not None and record.run_id == result.run_id
            meta = record.asset_materialization.metadata
            assert Path(meta["path"].value).is_dir(), stage
            assert meta["mlflow_run_id"].value, stage
            assert record.asset_materialization.tags["dagster/data_version"], stage

    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    expected_checks = {(k.asset_key.to_user_string(), k.name) for c in checks for k in c.check_keys}
    assert set(evaluations) == expected_checks and len(expected_checks) >= 4
    assert all(evaluations.values()), evaluations

    store = tmp_path / "store"
    assert {p.name for p in store.iterdir() if p.is_dir()} >= set(STAGES)
    for stage in STAGES:
        assert (store / stage / "args.json").is_file(), stage
    assert (store / "steering_operators" / "operators.safetensors").is_file()
    assert (store / "curated_dataset" / "data" / "kept.parquet").is_file()

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("stride-test")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert sorted(r.data.tags["dagster_asset_key"] for r in runs) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" and r.data.tags["stride_profile"] == "micro" for r in runs)
    operators = next(r for r in runs if r.info.run_name == "steering_operators")
    assert "top_direction_energy" in operators.data.metrics
    assert {f.path for f in client.list_artifacts(operators.info.run_id, "files")} >= {
        "files/operators.safetensors"
    }


def test_cli_run_then_attribute(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stride run` on micro records a successful run in the persistent instance; `stride attribute` reuses it."""
    from stride_assets import cli

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    store = tmp_path / "cli-store"
    assert cli.main(["run", "--profile", "micro", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"> {stage} ..." in out and f"< {stage} done in" in out, stage
    assert "check influence_scores_usable on influence_scores: passed" in out
    assert f"stride run in {store}" in out  # the engine's summary
    assert "127.0.0.1:3000" in out and "127.0.0.1:5000" in out

    with dg.DagsterInstance.get() as instance:  # the instance `stride ui` will show
        (run,) = instance.get_runs()
        assert run.job_name == "stride_job" and run.status == dg.DagsterRunStatus.SUCCESS
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("stride")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the DB, not in the repo
    assert len(client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{run.run_id}'")) == 8

    assert cli.main(["attribute", "The for statement iterates over a sequence.", "--top-k", "3", "--store", str(store)]) == 0
    table = capsys.readouterr().out
    assert "example_id" in table and "score" in table
    assert 1 <= table.count("The for statement iterates") <= 3  # one row per recovered example, at most top-k
