"""The Dagster executor of the code location, chosen by the environment.

Scaling stride out means switching Dagster's executor and instance storage, never writing a
scheduler of our own. ``STRIDE_EXECUTOR`` picks where the steps of a run execute:

- ``in_process`` (default): every step in the run's own process; one small machine.
- ``multiprocess``: each step in a child process, at most ``STRIDE_MAX_CONCURRENT`` (default 2)
  at a time; one bigger machine.
- ``docker`` (``dagster_docker.docker_executor``): each step in its own container.
- ``k8s`` (``dagster_k8s.k8s_job_executor``): each step in its own Kubernetes pod.

The cluster executors come from the optional ``cluster`` extra and are imported only when
chosen, so loading the definitions never needs them. Their limit on concurrent steps is set
only when ``STRIDE_MAX_CONCURRENT`` is; image, namespace and the like come from the run launcher
of the instance (``resources/cluster/``) or from run config. Across shards the fan-out is one run
per partition (a backfill), bounded by the instance's run queue, whatever the executor.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import dagster as dg

from stride_assets.engine.errors import StrideConfigError

DEFAULT_EXECUTOR = "in_process"
DEFAULT_MAX_CONCURRENT = 2
CLUSTER_EXTRA = "pip install -e .[cluster]"


def _optional(module: str, attr: str, package: str) -> dg.ExecutorDefinition:
    """``module.attr`` from an optional integration package, or an error naming what to install."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise StrideConfigError(
            f"STRIDE_EXECUTOR needs the {package} package, which is not installed: {CLUSTER_EXTRA}"
        ) from exc


def _max_concurrent(default: int | None) -> int | None:
    """``STRIDE_MAX_CONCURRENT`` as a positive int, or ``default`` when unset."""
    raw = os.environ.get("STRIDE_MAX_CONCURRENT", "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StrideConfigError(f"STRIDE_MAX_CONCURRENT must be a positive integer, got {raw!r}")
    return value


def _limited(executor: dg.ExecutorDefinition, max_concurrent: int | None) -> dg.ExecutorDefinition:
    return executor if max_concurrent is None else executor.configured({"max_concurrent": max_concurrent})


# name -> a function building the executor (a function, so optional packages import only when chosen)
EXECUTORS: dict[str, Callable[[], dg.ExecutorDefinition]] = {
    "in_process": lambda: dg.in_process_executor,
    "multiprocess": lambda: _limited(dg.multiprocess_executor, _max_concurrent(DEFAULT_MAX_CONCURRENT)),
    "docker": lambda: _limited(_optional("dagster_docker", "docker_executor", "dagster-docker"), _max_concurrent(None)),
    "k8s": lambda: _limited(_optional("dagster_k8s", "k8s_job_executor", "dagster-k8s"), _max_concurrent(None)),
}


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor ``STRIDE_EXECUTOR`` names (default ``in_process``)."""
    name = (os.environ.get("STRIDE_EXECUTOR") or DEFAULT_EXECUTOR).strip().lower()
    if name not in EXECUTORS:
        raise StrideConfigError(f"STRIDE_EXECUTOR={name!r} is not one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name]()
