"""Dagster resources: where a stride workspace lives (``StrideResource``) and MLflow tracking.

Everything path-like is a resource field, so a test or the CLI can point a whole run at a
temporary folder. Empty fields mean "resolve at use time" from the environment:

- ``STRIDE_PROFILE``: profile name under ``resources/profiles`` or a YAML path (default ``default``)
- ``STRIDE_HOME``: storage root of the engine artifacts (default ``<repo>/.stride/store``)
- ``MLFLOW_TRACKING_URI``: MLflow backend (default ``sqlite:///<repo>/.stride/mlflow.db``)

mlflow is imported lazily (about 4 s cold), so loading the definitions stays cheap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from stride_assets.engine.artifacts import Store
from stride_assets.engine.config import StrideConfig, load_config
from stride_assets.engine.errors import StrideConfigError

if TYPE_CHECKING:
    from stride_assets.engine.pipeline import StageResult

REPO_ROOT = Path(__file__).resolve().parents[1]
STRIDE_DIR = REPO_ROOT / ".stride"
MLFLOW_UI_URL = "http://127.0.0.1:5000"

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


class StrideResource(dg.ConfigurableResource):
    """The engine's configuration profile and storage root."""

    profile: str = Field(
        default="default", description="profile name in resources/profiles, or a path to a YAML file"
    )
    storage_root: str = Field(
        default="", description="storage root of the stage artifacts; empty: $STRIDE_HOME or <repo>/.stride/store"
    )
    overrides_json: str = Field(
        default="", description='JSON nested overrides of the profile, e.g. {"design": {"K": 128}}'
    )

    def overrides(self) -> dict[str, Any]:
        if not self.overrides_json.strip():
            return {}
        try:
            value = json.loads(self.overrides_json)
        except json.JSONDecodeError as exc:
            raise StrideConfigError(f"overrides_json is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise StrideConfigError(f"overrides_json must be a JSON object, got {type(value).__name__}")
        return value

    def config(self) -> StrideConfig:
        return load_config(self.profile, self.overrides())

    def root(self) -> Path:
        return Path(self.storage_root or default_storage_root()).expanduser().resolve()

    def store(self) -> Store:
        return Store(self.root())


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class MlflowTracking(dg.ConfigurableResource):
    """One MLflow run per asset materialization, tagged with the Dagster run, asset and partition."""

    tracking_uri: str = Field(
        default="", description="MLflow backend; empty: $MLFLOW_TRACKING_URI or sqlite:///<repo>/.stride/mlflow.db"
    )
    experiment_name: str = "stride"
    artifact_root: str = Field(
        default="",
        description="artifact location (URI) of a newly created experiment; empty: mlartifacts/ beside a SQLite DB",
    )
    ui_url: str = Field(default=MLFLOW_UI_URL, description="base URL of `stride mlflow-ui`, for run links")
    enabled: bool = True

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()

    def resolved_artifact_root(self) -> str | None:
        return self.artifact_root or default_artifact_root(self.resolved_tracking_uri())

    def _client(self) -> Any:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = self.resolved_tracking_uri()
        if db := sqlite_path(uri):
            db.parent.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)

    def experiment_id(self, client: Any) -> str:
        """The experiment's id, creating it with an explicit artifact location (never cwd-relative)."""
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(self.experiment_name, artifact_location=self.resolved_artifact_root())
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def log_stage(
        self,
        context: dg.AssetExecutionContext,
        result: StageResult,
        extra_tags: Mapping[str, str] | None = None,
    ) -> dict[str, dg.MetadataValue]:
        """Log one stage result as an MLflow run; return the Dagster metadata that links to it."""
        if not self.enabled:
            return {}
        from mlflow.entities import Metric, Param

        client = self._client()
        exp_id = self.experiment_id(client)
        asset_key = context.asset_key.to_user_string()
        tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_asset_key": asset_key,
            "dagster_code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            "stride_stage": result.stage,
            "stride_data_version": result.fingerprint,
            **({"dagster_partition_key": context.partition_key} if context.has_partition_key else {}),
            **dict(extra_tags or {}),
        }
        run = client.create_run(exp_id, run_name=asset_key, tags=tags)
        run_id = run.info.run_id
        try:
            params = [Param(str(k), str(v)[:_MAX_PARAM_VALUE_CHARS]) for k, v in result.params.items()]
            for batch in _chunks(params, _MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=batch)
            now = int(time.time() * 1000)
            metrics = [
                Metric(str(k), f, now, 0) for k, v in result.metrics.items() if (f := _as_float(v)) is not None
            ]
            metrics += [
                Metric(str(name), float(value), now, int(step))
                for name, series in result.curves.items()
                for step, value in series
            ]
            for batch in _chunks(metrics, _MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=batch)
            for name, text in result.markdown.items():
                client.log_text(run_id, text, f"tables/{name}.md")
            for path in result.plots.values():
                client.log_artifact(run_id, str(path), artifact_path="plots")
            for path in result.files:
                client.log_artifact(run_id, str(path), artifact_path="files")
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        context.log.info(f"MLflow run {run_id} in experiment {self.experiment_name!r} ({self.resolved_tracking_uri()})")
        return {
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            "mlflow_run": dg.MetadataValue.url(self.run_url(exp_id, run_id)),
        }


def build_resources() -> dict[str, Any]:
    """The resources of the code location; the CLI chooses profile and storage via the environment."""
    return {
        "stride": StrideResource(
            profile=os.environ.get("STRIDE_PROFILE") or "default",
            storage_root=default_storage_root(),
        ),
        "mlflow": MlflowTracking(
            tracking_uri=default_tracking_uri(),
            artifact_root=default_artifact_root() or "",
        ),
    }
