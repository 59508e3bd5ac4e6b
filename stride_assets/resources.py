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
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from stride_assets import tracking
from stride_assets.engine.config import Profile, StrideConfig, load_profile
from stride_assets.engine.errors import StrideConfigError, StrideError
from stride_assets.engine.store import Store
from stride_assets.tracking import (DAGSTER_UI_URL, MLFLOW_UI_URL, default_artifact_root, default_storage_root,
                                    default_tracking_uri)

if TYPE_CHECKING:
    from stride_assets.engine.result import StageResult


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

    def load(self) -> Profile:
        """The profile with its overrides: the pipeline's config and the harness's sections."""
        return load_profile(self.profile, self.overrides())

    def config(self) -> StrideConfig:
        return self.load().config

    def root(self) -> Path:
        return Path(self.storage_root or default_storage_root()).expanduser().resolve()

    def store(self) -> Store:
        return Store(self.root())


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
    dagster_ui_url: str = Field(default=DAGSTER_UI_URL, description="base URL of the Dagster UI (`stride ui`), "
                                "for each MLflow run's `dagster_run_url` tag")
    enabled: bool = True
    strict: bool = Field(default=False, description="fail the step when MLflow cannot be reached, instead of "
                         "warning and keeping the run to log later (`stride mlflow-sync`)")

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()

    def resolved_artifact_root(self) -> str | None:
        return self.artifact_root or default_artifact_root(self.resolved_tracking_uri())

    def _client(self) -> Any:
        return tracking.client(self.resolved_tracking_uri())

    def experiment_id(self, client: Any) -> str:
        return tracking.experiment_id(client, self.experiment_name, self.resolved_artifact_root())

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return tracking.run_url(self.ui_url, experiment_id, run_id)

    def artifact_url(self, run_id: str, artifact_path: str) -> str:
        """Where `stride mlflow-ui` serves one artifact of a run (e.g. a plot, for an inline image)."""
        return f"{self.ui_url.rstrip('/')}/get-artifact?path={quote(artifact_path, safe='')}&run_uuid={run_id}"

    def dagster_run_url(self, dagster_run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{dagster_run_id}"

    def log_stage(
        self,
        context: dg.AssetExecutionContext,
        result: StageResult,
        extra_tags: Mapping[str, str] | None = None,
        pending: Path | None = None,
        started: float | None = None,
        sections: Iterable[str] = (),
        inputs: Mapping[str, Path] | None = None,
    ) -> dict[str, dg.MetadataValue]:
        """Log one stage result as an MLflow run; return the Dagster metadata that links to it.

        The run is named ``asset[partition]``, starts at ``started`` (epoch seconds the stage began;
        default now) and links back to the Dagster run (``dagster_run_url``). Its params are the scalar
        settings of the stage's own config ``sections``; every param is in its ``params.json``.
        ``inputs`` (name -> parquet file) become its dataset inputs. When MLflow cannot be reached the
        step goes on untracked (unless ``strict``): a loud warning, and the run is kept at ``pending``
        to be logged later by ``stride mlflow-sync``.
        """
        if not self.enabled:
            return {"mlflow": dg.MetadataValue.text("off")}
        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else None
        tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_run_url": self.dagster_run_url(context.run.run_id),
            "dagster_asset_key": asset_key,
            "dagster_code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            "stride_stage": result.stage,
            "stride_data_version": result.fingerprint,
            **({"dagster_partition_key": partition} if partition is not None else {}),
            **dict(extra_tags or {}),
        }
        texts = {f"tables/{name}.md": text for name, text in result.markdown.items()}
        texts["params.json"] = json.dumps(result.params, indent=2, sort_keys=True, default=str)
        run = dict(run_name=asset_key if partition is None else f"{asset_key}[{partition}]", tags=tags,
                   params=tracking.split_params(result.params, sections), metrics=result.metrics, curves=result.curves,
                   texts=texts, artifacts={"plots": list(result.plots.values()), "files": result.files},
                   inputs={k: str(v) for k, v in (inputs or {}).items()}, start_time=started)
        uri = self.resolved_tracking_uri()
        try:
            client = self._client()
            exp_id = self.experiment_id(client)
            run_id = tracking.log_run(client, exp_id, **run)
        except Exception as exc:
            if self.strict or pending is None:
                raise StrideError(f"MLflow tracking failed ({uri}): {exc} (set STRIDE_TRACKING=on to continue "
                                  "untracked, or off to skip tracking)") from exc
            kept = tracking.save_pending(pending, self.experiment_name, **run)
            context.log.warning(f"MLflow at {uri} failed ({type(exc).__name__}: {exc}); the step goes on UNTRACKED. "
                                f"Its run is kept in {kept}: log it with `stride mlflow-sync` once MLflow is back.")
            return {"mlflow": dg.MetadataValue.text(f"untracked: kept in {kept}")}
        context.log.info(f"MLflow run {run_id} in experiment {self.experiment_name!r} ({uri})")
        return {
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            "mlflow_run": dg.MetadataValue.url(self.run_url(exp_id, run_id)),
        }


TRACKING_MODES = {"on": (True, False), "strict": (True, True), "off": (False, False)}


def tracking_mode() -> tuple[bool, bool]:
    """(enabled, strict) from ``STRIDE_TRACKING``: on (default; warn and continue when MLflow is down),
    strict (fail instead), off (no tracking)."""
    mode = (os.environ.get("STRIDE_TRACKING") or "on").strip().lower()
    if mode not in TRACKING_MODES:
        raise StrideConfigError(f"STRIDE_TRACKING={mode!r} is not one of {', '.join(TRACKING_MODES)}")
    return TRACKING_MODES[mode]


def profile_from_env() -> str:
    """The profile the code location serves: ``STRIDE_PROFILE`` (the one place it is read), default ``default``."""
    return os.environ.get("STRIDE_PROFILE") or "default"


def build_resources(profile: str | None = None, storage_root: str | None = None) -> dict[str, Any]:
    """The resources of the code location (profile from the environment unless given)."""
    return {
        "stride": StrideResource(
            profile=profile or profile_from_env(),
            storage_root=storage_root or default_storage_root(),
        ),
        "mlflow": MlflowTracking(
            tracking_uri=default_tracking_uri(),
            artifact_root=default_artifact_root() or "",
            enabled=tracking_mode()[0],
            strict=tracking_mode()[1],
        ),
    }
