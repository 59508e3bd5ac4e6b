"""MLflow plumbing shared by the Dagster resource and the CLI (no Dagster import here).

The benchmark harness never imports this module: it says what to log (``report.TrackedRun``) and
the CLI hands it to ``log_bench``.

Defaults: SQLite store ``sqlite:///<repo>/.stride/mlflow.db`` (or ``$MLFLOW_TRACKING_URI``),
artifacts in ``mlartifacts/`` beside the database. mlflow is imported lazily (about 4 s cold).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import urlparse

if TYPE_CHECKING:
    from stride_assets.engine.evaluation.report import TrackedRun

REPO_ROOT = Path(__file__).resolve().parents[1]
STRIDE_DIR = REPO_ROOT / ".stride"
MLFLOW_UI_URL = "http://127.0.0.1:5000"
DAGSTER_UI_URL = "http://127.0.0.1:3000"
DIGEST_CHARS = 16  # of a dataset input's sha256 (MLflow keeps at most 36)

CONNECT_TIMEOUT_S = 3.0  # a tracking server that does not accept a connection by then is unreachable
REQUEST_TIMEOUT_S = 20.0  # MLflow's per-request timeout (its default is 120 s with 7 retries)

# MLflow's per-call limits for log_batch.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE_CHARS = 6000


def default_storage_root() -> str:
    return os.environ.get("STRIDE_HOME") or str(STRIDE_DIR / "store")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{STRIDE_DIR / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other backends)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()


def default_artifact_root(tracking_uri: str | None = None) -> str | None:
    """``mlartifacts/`` beside a SQLite tracking DB (so <repo>/.stride/mlartifacts by default);
    None for a tracking server, which then applies its own default."""
    db = sqlite_path(tracking_uri or default_tracking_uri())
    return (db.parent / "mlartifacts").as_uri() if db else None


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


def check_reachable(tracking_uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """For an http(s) tracking server, a TCP connect within ``timeout`` seconds (MLflow's own client
    would retry for minutes); raises ``TrackingUnavailable``. Local stores need no check."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout).close()
    except OSError as exc:
        raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} is unreachable ({exc})") from exc


def client(tracking_uri: str) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # a server that stops answering mid-run fails a call in seconds, not after MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(REQUEST_TIMEOUT_S)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    check_reachable(tracking_uri)
    if db := sqlite_path(tracking_uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(mlflow_client: Any, name: str, artifact_root: str | None) -> str:
    """The experiment's id, creating it with an explicit artifact location (never cwd-relative)."""
    from mlflow.exceptions import MlflowException

    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_root)
    except MlflowException:  # created concurrently by another process
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def log_run(
    mlflow_client: Any,
    exp_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any] = {},
    metrics: Mapping[str, Any] = {},
    curves: Mapping[str, Iterable[tuple[int, float]]] = {},
    texts: Mapping[str, str] = {},
    artifacts: Mapping[str, Iterable[Path]] = {},
    inputs: Mapping[str, str | Path] = {},
    start_time: float | None = None,
) -> str:
    """One finished MLflow run (FAILED, and the error re-raised, if logging breaks). Returns its id.

    ``texts``: artifact file name -> content; ``artifacts``: artifact folder -> local files;
    ``inputs``: dataset name -> parquet file, logged as the run's dataset inputs; ``start_time``:
    epoch seconds the run began (default now), so its duration covers the work it records.
    Non-numeric metrics are skipped; params are stringified and cut to MLflow's limit.
    """
    from mlflow.entities import Metric, Param

    start_ms = int(start_time * 1000) if start_time is not None else None
    run_id = mlflow_client.create_run(exp_id, start_time=start_ms, run_name=run_name, tags=dict(tags)).info.run_id
    try:
        plist = [Param(str(k), str(v)[:_MAX_PARAM_VALUE_CHARS]) for k, v in params.items()]
        for batch in _chunks(plist, _MAX_PARAMS_PER_BATCH):
            mlflow_client.log_batch(run_id, params=batch)
        now = int(time.time() * 1000)
        mlist = [Metric(str(k), f, now, 0) for k, v in metrics.items() if (f := _as_float(v)) is not None]
        mlist += [Metric(str(name), float(v), now, int(step)) for name, series in curves.items() for step, v in series]
        for batch in _chunks(mlist, _MAX_METRICS_PER_BATCH):
            mlflow_client.log_batch(run_id, metrics=batch)
        for name, text in texts.items():
            mlflow_client.log_text(run_id, text, name)
        for folder, paths in artifacts.items():
            for path in paths:
                mlflow_client.log_artifact(run_id, str(path), artifact_path=folder)
        if inputs:
            mlflow_client.log_inputs(run_id, datasets=[dataset_input(name, Path(path)) for name, path in inputs.items()])
    except BaseException:
        mlflow_client.set_terminated(run_id, status="FAILED")
        raise
    mlflow_client.set_terminated(run_id, status="FINISHED")
    return run_id


def dataset_input(name: str, path: Path) -> Any:
    """A parquet file as an MLflow dataset input: its name, its content digest, schema and profile."""
    import mlflow.data
    import polars as pl
    from mlflow.entities import DatasetInput, InputTag

    from stride_assets.engine.artifacts import file_digest

    with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_polars(pl.read_parquet(path), source=str(path), name=name,
                                          digest=file_digest(path)[:DIGEST_CHARS])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "input")])


def split_params(params: Mapping[str, Any], own: Iterable[str] = ()) -> dict[str, Any]:
    """The params worth a column in MLflow's run table: scalar settings of the sections in ``own``
    (``recovery`` keeps ``recovery.solver``) and undotted ones; ``own`` empty: every scalar. The rest
    (lists, dicts, unset values, other sections' settings) goes to the run's ``params.json``."""
    sections = tuple(own)
    return {k: v for k, v in params.items()
            if isinstance(v, (str, int, float, bool)) and v != ""
            and (not sections or "." not in k or k.split(".", 1)[0] in sections)}


def run_url(ui_url: str, exp_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def log_bench(run: TrackedRun, tracking_uri: str, experiment: str = "stride-bench") -> str:
    """One MLflow run of a benchmark, as its ``TrackedRun`` says (files go to the artifact root). Returns its id."""
    mlflow_client = client(tracking_uri)
    exp_id = experiment_id(mlflow_client, experiment, default_artifact_root(tracking_uri))
    return log_run(mlflow_client, exp_id, run.name, run.tags, params=run.params, metrics=run.metrics,
                   texts=run.texts, artifacts={"": run.files})


# ---------------------------------------------------------------- runs logged later
def save_pending(path: Path, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                 metrics: Mapping[str, Any], curves: Mapping[str, Iterable[tuple[int, float]]],
                 texts: Mapping[str, str], artifacts: Mapping[str, Iterable[Path]],
                 inputs: Mapping[str, str | Path] = {}, start_time: float | None = None) -> Path:
    """Keep a run that could not be logged, to log it later with ``log_pending`` (atomically written)."""
    from stride_assets.engine.artifacts import write_json

    record = {"experiment": experiment, "run_name": run_name, "tags": dict(tags),
              "params": {k: str(v) for k, v in params.items()},
              "metrics": {k: f for k, v in metrics.items() if (f := _as_float(v)) is not None},
              "curves": {k: [[int(step), float(v)] for step, v in series] for k, series in curves.items()},
              "texts": dict(texts), "artifacts": {k: [str(p) for p in paths] for k, paths in artifacts.items()},
              "inputs": {k: str(p) for k, p in inputs.items()}, "start_time": start_time}
    return write_json(record, path)


def log_pending(paths: Iterable[Path], tracking_uri: str, artifact_root: str | None) -> list[str]:
    """Log every kept run (files whose artifacts are gone are logged without them); each file is
    removed once its run is logged. Returns the new run ids."""
    mlflow_client, ids = client(tracking_uri), []
    for path in sorted(paths):
        record = json.loads(Path(path).read_text())
        exp_id = experiment_id(mlflow_client, record["experiment"], artifact_root)
        artifacts = {k: [Path(p) for p in v if Path(p).exists()] for k, v in record["artifacts"].items()}
        ids.append(log_run(mlflow_client, exp_id, record["run_name"], record["tags"], params=record["params"],
                           metrics=record["metrics"], curves={k: [tuple(x) for x in v] for k, v in
                                                              record["curves"].items()},
                           texts=record["texts"], artifacts=artifacts, start_time=record.get("start_time"),
                           inputs={k: p for k, p in record.get("inputs", {}).items() if Path(p).exists()}))
        Path(path).unlink()
    return ids
