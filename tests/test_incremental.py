"""Incremental by construction: the corpus sensor and declarative automation, driven with Dagster's
testing APIs (sensor ticks, ``evaluate_automation_conditions``), on a corpus of shard files.

Appending a shard trains that shard's operators only, measures its block, re-solves the query
batch (the fan-in) and refreshes the curated outputs; the other shards' banks stay untouched.
"""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import make_defs, make_micro_resources

from stride_assets.engine.artifacts import file_digest
from stride_assets.engine.config import CorpusConfig
from stride_assets.engine.corpus import load_passages
from stride_assets.orchestration import run_pipeline
from stride_assets.resources import StrideResource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JOB_OF = {"perturbation_matrix": "stride_measure_job", "influence_scores": "stride_recovery_job",
          "curated_dataset": "stride_curation_job", "selected_dataset": "stride_curation_job",
          "contamination_report": "stride_curation_job", "attribution_report": "stride_recovery_job",
          "curation_report": "stride_curation_job"}
ORDER = list(JOB_OF)


@pytest.fixture(scope="module")
def passages() -> pl.DataFrame:
    return load_passages(CorpusConfig(chunk_chars=300, max_examples=200)).select("text")


def _setup(tmp_path: Path, mlflow_uri: str, passages: pl.DataFrame):
    folder = tmp_path / "shards"
    folder.mkdir()
    passages[:80].write_parquet(folder / "a.parquet")
    passages[80:160].write_parquet(folder / "b.parquet")
    resources = make_micro_resources(tmp_path, mlflow_uri)
    overrides = {"corpus": {"source": "files", "paths": [str(folder)], "max_examples": None}}
    resources["stride"] = StrideResource(profile="micro", storage_root=str(tmp_path / "store"),
                                         overrides_json=json.dumps(overrides))
    (tmp_path / "home").mkdir()
    return folder, resources, make_defs(resources)


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, resources) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def("corpus_sensor")
    return sensor(dg.build_sensor_context(instance=instance, resources={"stride": resources["stride"]}))


def _partition_changes(result: dg.SensorResult) -> set[tuple[str, str, str]]:
    return {(type(r).__name__, r.partitions_def_name, key) for r in result.dynamic_partitions_requests
            for key in r.partition_keys}


class Daemon:
    """What the automation daemon does each tick: evaluate the conditions (keeping their cursor, as
    the daemon does between ticks), run what they request, repeat until nothing is requested."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def run_until_quiet(self) -> set[tuple[str, str | None]]:
        return _drive_automation(self)


def _drive_automation(daemon: Daemon) -> set[tuple[str, str | None]]:
    defs, instance = daemon.defs, daemon.instance
    done: set[tuple[str, str | None]] = set()
    for _ in range(6):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=daemon.cursor)
        daemon.cursor = result.cursor
        if result.total_requested == 0:
            return done
        runs: dict[tuple[str, object], list[dg.AssetKey]] = {}  # one run per job and partition, as the daemon groups
        for asset in ORDER:
            key = dg.AssetKey(asset)
            if result.get_num_requested(key):
                for partition in result.get_requested_partitions(key) or {None}:
                    runs.setdefault((JOB_OF[asset], partition), []).append(key)
                    done.add((asset, None if partition is None else str(partition)))
        for (job, partition), keys in runs.items():
            run = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                               asset_selection=keys)
            assert run.success
    raise AssertionError("automation kept requesting runs")


def _materializations(instance: dg.DagsterInstance, asset: str, partition: str) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=10).records
    return len(records)


def test_sensor_and_automation_attribute_only_the_new_shard(tmp_path: Path, mlflow_uri: str, passages) -> None:
    folder, resources, defs = _setup(tmp_path, mlflow_uri, passages)
    store = tmp_path / "store"
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first = _tick(defs, instance, resources)
        assert _partition_changes(first) == {("AddDynamicPartitionsRequest", "shards", "a"),
                                             ("AddDynamicPartitionsRequest", "shards", "b"),
                                             ("AddDynamicPartitionsRequest", "query_batches", "default")}
        assert {(r.job_name, r.partition_key) for r in first.run_requests} == {
            ("stride_shard_job", "a"), ("stride_shard_job", "b"), ("stride_queries_job", "default")}
        assert {e.partition for e in first.asset_events} == {"a", "b"}  # observations of corpus_source

        assert all(r.success for r in run_pipeline(defs, instance, resources["stride"].config(), log=lambda _: None))
        quiet = _tick(defs, instance, resources)  # nothing changed: nothing to do
        assert not quiet.run_requests and not quiet.dynamic_partitions_requests
        daemon = Daemon(defs, instance)
        assert daemon.run_until_quiet() == set()
        banks = {s: store / "steering_operators" / s / "operators.safetensors" for s in ("a", "b")}
        before = {s: (file_digest(p), p.stat().st_mtime_ns) for s, p in banks.items()}

        passages[160:180].write_parquet(folder / "c.parquet")  # append ~12% of the data
        appended = _tick(defs, instance, resources)
        assert _partition_changes(appended) == {("AddDynamicPartitionsRequest", "shards", "c")}
        assert [(r.job_name, r.partition_key, r.tags["stride/reason"]) for r in appended.run_requests] == [
            ("stride_shard_job", "c", "new")]

        instance.add_dynamic_partitions("shards", ["c"])  # what the sensor's request does in the daemon
        shard_run = defs.resolve_job_def("stride_shard_job").execute_in_process(instance=instance, partition_key="c")
        assert shard_run.success
        assert daemon.run_until_quiet() == {
            ("perturbation_matrix", "default|c"), ("influence_scores", "default"), ("curated_dataset", None),
            ("selected_dataset", None), ("contamination_report", None), ("attribution_report", "default"),
            ("curation_report", None)}

        for shard in ("a", "b"):  # untouched: not re-materialized, same bytes, same file
            for stage in ("training_corpus", "subset_design", "steering_operators"):
                assert _materializations(instance, stage, shard) == 1, (stage, shard)
            assert _materializations(instance, "perturbation_matrix", f"default|{shard}") == 1
        assert {s: (file_digest(p), p.stat().st_mtime_ns) for s, p in banks.items()} == before
        scores = pl.read_parquet(store / "influence_scores" / "default" / "scores.parquet")
        assert scores.join(pl.read_parquet(store / "training_corpus" / "c" / "train.parquet"), on="example_id").height

        # an edited shard is re-attributed on the next tick; a removed one leaves the partitions
        passages[100:180].write_parquet(folder / "b.parquet")
        (folder / "a.parquet").unlink()
        edited = _tick(defs, instance, resources)
        assert [(r.partition_key, r.tags["stride/reason"]) for r in edited.run_requests] == [("b", "changed")]
        assert _partition_changes(edited) == {("DeleteDynamicPartitionsRequest", "shards", "a")}


def test_incremental_run_plans_only_the_new_blocks(tmp_path: Path, mlflow_uri: str, passages) -> None:
    from stride_assets.orchestration import plan

    folder, resources, defs = _setup(tmp_path, mlflow_uri, passages)
    cfg = resources["stride"].config()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert all(r.success for r in run_pipeline(defs, instance, cfg, log=lambda _: None))
        assert plan(instance, cfg, only_changed=True) == []
        passages[160:180].write_parquet(folder / "c.parquet")
        assert [(job, str(key)) for job, key in plan(instance, cfg, only_changed=True)] == [
            ("stride_shard_job", "c"), ("stride_measure_job", "default|c"), ("stride_recovery_job", "default"),
            ("stride_curation_job", "None")]
        results = run_pipeline(defs, instance, cfg, only_changed=True, log=lambda _: None)
        assert len(results) == 4 and all(r.success for r in results)
        assert plan(instance, cfg, only_changed=True) == []


def test_bench_incremental_cli(tmp_path: Path) -> None:
    from stride_assets import cli

    assert cli.main(["bench", "incremental", "--quick", "--no-mlflow", "--out", str(tmp_path / "inc")]) == 0
    report = json.loads((tmp_path / "inc" / "report.json").read_text())
    assert 0 < report["incremental_ratio"] < 1
    assert report["incremental_seconds"] < report["full_seconds"]
    assert set(report["stages"]["incremental"]) == {"training_corpus", "subset_design", "steering_operators",
                                                    "perturbation_matrix", "influence_scores", "curated_dataset"}
    # the appended-to store ends where a full rebuild ends: same banks for the old shards, same scores
    assert report["max_abs_score_difference"] == 0.0 and report["nonzero_scores"]["incremental"] > 0
    assert 0.05 < report["append_fraction"] < 0.15
