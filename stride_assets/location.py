"""Which profile and store a Dagster instance serves: recorded in ``$DAGSTER_HOME/stride.json`` by the
first process that uses the instance (`stride run`, `stride ui`, the daemon or the webserver loading
the code location) and checked by every later one. The daemon and the UI load the code location from
the environment (``STRIDE_PROFILE``, ``STRIDE_HOME``); had they another profile than the store was
made with, a sensor tick would remove the user's shard partitions and attribute the wrong corpus. A
mismatch is a clear error naming both."""

from __future__ import annotations

from pathlib import Path

from stride_assets.engine.artifacts import read_json, write_json
from stride_assets.engine.config import profile_path
from stride_assets.engine.errors import StrideConfigError

BINDING = "stride.json"


def bind(dagster_home: str | Path, profile: str, storage_root: str | Path) -> dict[str, str]:
    """Record (first use) or check (later uses) the instance's profile and store; returns the binding."""
    path = Path(dagster_home) / BINDING
    current = {"profile": str(profile_path(profile).resolve()), "store": str(Path(storage_root).expanduser().resolve())}
    if not path.exists():
        write_json(current, path)
        return current
    recorded = read_json(path)
    if recorded != current:
        raise StrideConfigError(
            f"the Dagster instance {dagster_home} serves profile {recorded['profile']} and store {recorded['store']}, "
            f"but this process has profile {current['profile']} and store {current['store']}: set STRIDE_PROFILE "
            f"(--profile) and STRIDE_HOME (--store) to the instance's, or use another DAGSTER_HOME")
    return recorded
