"""What a person reads in the Dagster UI and MLflow: escaped, rounded tables with text beside ids,
checks that name their partition, MLflow runs named by partition that cover the compute and link
back to Dagster, and a corpus source recorded only when a shard changes."""

from pathlib import Path

import dagster as dg
import polars as pl
from mlflow.tracking import MlflowClient

from stride_assets.defs.assets import stage_metadata
from stride_assets.engine.result import StageResult, escape_markdown, markdown_table, rounded
from stride_assets.engine.stages.influence_scores import top_examples


def test_markdown_cells_are_escaped_and_rounded() -> None:
    table = markdown_table(pl.DataFrame({"name": ["__setattr__ | *x* <b> `c`\nnext"], "score": [0.37309453000000303],
                                         "n": [123456789]}))
    header, rule, row = table.split("\n")
    assert header == "| name | score | n |" and rule == "|---|---|---|"
    assert row == r"| \_\_setattr\_\_ \| \*x\* \<b\> \`c\` next | 0.3731 | 123456789 |"
    assert escape_markdown("a_b") == r"a\_b" and escape_markdown("plain text") == "plain text"
    cut = markdown_table(pl.DataFrame({"t": ["x" * 50]}), max_chars=10).split("\n")[2]
    assert cut == "| " + "x" * 9 + "… |"
    assert rounded(0.37309453000000303) == 0.3731 and rounded(12345.678) == 12350.0
    assert rounded(7) == 7 and isinstance(rounded(7), int) and rounded(True) is True and rounded("0.123456") == "0.123456"


def test_stage_metadata_rounds_and_shows_plots_inline_with_a_url(tmp_path: Path) -> None:
    png = tmp_path / "scores.png"
    png.write_bytes(b"\x89PNG fake")
    result = StageResult("influence_scores", tmp_path, metadata={"r2": 0.123456789, "rows": 3, "batch": "b1"},
                         plots={"scores": png})
    meta = stage_metadata(result, {"scores": "http://127.0.0.1:5000/get-artifact?path=plots%2Fscores.png&run_uuid=r1"})
    assert meta["r2"] == 0.1235 and meta["rows"] == 3 and meta["batch"] == "b1"
    inline = meta["scores"].value
    assert inline == "![scores](http://127.0.0.1:5000/get-artifact?path=plots%2Fscores.png&run_uuid=r1)"
    assert len(inline) < 1000  # the asset page renders markdown inline only below 1000 characters
    assert meta["scores_png"].value.startswith("![scores](data:image/png;base64,")
    assert stage_metadata(result)["scores"].value.startswith("![scores](data:image/png;base64,")  # untracked


def test_top_examples_list_every_query_with_its_text() -> None:
    queries = pl.DataFrame({"query_id": ["q1", "q2", "q3"], "text": ["first query", "second", "my own prompt"]})
    top = pl.DataFrame({"query_id": ["q1", "q1", "q3", "q1"], "rank": [1, 2, 1, 4], "example_id": ["e1", "e2", "e3", "e4"],
                        "score": [0.5, 0.25, 0.125, 0.1], "text": ["ex one", "ex two", "ex three", "ex four"]})
    table = top_examples(top, queries, per_query=3)
    assert table.columns == ["query_id", "query", "rank", "example_id", "score", "example"]
    assert table["query_id"].to_list() == ["q1", "q1", "q2", "q3"]  # batch order, q2 (no positive score) once
    assert table.filter(pl.col("query_id") == "q3")["query"].item() == "my own prompt"
    assert table.filter(pl.col("query_id") == "q2")["example_id"].item() is None
    assert "e4" not in table["example_id"].to_list()  # rank 4 > per_query


def test_check_results_name_their_partition() -> None:
    from stride_assets.defs.checks import check_results
    from stride_assets.engine import checks
    from stride_assets.engine.registry import StageSpec

    spec = StageSpec("influence_scores", lambda *a, **k: None, keys=("batch",), checks=(checks.influence_scores_usable,))
    bad = StageResult("influence_scores", Path("."), metadata={"queries": 2, "nonzero": 0, "non_finite": 0})
    (failed,) = check_results(spec, bad, None, "batch-0007")
    assert not failed.passed and failed.description.startswith("influence_scores[batch-0007] FAILED")
    assert failed.metadata["partition"].value == "batch-0007"
    (unpartitioned,) = check_results(spec, bad, None)
    assert "partition" not in unpartitioned.metadata and "[" not in (unpartitioned.description or "")


def test_sensor_records_a_shard_only_when_its_content_changes(tmp_path: Path) -> None:
    from stride_assets.defs.sensors import source_changes

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = source_changes(instance, {"a": "d1", "b": "d2"})
        assert [(e.partition, e.tags["dagster/data_version"]) for e in first] == [("a", "d1"), ("b", "d2")]
        for event in first:
            instance.report_runless_asset_event(event)
        assert source_changes(instance, {"a": "d1", "b": "d2"}) == []  # a quiet tick records nothing
        edited = source_changes(instance, {"a": "d1", "b": "d3", "c": "d4"})
        assert [(e.partition, e.tags["dagster/data_version"]) for e in edited] == [("b", "d3"), ("c", "d4")]


def test_micro_materialization_reads_well_in_dagster_and_mlflow(micro_run) -> None:
    """The real pipeline on the micro profile (the session's shared run, ``conftest.micro_run``): the UI
    tables carry text, the checks their partition, and each MLflow run its partition, the Dagster run's
    URL, a duration covering the compute and its data."""
    results, cfg = micro_run.results, micro_run.cfg
    assert results and all(r.success for r in results)
    events = {(e.asset_key.to_user_string(), e.partition): e.step_materialization_data.materialization.metadata
              for r in results for e in r.get_asset_materialization_events()}

    scores = events[("influence_scores", "default")]
    top = scores["top_examples"].value
    assert top.startswith("| query\\_id | query | rank | example\\_id | score | example |")
    prompt = cfg.queries.prompts[0]
    assert escape_markdown(prompt[:40]) in top  # the user's own prompt is in the table, as text
    queries = pl.read_parquet(micro_run.store / "query_set" / "default" / "queries.parquet")
    assert all(escape_markdown(q) in top for q in queries["query_id"].to_list())  # every query of the batch
    for name, value in scores.items():
        if isinstance(value, dg.FloatMetadataValue) and value.value == value.value:
            assert value.value == rounded(value.value), name
    assert scores["scores"].value.startswith("![scores](http://127.0.0.1:5000/get-artifact?path=plots%2F")
    kept = events[("curated_dataset", None)]["kept"].value
    assert kept.startswith("| example\\_id | text | score\\_sum | reason |")

    failed_or_not = [e for r in results for e in r.get_asset_check_evaluations()
                     if e.asset_key.to_user_string() == "steering_operators"]
    assert {e.metadata["partition"].value for e in failed_or_not} == {"part-0000", "part-0001"}
    assert all(e.description.startswith(f"steering_operators[{e.metadata['partition'].value}] ")
               for e in failed_or_not)

    client = MlflowClient(tracking_uri=micro_run.mlflow_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("stride-test").experiment_id])}
    assert {"influence_scores[default]", "steering_operators[part-0000]", "steering_operators[part-0001]",
            "perturbation_matrix[default|part-0001]", "curated_dataset"} <= set(runs)
    run_ids = {r.run_id for r in results}
    for name, run in runs.items():
        tags = run.data.tags
        assert tags["dagster_run_id"] in run_ids, name
        assert tags["dagster_run_url"] == f"http://127.0.0.1:3000/runs/{tags['dagster_run_id']}", name
    for asset, partition in (("steering_operators", "part-0000"), ("influence_scores", "default")):
        run = runs[f"{asset}[{partition}]"]
        measured = events[(asset, partition)]["seconds"].value
        assert (run.info.end_time - run.info.start_time) / 1000 >= measured, asset
    run = runs["influence_scores[default]"]
    assert all(k.startswith("recovery.") or "." not in k for k in run.data.params)  # its own settings only
    assert "attribution.method" not in run.data.params
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "queries[default]" and given.dataset.digest
    (shard_data,) = runs["steering_operators[part-0000]"].inputs.dataset_inputs
    assert shard_data.dataset.name == "corpus[part-0000]"


def test_dagster_run_url_is_configurable() -> None:
    from stride_assets.resources import MlflowTracking

    tracking = MlflowTracking(dagster_ui_url="https://dagster.example/", ui_url="http://mlflow:5000/")
    assert tracking.dagster_run_url("r1") == "https://dagster.example/runs/r1"
    assert tracking.artifact_url("abc", "plots/x y.png") == "http://mlflow:5000/get-artifact?path=plots%2Fx%20y.png&run_uuid=abc"
