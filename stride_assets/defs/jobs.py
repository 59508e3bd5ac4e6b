"""Jobs, one per kind of block (Dagster runs one partition key per run), and the nightly schedule.

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

import dagster as dg



def _job(name: str, selection: dg.AssetSelection, description: str) -> "dg.JobDefinition":
    return dg.define_asset_job(name, selection=selection, description=description)


model_job = _job("stride_model_job", dg.AssetSelection.assets("base_model"), "Load (or train) the frozen base model.")
shard_job = _job("stride_shard_job", dg.AssetSelection.assets("training_corpus", "subset_design", "steering_operators"),
                 "One shard: its passages, subset design and operator bank.")
queries_job = _job("stride_queries_job", dg.AssetSelection.assets("query_set"), "One query batch.")
measure_job = _job("stride_measure_job", dg.AssetSelection.assets("perturbation_matrix"),
                   "One block of responses: a query batch x a shard's operators.")
recovery_job = _job("stride_recovery_job", dg.AssetSelection.assets("influence_scores"),
                    "One query batch's influence over every shard.")
curation_job = _job("stride_curation_job", dg.AssetSelection.groups("curation"),
                    "The curated outputs from the current influence scores.")
# in the order `stride run` runs them, with the keys their runs take
RUN_ORDER: list[tuple[str, tuple[str, ...]]] = [
    ("stride_model_job", ()), ("stride_shard_job", ("shard",)), ("stride_queries_job", ("batch",)),
    ("stride_measure_job", ("shard", "batch")), ("stride_recovery_job", ("batch",)), ("stride_curation_job", ()),
]

stride_nightly = dg.ScheduleDefinition(
    name="stride_nightly",
    job=curation_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-derive the curated outputs at 03:00 every night (runs when the daemon runs).",
)
