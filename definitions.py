"""The Dagster code location ``stride``: ``build_defs`` for the profile that ``STRIDE_PROFILE`` names
(default ``default``), with the executor that ``STRIDE_EXECUTOR`` names (see ``stride_assets/executors.py``)."""

import dagster as dg

from stride_assets.defs import build_defs
from stride_assets.resources import profile_from_env


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(profile_from_env())
