"""The Dagster code location ``stride``: ``build_defs`` for the profile that ``STRIDE_PROFILE`` names
(default ``default``), with the executor that ``STRIDE_EXECUTOR`` names (see ``stride_assets/executors.py``).
Loaded by a daemon or webserver on an instance (``DAGSTER_HOME``), it checks that the instance serves
this profile and store (``stride_assets/location.py``)."""

import os

import dagster as dg

from stride_assets.defs import build_defs
from stride_assets.location import bind
from stride_assets.resources import profile_from_env
from stride_assets.tracking import default_storage_root


@dg.definitions
def defs() -> dg.Definitions:
    if os.environ.get("DAGSTER_HOME"):
        bind(os.environ["DAGSTER_HOME"], profile_from_env(), default_storage_root())
    return build_defs(profile_from_env())
