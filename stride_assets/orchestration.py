"""Run every block of the pipeline through Dagster, in order: what `stride run` does.

Dagster runs one partition key per run, so a full attribution is a sequence of runs of the
layer jobs (``defs/jobs.py``): the model, each shard, each query batch, each (batch, shard)
block, each batch's recovery, then the curated outputs. Partitions are registered first from
the engine's listing of the corpus, exactly as the corpus sensor does in a deployment. With
``only_changed`` the shard and batch runs are limited to what the sensor would start (new or
changed data) and the later layers to blocks whose inputs were just rebuilt: the incremental
update, as a single command.
"""

from __future__ import annotations

from typing import Callable

import dagster as dg

from stride_assets.defs.assets import batch_partitions, shard_partitions
from stride_assets.defs.jobs import RUN_ORDER
from stride_assets.defs.sensors import latest_materialization, recorded_digest
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.shards import batch_digests, shard_digests


def register_partitions(instance: dg.DagsterInstance, cfg: StrideConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Make the dynamic partitions match the corpus shards and query batches; returns their digests."""
    shards, batches = shard_digests(cfg.corpus), batch_digests(cfg)
    for part, digests in ((shard_partitions, shards), (batch_partitions, batches)):
        known = set(instance.get_dynamic_partitions(part.name))
        if set(digests) - known:
            instance.add_dynamic_partitions(part.name, sorted(set(digests) - known))
        for gone in sorted(known - set(digests)):
            instance.delete_dynamic_partition(part.name, gone)
    return shards, batches


def _has(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> bool:
    return latest_materialization(instance, asset, partition) is not None


def plan(instance: dg.DagsterInstance, cfg: StrideConfig, only_changed: bool = False
         ) -> list[tuple[str, str | dg.MultiPartitionKey | None]]:
    """(job name, partition key) of every run to make, in order.

    ``only_changed``: shards and batches whose data changed (as the sensor sees it), the blocks
    they touch or that were never measured, the recovery of every batch with a new block, and
    the curated outputs when any recovery ran.
    """
    shards, batches = register_partitions(instance, cfg)

    def changed(asset: str, key: str, digest: str) -> bool:
        return not only_changed or recorded_digest(instance, asset, key) != digest

    run_shards = [s for s, d in shards.items() if changed("training_corpus", s, d)]
    run_batches = [b for b, d in batches.items() if changed("query_set", b, d)]
    blocks = [dg.MultiPartitionKey({"batch": b, "shard": s}) for b in batches for s in shards
              if not only_changed or s in run_shards or b in run_batches
              or not _has(instance, "perturbation_matrix", str(dg.MultiPartitionKey({"batch": b, "shard": s})))]
    recover = [b for b in batches if not only_changed or any(k.keys_by_dimension["batch"] == b for k in blocks)
               or not _has(instance, "influence_scores", b)]
    plans = {
        "stride_model_job": [None] if not (only_changed and _has(instance, "base_model")) else [],
        "stride_shard_job": run_shards, "stride_queries_job": run_batches, "stride_measure_job": blocks,
        "stride_recovery_job": recover,
        "stride_curation_job": [None] if recover or not (only_changed and _has(instance, "curated_dataset")) else [],
    }
    return [(job, key) for job, _keys in RUN_ORDER for key in plans[job]]


def run_pipeline(defs: dg.Definitions, instance: dg.DagsterInstance, cfg: StrideConfig, *, only_changed: bool = False,
                 run_config: dict | None = None, loggers: dict | None = None,
                 log: Callable[[str], None] = print) -> list[dg.ExecuteInProcessResult]:
    """Execute the planned runs in process; stops at the first failed run (returned last)."""
    results = []
    for job_name, key in plan(instance, cfg, only_changed):
        job = defs.resolve_job_def(job_name)
        if loggers:
            job = job.with_logger_defs(loggers)
        log(f"run {job_name}" + (f" [{key}]" if key is not None else ""))
        result = job.execute_in_process(instance=instance, partition_key=key, run_config=run_config or {},
                                        raise_on_error=False)
        results.append(result)
        if not result.success:
            break
    return results
