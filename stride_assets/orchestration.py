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

import os
import socket
from itertools import product
from typing import Callable

import dagster as dg

from stride_assets.defs.assets import batch_partitions, shard_partitions
from stride_assets.defs.jobs import job_name
from stride_assets.defs.sensors import latest_materialization, recorded_digest
from stride_assets.engine import registry
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.shards import batch_digests, shard_digests
from stride_assets.engine.stages import stages_for
from stride_assets.engine.store import Store, block_key


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


def _storage_key(keys: tuple[str, ...], block: dict[str, str]) -> str | None:
    if set(keys) == {"shard", "batch"}:
        return block_key(block["shard"], block["batch"])
    return block[keys[0]] if keys else None


def code_versions(defs: dg.Definitions) -> dict[str, str]:
    """Each asset's code version as the code location defines it."""
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): graph.get(key).code_version or "" for key in graph.materializable_asset_keys}


def plan(instance: dg.DagsterInstance, cfg: StrideConfig, only_changed: bool = False, store: Store | None = None,
         versions: dict[str, str] | None = None) -> list[tuple[str, str | dg.MultiPartitionKey | None]]:
    """(job name, partition key) of every run to make, jobs in the order the stage table implies.

    ``only_changed``: a block runs when a stage of it reads the source and the source changed (as
    the sensor sees it), when a stage of it has no materialization for it, or one made by other code
    or settings (a code version other than ``versions``, the code location's), when its files in
    ``store`` are missing or not what was written (``Store.intact``), or when a block it reads (of an
    earlier job) runs.
    """
    shards, batches = register_partitions(instance, cfg)
    digests = {"shard": shards, "batch": batches}
    running: dict[str, list[dict[str, str]]] = {}
    runs = []
    for job, members in registry.jobs(stages_for(cfg.attribution.method)).items():
        keys = members[0].keys
        dims = sorted(keys, key=("batch", "shard").index)  # a batch's blocks together
        blocks = [dict(zip(dims, combo)) for combo in product(*(list(digests[k]) for k in dims))]
        def outdated(stage: str, key: str | dg.MultiPartitionKey | None, block: dict[str, str]) -> bool:
            event = latest_materialization(instance, stage, None if key is None else str(key))
            return (event is None
                    or (versions is not None and event.tags.get("dagster/code_version") != versions[stage])
                    or (store is not None and not store.intact(stage, _storage_key(keys, block))))

        def stale(block: dict[str, str]) -> bool:
            key = _partition(keys, block)
            return (any(m.reads_source and recorded_digest(instance, m.name, str(key)) != digests[keys[0]][key]
                        for m in members)
                    or any(outdated(m.name, key, block) for m in members)
                    or any(_depends(block, up) for m in members for u in m.upstream for up in running.get(u, [])))

        chosen = [b for b in blocks if not only_changed or stale(b)]
        running.update({m.name: chosen for m in members})
        runs += [(job_name(job), _partition(keys, b)) for b in chosen]
    return runs


OWNER_TAGS = ("stride/host", "stride/pid")  # which process executes a `stride run` run


def owner_tags() -> dict[str, str]:
    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(os.getpid()))))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs whose `stride run` process on this machine is gone (killed, or the
    machine restarted): otherwise they stay STARTED forever and, with one run at a time, block the
    queue. Runs of other machines and of the daemon are left to Dagster's run monitoring. Returns their ids."""
    host, failed = socket.gethostname(), []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
                                                         dg.DagsterRunStatus.NOT_STARTED])):
        pid = run.tags.get("stride/pid")
        if run.tags.get("stride/host") == host and pid and int(pid) != os.getpid() and not _alive(int(pid)):
            instance.report_run_failed(run, f"its stride run process (pid {pid}) is gone: marked failed by stride")
            failed.append(run.run_id)
    return failed


def run_pipeline(defs: dg.Definitions, instance: dg.DagsterInstance, cfg: StrideConfig, *, only_changed: bool = False,
                 run_config: dict | None = None, loggers: dict | None = None, store: Store | None = None,
                 log: Callable[[str], None] = print) -> list[dg.ExecuteInProcessResult]:
    """Execute the planned runs in process; stops at the first failed run (returned last)."""
    results = []
    for job_name, key in plan(instance, cfg, only_changed, store, code_versions(defs)):
        job = defs.resolve_job_def(job_name)
        if loggers:
            job = job.with_logger_defs(loggers)
        log(f"run {job_name}" + (f" [{key}]" if key is not None else ""))
        result = job.execute_in_process(instance=instance, partition_key=key, run_config=run_config or {},
                                        raise_on_error=False, tags=owner_tags())
        results.append(result)
        if not result.success:
            break
    return results
