"""The Dagster code location ``stride``: the defs folder, the resources, and the executor that
``STRIDE_EXECUTOR`` names (in-process by default; see ``stride_assets/executors.py``)."""

from pathlib import Path

import dagster as dg

import stride_assets
from stride_assets.executors import executor_from_env
from stride_assets.resources import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(stride_assets.__file__).parent),
        dg.Definitions(resources=build_resources(), executor=executor_from_env()),
    )
