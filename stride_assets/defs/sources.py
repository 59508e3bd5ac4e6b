"""The corpus as Dagster sees it from outside: an external asset whose partitions are the shards.

The corpus sensor reports a materialization of ``corpus_source[shard]`` whenever a shard's bytes
change (a new shard, or an edited one), with the shard's content hash as its data version. So the
UI shows which shards are recorded (100% filled once every shard is), when each last changed and
its digest, and a changed shard marks only its own blocks stale. (An observable source asset never
counts as materialized, so its partitions showed "0% filled" forever.)
"""

import dagster as dg

from stride_assets.defs.assets import shard_partitions

SOURCE = "corpus_source"

corpus_source = dg.AssetSpec(
    SOURCE,
    partitions_def=shard_partitions,
    group_name="data",
    kinds={"parquet"},
    description="The configured corpus source (files, pydoc or a datasets dataset), one partition per shard; "
    "its data version is the shard's content hash. Recorded by corpus_sensor when a shard's content changes.",
)


def source_event(shard: str, digest: str) -> dg.AssetMaterialization:
    """The record of one shard's current content (its digest as the data version)."""
    return dg.AssetMaterialization(asset_key=SOURCE, partition=shard, tags={"dagster/data_version": digest},
                                   metadata={"digest": digest})
