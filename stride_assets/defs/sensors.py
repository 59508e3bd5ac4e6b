"""Re-attribution when the data changes: the corpus sensor.

Each tick lists the corpus shards and query batches with their content hashes (the engine's
``shards`` module). It registers new ones as dynamic partitions, forgets removed ones, records
a shard's hash as a materialization of ``corpus_source[shard]`` when it differs from the one
recorded last (only new or edited shards add events, not every shard on every tick), and starts
a run for every shard (or batch) whose latest materialization was made from other data: the new shard's operators only, existing
banks untouched. Declarative automation (``AutomationCondition.eager``) then measures the new
blocks, re-solves the affected query batches and refreshes the curated outputs.
"""

from typing import Any

import dagster as dg

from stride_assets.defs.assets import batch_partitions, shard_partitions
from stride_assets.defs.sources import SOURCE, source_event
from stride_assets.engine.shards import batch_digests, shard_digests
from stride_assets.resources import StrideResource

TICK_SECONDS = 15  # listing and hashing the shards is cheap; a new file is picked up within ~15 s


def latest_materialization(instance: dg.DagsterInstance, asset: str,
                           partition: str | None = None) -> dg.AssetMaterialization | None:
    """The latest materialization of ``asset`` (of one partition when given), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0].asset_materialization if records else None


def recorded_digest(instance: dg.DagsterInstance, asset: str, partition: str) -> str | None:
    """The source digest the latest materialization of ``asset[partition]`` was made from."""
    event = latest_materialization(instance, asset, partition)
    value = event.metadata.get("source_digest") if event is not None else None
    return None if value is None else str(value.value)


def source_changes(instance: dg.DagsterInstance, digests: dict[str, str]) -> list[dg.AssetMaterialization]:
    """A ``corpus_source`` record for each shard whose digest is not the one recorded last."""
    events = []
    for shard, digest in digests.items():
        last = latest_materialization(instance, SOURCE, shard)
        if last is None or last.tags.get("dagster/data_version") != digest:
            events.append(source_event(shard, digest))
    return events


def _plan(context: dg.SensorEvaluationContext, digests: dict[str, str], partitions: dg.DynamicPartitionsDefinition,
          asset: str, job) -> tuple[list, list[dg.RunRequest]]:
    known = set(context.instance.get_dynamic_partitions(partitions.name))
    requests = []
    for key, digest in digests.items():
        if recorded_digest(context.instance, asset, key) != digest:
            # the run key makes a pending or finished request for these exact bytes a no-op on later ticks
            requests.append(dg.RunRequest(run_key=f"{key}@{digest[:16]}", partition_key=key, job_name=job.name,
                                          tags={"stride/reason": "new" if key not in known else "changed"}))
    new, gone = sorted(set(digests) - known), sorted(known - set(digests))
    changes = ([partitions.build_add_request(new)] if new else []) + ([partitions.build_delete_request(gone)] if gone else [])
    return changes, requests


def corpus_sensor(shard_job: Any,
                  queries_job: Any) -> dg.SensorDefinition:
    """The sensor that starts ``shard_job`` for new/changed shards and ``queries_job`` for batches."""

    @dg.sensor(
        name="corpus_sensor",
        jobs=[shard_job, queries_job],
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds new corpus shards and query batches as partitions and attributes what changed.",
    )
    def _sensor(context: dg.SensorEvaluationContext, stride: StrideResource) -> dg.SensorResult:
        cfg = stride.config()
        shards = shard_digests(cfg.corpus)
        shard_changes, shard_runs = _plan(context, shards, shard_partitions, "training_corpus", shard_job)
        batch_changes, batch_runs = _plan(context, batch_digests(cfg), batch_partitions, "query_set", queries_job)
        return dg.SensorResult(run_requests=shard_runs + batch_runs,
                               dynamic_partitions_requests=shard_changes + batch_changes,
                               asset_events=source_changes(context.instance, shards))

    return _sensor
