"""MlflowTracking.log_stage inside a real materialization: one MLflow run with tags, params, metrics, artifacts."""

import json
import struct
import zlib
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from stride_assets.engine.pipeline import StageResult
from stride_assets.resources import MlflowTracking

N_PARAMS = 150  # more than one log_batch (MLflow takes at most 100 params per call)


def _tiny_png(path: Path) -> Path:
    """A valid 1x1 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )
    return path


def _stage_result(folder: Path, *, missing_file: bool = False) -> StageResult:
    folder.mkdir(parents=True, exist_ok=True)
    summary = folder / "summary.json"
    summary.write_text('{"K": 16}')
    return StageResult(
        stage="steering_operators",
        path=folder,
        metadata={"rows": 16, "K": 16},
        markdown={"loss_table": "| step | loss |\n|---|---|\n| 0 | 1.5 |"},
        plots={"loss_curve": _tiny_png(folder / "loss.png")},
        params={**{f"p{i:03d}": i for i in range(N_PARAMS)}, "form": "activation", "lambda_grid": [0.1, 0.2]},
        metrics={"final_loss": 0.25, "fidelity": 0.5},
        curves={"train_loss": [(0, 1.5), (5, 0.75), (10, 0.25)]},
        files=[summary] + ([folder / "missing.safetensors"] if missing_file else []),
        fingerprint="abc123",
    )


def _materialize(asset: dg.AssetsDefinition, tracking: MlflowTracking, **kwargs) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize([asset], resources={"mlflow": tracking}, instance=instance, **kwargs)


def _logging_asset(result: StageResult, **asset_kwargs) -> dg.AssetsDefinition:
    @dg.asset(name="steering_operators", code_version="v7", **asset_kwargs)
    def _asset(context: dg.AssetExecutionContext, mlflow: MlflowTracking) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=mlflow.log_stage(context, result, extra_tags={"stride_profile": "micro"}))

    return _asset


@pytest.fixture
def tracking(tmp_path: Path, mlflow_uri: str) -> MlflowTracking:
    return MlflowTracking(
        tracking_uri=mlflow_uri, experiment_name="stride-test", artifact_root=(tmp_path / "mlartifacts").as_uri()
    )


def test_log_stage_records_one_run(tmp_path: Path, mlflow_uri: str, tracking: MlflowTracking) -> None:
    result = _materialize(_logging_asset(_stage_result(tmp_path / "stage")), tracking)
    assert result.success

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("stride-test")
    assert exp is not None
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "steering_operators"
    tags = run.data.tags
    assert tags["dagster_run_id"] == result.run_id
    assert tags["dagster_run_url"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    assert tags["dagster_asset_key"] == "steering_operators"
    assert tags["dagster_code_version"] == "v7"
    assert tags["stride_profile"] == "micro"
    assert "dagster_partition_key" not in tags

    params = run.data.params
    assert len([k for k in params if k.startswith("p")]) == N_PARAMS
    assert params["p149"] == "149" and params["form"] == "activation"
    assert "lambda_grid" not in params  # a list: in params.json, not a column of the run table
    (tmp_path / "dl").mkdir()
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "params.json", str(tmp_path / "dl"))).read_text())
    assert logged["lambda_grid"] == [0.1, 0.2] and logged["p149"] == 149
    assert run.data.metrics["final_loss"] == pytest.approx(0.25)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.5), (5, 0.75), (10, 0.25)]

    artifacts = {
        f.path for folder in ("plots", "files", "tables") for f in client.list_artifacts(run.info.run_id, folder)
    }
    assert artifacts == {"plots/loss.png", "files/summary.json", "tables/loss_table.md"}
    assert (tmp_path / "mlartifacts" / run.info.run_id / "artifacts" / "plots" / "loss.png").is_file()

    # The Dagster materialization links back to the MLflow run.
    meta = result.asset_materializations_for_node("steering_operators")[0].metadata
    assert meta["mlflow_run_id"].value == run.info.run_id
    assert meta["mlflow_run"].value == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    )


def test_log_stage_tags_the_partition(tmp_path: Path, mlflow_uri: str, tracking: MlflowTracking) -> None:
    parts = dg.StaticPartitionsDefinition(["subset_000", "subset_001"])
    asset = _logging_asset(_stage_result(tmp_path / "stage"), partitions_def=parts)
    assert _materialize(asset, tracking, partition_key="subset_001").success
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stride-test").experiment_id])
    assert run.data.tags["dagster_partition_key"] == "subset_001"
    assert run.info.run_name == "steering_operators[subset_001]"


def test_split_params_keeps_the_stages_own_scalar_settings() -> None:
    from stride_assets.tracking import split_params

    params = {"recovery.solver": "sklearn", "recovery.lambda_grid": [0.1], "recovery.tol": 1e-4,
              "attribution.damping": None, "attribution.method": "stride", "data_version": "v1", "corpus.paths": []}
    assert split_params(params, ("recovery",)) == {"recovery.solver": "sklearn", "recovery.tol": 1e-4,
                                                   "data_version": "v1"}
    assert split_params(params) == {"recovery.solver": "sklearn", "recovery.tol": 1e-4,
                                    "attribution.method": "stride", "data_version": "v1"}


def test_pending_run_keeps_its_start_and_inputs(tmp_path: Path, mlflow_uri: str) -> None:
    """A run kept while MLflow was down is logged later with the start it had and its dataset inputs."""
    import polars as pl

    from stride_assets import tracking as tr

    data = tmp_path / "queries.parquet"
    pl.DataFrame({"query_id": ["q1"], "text": ["a prompt"]}).write_parquet(data)
    kept = tr.save_pending(tmp_path / "pending.json", "stride-late", "influence_scores[b1]", {"k": "v"}, {"a": 1},
                           {"m": 0.5}, {}, {}, {}, inputs={"queries[b1]": data}, start_time=1_700_000_000.0)
    (run_id,) = tr.log_pending([kept], mlflow_uri, (tmp_path / "art").as_uri())
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
    assert run.info.run_name == "influence_scores[b1]" and run.info.start_time == 1_700_000_000_000
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.name == "queries[b1]" and len(given.dataset.digest) == tr.DIGEST_CHARS


def test_failed_logging_marks_the_run_failed(tmp_path: Path, mlflow_uri: str, tracking: MlflowTracking) -> None:
    asset = _logging_asset(_stage_result(tmp_path / "stage", missing_file=True))
    result = _materialize(asset, tracking, raise_on_error=False)
    assert not result.success
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stride-test").experiment_id])
    assert run.info.status == "FAILED"


def test_disabled_tracking_logs_nothing(tmp_path: Path, mlflow_uri: str) -> None:
    off = MlflowTracking(tracking_uri=mlflow_uri, experiment_name="stride-off", enabled=False)
    assert _materialize(_logging_asset(_stage_result(tmp_path / "stage")), off).success
    assert MlflowClient(tracking_uri=mlflow_uri).get_experiment_by_name("stride-off") is None


def test_existing_experiment_is_reused(mlflow_uri: str, tracking: MlflowTracking) -> None:
    client = MlflowClient(tracking_uri=mlflow_uri)
    first = tracking.experiment_id(client)
    assert tracking.experiment_id(client) == first
