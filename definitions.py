"""The Dagster code location ``stride``: the defs folder, the resources, an in-process executor."""

from pathlib import Path

import dagster as dg

import stride_assets
from stride_assets.resources import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(stride_assets.__file__).parent),
        dg.Definitions(resources=build_resources(), executor=dg.in_process_executor),
    )
