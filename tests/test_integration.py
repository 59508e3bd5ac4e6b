"""The whole asset graph on the micro profile: every stage materializes, checks run, MLflow has a run per stage."""

import json
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

import definitions
from stride_assets.engine.pipeline import STAGES


def test_materialize_everything_on_micro(micro_run) -> None:
    """On the session's shared micro run (``conftest.micro_run``), read-only."""
    results = micro_run.results
    assert results and all(r.success for r in results)
    with micro_run.instance() as instance:
        assert set(instance.get_dynamic_partitions("shards")) == {"part-0000", "part-0001"}
        assert instance.get_dynamic_partitions("query_batches") == ["default"]

    events = [e for r in results for e in r.get_asset_materialization_events()]
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in events}
    blocks = {f"default|part-000{i}" for i in (0, 1)}
    assert materialized == {("base_model", None), ("query_set", "default"), ("query_features", "default"),
                            ("influence_scores", "default"),
                            ("curated_dataset", None), ("selected_dataset", None), ("contamination_report", None),
                            ("attribution_report", "default"), ("curation_report", None)} | {
        (stage, f"part-000{i}") for stage in ("training_corpus", "subset_design", "steering_operators") for i in (0, 1)
    } | {("perturbation_matrix", b) for b in blocks}
    for event in events:
        meta = event.step_materialization_data.materialization.metadata
        stage = event.asset_key.to_user_string()
        assert Path(meta["path"].value).is_dir(), stage
        assert meta["mlflow_run_id"].value, stage
        assert event.step_materialization_data.materialization.tags["dagster/data_version"], stage
        if stage in ("attribution_report", "curation_report"):  # the Dagster UI links the HTML page
            assert isinstance(meta["report"], dg.PathMetadataValue) and meta["report"].value.endswith(".html")
            assert Path(meta["report"].value).is_file(), stage

    evaluations = {(e.asset_key.to_user_string(), e.check_name, r.run_id): e.passed
                   for r in results for e in r.get_asset_check_evaluations()}
    assert {(a, c) for a, c, _ in evaluations} == {
        ("steering_operators", "operators_not_collapsed"), ("steering_operators", "operators_favour_members"),
        ("influence_scores", "influence_scores_usable"), ("curated_dataset", "curated_dataset_not_empty")}
    assert all(evaluations.values()), evaluations

    store = micro_run.store
    assert {p.name for p in store.iterdir() if p.is_dir()} >= set(STAGES)
    for shard in ("part-0000", "part-0001"):
        assert (store / "steering_operators" / shard / "operators.safetensors").is_file()
        assert (store / "steering_operators" / shard / "args.json").is_file()
        assert (store / "perturbation_matrix" / "default" / shard / "responses.parquet").is_file()
    assert (store / "influence_scores" / "default" / "scores.parquet").is_file()
    import datasets

    for stage, splits in (("curated_dataset", {"keep", "drop"}), ("selected_dataset", {"selected", "not_selected"})):
        current = json.loads((store / stage / "current.json").read_text())
        loaded = datasets.load_dataset(current["path"])  # the version folder's card names the splits
        assert set(loaded) == splits, stage
        assert {"example_id", "text", "reason"} <= set(loaded[next(iter(splits))].column_names), stage
    selected = pl.read_parquet(Path(current["path"]) / "selected.parquet")
    assert selected.height == round(0.5 * sum(pl.read_parquet(p).height for p in
                                              (store / "training_corpus").glob("*/train.parquet")))
    assert (store / "contamination_report" / "leaks.parquet").is_file()
    assert (store / "contamination_report" / "summary.md").read_text().strip()
    queries = pl.read_parquet(store / "query_set" / "default" / "queries.parquet")
    report = (store / "attribution_report" / "default" / "report.html").read_text()
    assert report.count('class="query"') == queries.height and "<mark>" in report
    assert re.search(r"""(src|href)=["'](?!#)""", report) is None  # self-contained: in-page links only
    assert (store / "curation_report" / "curated.html").read_text().count("<article") >= 1
    assert "stride contamination report" in (store / "curation_report" / "contamination.html").read_text()

    client = MlflowClient(tracking_uri=micro_run.mlflow_uri)
    exp = client.get_experiment_by_name("stride-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(events) == 17
    assert sorted({r.data.tags["dagster_asset_key"] for r in runs}) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" and r.data.tags["stride_profile"] == "micro" for r in runs)
    operators = [r for r in runs if r.data.tags["dagster_asset_key"] == "steering_operators"]
    assert {r.data.tags["dagster_partition_key"] for r in operators} == {"part-0000", "part-0001"}
    assert all("top_direction_energy" in r.data.metrics for r in operators)
    assert {f.path for f in client.list_artifacts(operators[0].info.run_id, "files")} >= {
        "files/operators.safetensors"
    }
    reports = {r.data.tags["dagster_asset_key"]: r.info.run_id for r in runs}
    assert {f.path for f in client.list_artifacts(reports["attribution_report"], "files")} == {"files/report.html"}
    assert {f.path for f in client.list_artifacts(reports["curation_report"], "files")} == {
        "files/curated.html", "files/contamination.html"}


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
    assert f"  {store / 'attribution_report' / 'default' / 'report.html'}" in out  # the reports' paths

    with dg.DagsterInstance.get() as instance:  # the instance `stride ui` will show
        runs = instance.get_runs()
        assert len(runs) == 8 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("stride")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the DB, not in the repo
    assert len(client.search_runs([exp.experiment_id])) == 17

    # nothing changed: an incremental run only re-derives nothing but checks that everything is there
    assert cli.main(["run", "--incremental", "--profile", "micro", "--store", str(store)]) == 0
    assert "0 Dagster runs" in capsys.readouterr().out

    assert cli.main(["attribute", "The for statement iterates over a sequence.", "--top-k", "3", "--store", str(store)]) == 0
    table = capsys.readouterr().out
    assert "example_id" in table and "score" in table
    assert 1 <= table.count("The for statement iterates") <= 3  # one row per recovered example, at most top-k
