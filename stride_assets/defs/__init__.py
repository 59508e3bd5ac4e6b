"""The Dagster layer: every definition of the code location, built in one place from the stage specs.

    build_defs(profile="micro", storage_root="/tmp/s")   # what definitions.py calls, profile from the env

The assets (with their checks) come from the pipeline's stage table of the profile's attribution
method and the harness's stage table, the jobs
from the stages' ``job``, the sensor and schedule from those jobs. Nothing is read from the
environment here: the caller passes the profile.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from stride_assets.defs.assets import stage_assets
from stride_assets.defs.automation import automation_sensor
from stride_assets.defs.jobs import build_jobs, nightly
from stride_assets.defs.sensors import corpus_sensor
from stride_assets.defs.sources import corpus_source
from stride_assets.engine.config import load_profile
from stride_assets.engine.evaluation.config import EvaluationRun
from stride_assets.engine.evaluation.pipeline_eval import EVALUATION_STAGES, retrain_keys
from stride_assets.engine.stages import stages_for
from stride_assets.executors import executor_from_env
from stride_assets.resources import build_resources



def build_defs(profile: str = "default", storage_root: str | None = None, resources: dict[str, Any] | None = None,
               executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """The code location for ``profile`` (its code versions and retrain partitions come from it)."""
    loaded = load_profile(profile)
    specs = [*stages_for(loaded.config.attribution.method), *EVALUATION_STAGES]
    jobs = build_jobs(specs)
    by_stage = {spec.name: jobs[spec.job] for spec in specs if spec.job}
    return dg.Definitions(
        assets=[corpus_source, *stage_assets(specs, loaded, retrain_keys(EvaluationRun.from_profile(loaded)))],
        jobs=list(jobs.values()),
        sensors=[corpus_sensor(by_stage["training_corpus"], by_stage["query_set"]), automation_sensor(specs)],
        schedules=[nightly(by_stage["curated_dataset"])],
        resources=resources if resources is not None else build_resources(profile, storage_root),
        executor=executor or executor_from_env(),
    )
