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

from itertools import product
from typing import Callable

import dagster as dg

from stride_assets.defs.assets import batch_partitions, shard_partitions
from stride_assets.defs.jobs import job_name
from stride_assets.defs.sensors import latest_materialization, recorded_digest
from stride_assets.engine import registry
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.shards import batch_digests, shard_digests
from stride_assets.engine.stages import STAGES


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


def _partition(keys: tuple[str, ...], block: dict[str, str]) -> str | dg.MultiPartitionKey | None:
    if not keys:
        return None
    if len(keys) == 1:
        return block[keys[0]]
    return dg.MultiPartitionKey(block)


def _depends(block: dict[str, str], upstream_block: dict[str, str]) -> bool:
    """Whether a block reads an upstream block: they agree on every key they share."""
    return all(block[k] == v for k, v in upstream_block.items() if k in block)


def plan(instance: dg.DagsterInstance, cfg: StrideConfig, only_changed: bool = False
         ) -> list[tuple[str, str | dg.MultiPartitionKey | None]]:
    """(job name, partition key) of every run to make, jobs in the order the stage table implies.

    ``only_changed``: a block runs when a stage of it reads the source and the source changed (as
    the sensor sees it), when a stage of it was never materialized for it, or when a block it reads
    (of an earlier job) runs.
    """
    shards, batches = register_partitions(instance, cfg)
    digests = {"shard": shards, "batch": batches}
    running: dict[str, list[dict[str, str]]] = {}
    runs = []
    for job, members in registry.jobs(STAGES).items():
        keys = members[0].keys
        dims = sorted(keys, key=("batch", "shard").index)  # a batch's blocks together
        blocks = [dict(zip(dims, combo)) for combo in product(*(list(digests[k]) for k in dims))]

        def stale(block: dict[str, str]) -> bool:
            key = _partition(keys, block)
            return (any(m.reads_source and recorded_digest(instance, m.name, str(key)) != digests[keys[0]][key]
                        for m in members)
                    or any(latest_materialization(instance, m.name, None if key is None else str(key)) is None
                           for m in members)
                    or any(_depends(block, up) for m in members for u in m.upstream for up in running.get(u, [])))

        chosen = [b for b in blocks if not only_changed or stale(b)]
        running.update({m.name: chosen for m in members})
        runs += [(job_name(job), _partition(keys, b)) for b in chosen]
    return runs


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
