"""The code location loads, and its asset graph, job, schedule and resources are the intended ones."""

import base64
from pathlib import Path

import dagster as dg
import pytest

import definitions
from stride_assets.defs.assets import stage_metadata
from stride_assets.engine.pipeline import BY_NAME, STAGES, StageResult
from stride_assets.resources import MlflowTracking, StrideResource

EXPECTED_GROUPS = {
    "data": {"corpus_source", "training_corpus", "query_set"},
    "model": {"base_model"},
    "attribution": {"subset_design", "steering_operators", "query_features", "perturbation_matrix", "influence_scores"},
    "curation": {"curated_dataset", "selected_dataset", "contamination_report"},
    "reports": {"attribution_report", "curation_report"},
}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    loaded = definitions.defs()
    dg.Definitions.validate_loadable(loaded)
    return loaded


EVALUATION = {"eval_subsets": {"training_corpus"}, "retrained_losses": {"eval_subsets", "query_set", "base_model"},
              "lds_report": {"retrained_losses", "influence_scores"}}
PARTITIONS = {"training_corpus": {"shards"}, "subset_design": {"shards"}, "steering_operators": {"shards"},
              "query_set": {"query_batches"}, "query_features": {"query_batches"},
              "perturbation_matrix": {"query_batches", "shards"},
              "influence_scores": {"query_batches"}, "base_model": set(), "curated_dataset": set(),
              "selected_dataset": set(), "contamination_report": set(), "attribution_report": {"query_batches"},
              "curation_report": set()}


def _dynamic_names(partitions_def) -> set[str]:
    if partitions_def is None:
        return set()
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {d.partitions_def.name for d in partitions_def.partitions_defs}
    return {partitions_def.name}


def test_asset_graph_is_the_stages_plus_evaluation(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(STAGES) | set(EVALUATION) | {"corpus_source"}
    for key, parents in EVALUATION.items():
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys} == parents, key
    assert graph.get(dg.AssetKey("retrained_losses")).partitions_def is not None
    assert len(STAGES) == 13
    for stage in STAGES:
        node = graph.get(dg.AssetKey(stage))
        extra = {"corpus_source"} if stage == "training_corpus" else set()
        assert {k.to_user_string() for k in node.parent_keys} == set(BY_NAME[stage].upstream) | extra, stage
        assert _dynamic_names(node.partitions_def) == PARTITIONS[stage], stage
        assert node.code_version, stage
        assert node.description, stage
    source = graph.get(dg.AssetKey("corpus_source"))  # external, recorded per shard by the sensor (not "0% filled")
    assert source.is_external and not source.is_observable and _dynamic_names(source.partitions_def) == {"shards"}
    # the model and the queries do not follow appended shards: no lineage from the corpus blocks
    assert graph.get(dg.AssetKey("base_model")).parent_keys == set()
    assert graph.get(dg.AssetKey("query_set")).parent_keys == set()
    # each stage has its own code version: a change to one stage's code or settings stales only it
    assert len({graph.get(dg.AssetKey(s)).code_version for s in STAGES}) == len(STAGES)


def test_groups(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == {**EXPECTED_GROUPS, "evaluation": set(EVALUATION)}
    assert all(BY_NAME[s].group for s in STAGES)


def test_checks_attach_to_stages(defs: dg.Definitions) -> None:
    check_keys = defs.resolve_asset_graph().asset_check_keys
    assert check_keys, "no asset checks loaded"
    assert {k.asset_key.to_user_string() for k in check_keys} <= set(STAGES) | {"lds_report"}
    assert {"steering_operators", "influence_scores", "curated_dataset"} <= {
        k.asset_key.to_user_string() for k in check_keys
    }


def test_jobs_and_schedule(defs: dg.Definitions) -> None:
    from stride_assets.defs.jobs import job_name
    from stride_assets.engine import registry

    covered = set()
    order = [job_name(job) for job in registry.jobs(BY_NAME.values())]
    assert order == ["stride_model_job", "stride_shard_job", "stride_queries_job", "stride_measure_job",
                     "stride_recovery_job", "stride_curation_job"]
    for name in order:
        job = defs.resolve_job_def(name)
        covered |= {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
        assert isinstance(job.executor_def, dg.ExecutorDefinition) and job.executor_def.name == "in_process"
    assert covered == set(STAGES)
    schedule = defs.resolve_schedule_def("stride_nightly")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "stride_curation_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = defs.resolve_sensor_def("corpus_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_code_version_follows_code_and_settings() -> None:
    from stride_assets.engine.config import load_config
    from stride_assets.engine.pipeline import code_version

    base = load_config("micro")
    other = load_config("micro", {"recovery": {"lambda_ratio": 0.3}})
    changed = {s for s in STAGES if code_version(s, base) != code_version(s, other)}
    assert changed == {"influence_scores"}
    model = load_config("micro", {"model": {"max_length": 48}})
    assert {s for s in STAGES if code_version(s, base) != code_version(s, model)} == {
        "base_model", "steering_operators", "query_features", "perturbation_matrix"}


def test_resources_follow_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIDE_PROFILE", "micro")
    monkeypatch.setenv("STRIDE_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x/mlflow.db")
    resources = definitions.defs().resources
    stride, tracking = resources["stride"], resources["mlflow"]
    assert isinstance(stride, StrideResource) and isinstance(tracking, MlflowTracking)
    assert stride.profile == "micro"
    assert stride.store().root == (tmp_path / "elsewhere").resolve()
    assert stride.config().design.K == 16  # the micro profile's value
    assert tracking.resolved_tracking_uri() == "sqlite:////tmp/x/mlflow.db"
    assert tracking.resolved_artifact_root() == "file:///tmp/x/mlartifacts"  # beside the SQLite DB


def test_stride_resource_overrides(tmp_path: Path) -> None:
    resource = StrideResource(profile="micro", storage_root=str(tmp_path), overrides_json='{"design": {"K": 12}}')
    assert resource.config().design.K == 12
    assert resource.store().root == tmp_path.resolve()
    from stride_assets.engine.errors import StrideConfigError

    with pytest.raises(StrideConfigError, match="JSON"):
        StrideResource(overrides_json="{not json").config()
    with pytest.raises(StrideConfigError, match="unknown profile"):
        StrideResource(profile="no-such-profile").config()


def test_stage_metadata(tmp_path: Path) -> None:
    png = tmp_path / "hist.png"
    png.write_bytes(b"\x89PNG fake bytes")
    result = StageResult(
        stage="influence_scores",
        path=tmp_path,
        metadata={"rows": 42, "lambda": 0.2, "solver": "sklearn"},
        markdown={"top_examples": "| a |\n|---|\n| 1 |"},
        plots={"score_histogram": png},
        params={},
        metrics={},
        curves={},
        files=[],
        fingerprint="f" * 64,
    )
    meta = stage_metadata(result)
    assert meta["rows"] == 42 and meta["lambda"] == 0.2 and meta["solver"] == "sklearn"
    assert meta["dagster/row_count"] == 42
    assert meta["top_examples"] == dg.MetadataValue.md("| a |\n|---|\n| 1 |")
    embedded = meta["score_histogram"].value
    assert embedded.startswith("![hist](data:image/png;base64,")
    assert base64.b64decode(embedded.split(",", 1)[1].rstrip(")")) == png.read_bytes()
    assert meta["path"] == dg.MetadataValue.path(str(tmp_path))
