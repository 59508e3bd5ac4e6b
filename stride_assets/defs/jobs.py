"""Jobs, one per kind of block, derived from the stages' ``job`` (Dagster runs one partition key per
run), and the nightly schedule.

    stride_model_job      base_model
    stride_shard_job      training_corpus -> subset_design -> steering_operators   [shard]
    stride_queries_job    query_set                                                  [batch]
    stride_measure_job    perturbation_matrix                                        [batch|shard]
    stride_recovery_job   influence_scores                                           [batch]
    stride_curation_job   curated outputs (unpartitioned)

`stride run` runs them in order over every block; in a deployment the corpus sensor starts the
shard and query jobs and declarative automation the rest.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from stride_assets.engine import registry
from stride_assets.engine.registry import StageSpec


def job_name(job: str) -> str:
    return f"stride_{job}_job"


def build_jobs(specs: list[StageSpec]) -> dict[str, Any]:
    """One job per ``job`` of the stages, in the order of their first stage: {job: definition}."""
    return {job: dg.define_asset_job(job_name(job), selection=dg.AssetSelection.assets(*(m.name for m in members)),
                                     description="Materialize " + " -> ".join(m.name for m in members) +
                                     (f", one run per {' x '.join(members[0].keys)}" if members[0].keys else ""))
            for job, members in registry.jobs(specs).items()}


def nightly(curation_job: Any) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="stride_nightly",
        job=curation_job,
        cron_schedule="0 3 * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Re-derive the curated outputs at 03:00 every night (runs when the daemon runs).",
    )
