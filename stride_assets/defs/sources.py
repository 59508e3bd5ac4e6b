"""The corpus as Dagster sees it from outside: an observable source whose partitions are the shards,
each with the content hash of its data as its data version."""

import warnings

import dagster as dg

from stride_assets.defs.assets import shard_partitions
from stride_assets.engine.shards import shard_digests
from stride_assets.resources import StrideResource


def _observe(stride: StrideResource) -> dg.DataVersionsByPartition:
    return dg.DataVersionsByPartition(shard_digests(stride.config().corpus))


with warnings.catch_warnings():  # observable source assets are beta in Dagster 1.13, and this one says so
    warnings.simplefilter("ignore", dg.BetaWarning)
    corpus_source = dg.observable_source_asset(
        name="corpus_source",
        partitions_def=shard_partitions,
        group_name="data",
        description="The configured corpus source (files, pydoc or a datasets dataset), one partition per shard; "
        "its data version is the shard's content hash. Observed by corpus_sensor.",
    )(_observe)
