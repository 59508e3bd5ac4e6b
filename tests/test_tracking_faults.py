"""Tracking degraded, not dead: with MLflow unreachable `stride run` finishes untracked within seconds
per stage, keeps every stage's run, and `stride mlflow-sync` logs them once MLflow is back;
STRIDE_TRACKING=strict fails the first stage with a message naming the server; --no-mlflow skips it."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from stride_assets import tracking
from stride_assets.engine.store import Store

REPO = Path(__file__).resolve().parents[1]
DOWN = "http://127.0.0.1:9/"  # the discard port on loopback: nothing listens there


def _stride(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    import os

    full = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "stride_assets.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=full)


def test_check_reachable_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match="127.0.0.1:9"):
        tracking.check_reachable(DOWN)
    assert time.monotonic() - start < tracking.CONNECT_TIMEOUT_S + 1
    tracking.check_reachable("sqlite:////tmp/any.db")  # local stores need no server


def test_run_goes_on_untracked_then_syncs(tmp_path: Path, mlflow_uri: str) -> None:
    store = tmp_path / "store"
    run = _stride(["run", "--profile", "micro", "--store", str(store)], {"MLFLOW_TRACKING_URI": DOWN}, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "UNTRACKED" in run.stdout and "stride mlflow-sync" in run.stdout
    assert "the step goes on UNTRACKED" in run.stdout  # the loud per-stage warning
    kept = Store(store).untracked_runs()
    assert len(kept) >= 10  # every stage block of the micro run (2 shards, 1 batch)
    assert (store / "curated_dataset" / "current.json").is_file()  # nothing computed was lost

    sync = _stride(["mlflow-sync", "--store", str(store)], {"MLFLOW_TRACKING_URI": mlflow_uri}, tmp_path)
    assert sync.returncode == 0, sync.stderr
    assert f"logged {len(kept)} untracked run(s)" in sync.stdout
    assert Store(store).untracked_runs() == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("stride").experiment_id])
    assert len(runs) == len(kept) and {r.data.tags["stride_stage"] for r in runs} >= {"base_model", "curated_dataset"}


def test_strict_tracking_fails_with_the_server_named(tmp_path: Path) -> None:
    run = _stride(["run", "--profile", "micro", "--store", str(tmp_path / "store")],
                  {"MLFLOW_TRACKING_URI": DOWN, "STRIDE_TRACKING": "strict"}, tmp_path)
    assert run.returncode == 1
    assert "MLflow tracking failed (http://127.0.0.1:9/)" in run.stderr + run.stdout
    assert Store(tmp_path / "store").untracked_runs() == []


def test_no_mlflow_skips_tracking(tmp_path: Path) -> None:
    run = _stride(["run", "--profile", "micro", "--store", str(tmp_path / "store"), "--no-mlflow"],
                  {"MLFLOW_TRACKING_URI": DOWN}, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "UNTRACKED" not in run.stdout and Store(tmp_path / "store").untracked_runs() == []
