"""What a stage is: one ``StageSpec`` per stage, from which everything else is derived.

The pipeline's specs are the table in ``stages/__init__.py`` (the quality harness has its own in
``evaluation/stages.py``). The engine runs a stage from its spec (``run``), the Dagster layer
builds its asset, partitions, checks, automation and job from it, and ``stride run`` plans its
blocks from it. Adding a stage is one entry there plus one module with its ``run`` function.

A stage's code version hashes the code that runs for it: its own module, the engine modules it
declares in ``modules`` (those that compute its output; the store's readers, atomic writers,
errors and plots are left out), and the values of the config sections it declares in
``sections``. Editing a helper therefore marks exactly the stages that run it (and, in Dagster,
what is downstream) stale; ``tests/test_registry.py`` checks that on an edited copy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from stride_assets.engine.checks import Check
from stride_assets.engine.result import StageResult

PACKAGE = "stride_assets.engine"
Log = Callable[[str], None]


@dataclass(frozen=True)
class StageSpec:
    """One stage: its function, where it sits in the graph, and how Dagster shows and runs it."""

    name: str
    run: Callable[..., StageResult]  # run(cfg, store, log, **keys) -> StageResult
    upstream: tuple[str, ...] = ()  # stages whose artifacts it reads
    keys: tuple[str, ...] = ()  # partition keys of a block: "shard", "batch" (both: a perturbation block), "retrain"
    sections: tuple[str, ...] = ()  # config sections (dotted paths into cfg) its output depends on
    modules: tuple[str, ...] = ()  # engine modules (under stride_assets.engine) that compute its output
    reads_source: bool = False  # reads the raw corpus/queries; records their digest as ``source_digest``
    group: str = ""  # Dagster asset group
    kinds: tuple[str, ...] = ()  # Dagster kinds (the UI's tags), besides "mlflow"
    eager: bool = False  # re-materializes by itself when an upstream block changes (declarative automation)
    triggers: tuple[str, ...] = ()  # the upstream stages whose updates re-run it (empty: every upstream)
    job: str = ""  # the layer job that runs it: stages of one job share their keys
    checks: tuple[Check, ...] = ()  # evaluated on its result, emitted with its materialization
    configure: Callable[[Any], Any] | None = None  # profile -> the config object ``run`` takes (None: the pipeline's)
    methods: tuple[str, ...] = ()  # the attribution methods whose runs have this stage (empty: every method)

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip()

    @property
    def module(self) -> str:
        return self.run.__module__


def for_method(specs: Iterable[StageSpec], method: str) -> tuple[StageSpec, ...]:
    """The specs that belong to attribution method ``method`` (one per name)."""
    chosen = tuple(s for s in specs if not s.methods or method in s.methods)
    names = [s.name for s in chosen]
    if not chosen or len(set(names)) != len(names):
        raise ValueError(f"attribution method {method!r}: stage table has {sorted(names)}")
    return chosen


def by_name(specs: Iterable[StageSpec]) -> dict[str, StageSpec]:
    return {s.name: s for s in specs}


def _reach(start: Iterable[str], step: Callable[[str], Iterable[str]]) -> set[str]:
    """Every name reached from ``start`` by repeating ``step`` (``start`` included)."""
    found: set[str] = set()
    frontier = set(start)
    while frontier:
        found |= frontier
        frontier = {n for f in frontier for n in step(f)} - found
    return found


def downstream(specs: Iterable[StageSpec], name: str) -> set[str]:
    """Every stage that reads ``name``'s artifacts, directly or through others."""
    specs = list(specs)
    readers = {s.name: [r.name for r in specs if s.name in r.upstream] for s in specs}
    return _reach(readers[name], readers.__getitem__)


def upstream(specs: Iterable[StageSpec], name: str) -> set[str]:
    """Every stage whose artifacts ``name`` reads, directly or through others."""
    by = by_name(specs)
    return _reach(by[name].upstream, lambda n: by[n].upstream)


def jobs(specs: Iterable[StageSpec]) -> dict[str, list[StageSpec]]:
    """Stages grouped by job, jobs in an order that runs every upstream job first (ties: table order)."""
    members: dict[str, list[StageSpec]] = {}
    for spec in specs:
        if spec.job:
            members.setdefault(spec.job, []).append(spec)
    for job, group in members.items():
        if len({m.keys for m in group}) != 1:
            raise ValueError(f"job {job!r} mixes stages partitioned by {sorted({m.keys for m in group})}")
    job_of = {s.name: job for job, group in members.items() for s in group}
    needs = {job: {job_of[u] for s in group for u in s.upstream if u in job_of} - {job} for job, group in members.items()}
    ordered: dict[str, list[StageSpec]] = {}
    while len(ordered) < len(members):
        ready = [j for j in members if j not in ordered and needs[j] <= set(ordered)]
        if not ready:
            raise ValueError(f"jobs depend on each other in a cycle: {sorted(set(members) - set(ordered))}")
        ordered[ready[0]] = members[ready[0]]
    return ordered


# ---------------------------------------------------------------- code versions
def _module_file(module: str) -> Path:
    loaded = sys.modules.get(module) or importlib.import_module(module)
    return Path(loaded.__file__)


def code_modules(spec: StageSpec) -> tuple[str, ...]:
    """The modules whose source makes a stage's code version: its own and those it declares."""
    return tuple(sorted({spec.module, *(f"{PACKAGE}.{m}" for m in spec.modules)}))


def _section(dumped: dict[str, Any], dotted: str) -> Any:
    value: Any = dumped
    for part in dotted.split("."):
        value = value[part]
    return value


def code_version(spec: StageSpec, cfg: Any) -> str:
    """Hash of what a stage computes: the code that runs for it and its settings."""
    h = hashlib.sha256()
    for module in code_modules(spec):
        h.update(module.encode())
        h.update(_module_file(module).read_bytes())
    dumped = cfg.model_dump(mode="json")
    h.update(json.dumps({s: _section(dumped, s) for s in spec.sections}, sort_keys=True).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- running
def execute(spec: StageSpec, cfg: Any, store: Any, log: Log = print, **keys: str) -> StageResult:
    """Run one block of a stage (``keys`` as in ``spec.keys``); its upstream artifacts must be in ``store``."""
    if set(keys) != set(spec.keys) or any(v is None for v in keys.values()):
        raise KeyError(f"stage {spec.name!r} takes the keys {spec.keys or 'none'}; got {keys or 'none'}")
    start = time.perf_counter()
    result = spec.run(cfg, store, log, **keys)
    result.metadata.setdefault("seconds", time.perf_counter() - start)
    if "shard" in keys and (version := store.shard_version(keys["shard"])) is not None:
        result.params.setdefault("data_version", version)  # which passages the block was made from
    return result

