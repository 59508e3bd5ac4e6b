"""Every attribution method of the quality harness, behind one interface (``AttributionMethod``:
``cache(task, trained)`` once, then ``attribute(split, **option) -> MethodResult`` with scores
(Q, n); a positive score means training on the example lowers the query's loss).

``METHODS`` maps a name to a factory of the method (its settings as keyword arguments). The
baselines are functions ``fn(task, trained, split, **settings)`` wrapped as ``FunctionMethod``;
STRIDE is ``StrideMethod`` (``stride.py``, over the engine's facade).

| name | family | module |
|---|---|---|
| grad_dot, grad_cos, tracin | per-example gradients | gradients |
| logra | Gauss-Newton-weighted projected influence (TRAK-like; CountSketch projection) | gradients |
| repsim, tfidf | similarity of representations / of texts | similarity |
| if_exact | exact influence function on the last linear layer | influence |
| dattri_trak_1, dattri_trak_5 | dattri's TRAK (optional dependency) | dattri_methods |
| kronfluence_ekfac, kronfluence_kfac, kronfluence_diagonal | Kronfluence's influence functions (damping chosen on validation) | kronfluence_methods |
| bergson_ekfac, bergson_trackstar | Bergson's EK-FAC and TrackStar (optional dependency; LM tasks only; damping chosen on validation) | bergson_methods |
| stride | STRIDE: sparse recovery from subset perturbations (``config=StrideConfig``) | stride |
| stride_sweep | STRIDE trained once per config (``configs={label: StrideConfig}``), the config chosen on validation | stride |
| ensemble | two methods standardised per query and blended (default STRIDE + EK-FAC) | ensemble |
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from stride_assets.engine.evaluation.methods.base import AttributionMethod, FunctionMethod, MethodResult
from stride_assets.engine.evaluation.methods.bergson_methods import GRIDS as BERGSON_GRIDS
from stride_assets.engine.evaluation.methods.bergson_methods import BergsonMethod, bergson_available
from stride_assets.engine.evaluation.methods.bergson_methods import supports as bergson_supports
from stride_assets.engine.evaluation.methods.dattri_methods import (
    dattri_available,
    dattri_lds,
    dattri_trak_1,
    dattri_trak_5,
)
from stride_assets.engine.evaluation.methods.gradients import (
    CountSketch,
    grad_cos,
    grad_dot,
    logra,
    per_example_grads,
    tracin,
)
from stride_assets.engine.evaluation.methods.influence import IF_EXACT_MAX_PARAMS, if_exact, last_layer_size
from stride_assets.engine.evaluation.methods.similarity import repsim, tfidf
from stride_assets.engine.evaluation.methods.ensemble import EnsembleMethod
from stride_assets.engine.evaluation.methods.kronfluence_methods import DAMPING_GRID as KRONFLUENCE_DAMPING
from stride_assets.engine.evaluation.methods.kronfluence_methods import KronfluenceMethod
from stride_assets.engine.evaluation.methods.stride import StrideMethod, StrideSweep
from stride_assets.engine.evaluation.task import Task, Trained

BASELINES: dict[str, Callable[..., MethodResult]] = {
    "grad_dot": grad_dot,
    "grad_cos": grad_cos,
    "tracin": tracin,
    "logra": logra,
    "repsim": repsim,
    "tfidf": tfidf,
    "if_exact": if_exact,
    "dattri_trak_1": dattri_trak_1,
    "dattri_trak_5": dattri_trak_5,
}


def _function_method(fn: Callable[..., MethodResult]) -> Callable[..., AttributionMethod]:
    def make(**settings: Any) -> AttributionMethod:
        return FunctionMethod(fn, settings)

    return make


def _kronfluence(strategy: str) -> Callable[..., AttributionMethod]:
    def make(**settings: Any) -> AttributionMethod:
        return KronfluenceMethod(strategy, **settings)

    return make


def _bergson(strategy: str) -> Callable[..., AttributionMethod]:
    def make(**settings: Any) -> AttributionMethod:
        return BergsonMethod(strategy, **settings)

    return make


PEERS: dict[str, Callable[..., AttributionMethod]] = {
    f"kronfluence_{strategy}": _kronfluence(strategy) for strategy in ("ekfac", "kfac", "diagonal")}
# optional peers: listed by ``applicable`` only where installed and the task is supported
OPTIONAL_PEERS: dict[str, Callable[..., AttributionMethod]] = {
    f"bergson_{strategy}": _bergson(strategy) for strategy in ("ekfac", "trackstar")}

METHODS: dict[str, Callable[..., AttributionMethod]] = {
    **{name: _function_method(fn) for name, fn in BASELINES.items()},
    **PEERS,
    **OPTIONAL_PEERS,
    "stride": StrideMethod,
    "stride_sweep": StrideSweep,
    "ensemble": EnsembleMethod,
}


def score_method(name: str, task: Task, trained: Trained, split: str, **settings: Any) -> MethodResult:
    """One method, cached on ``task`` and run on one split: the shortest way to its scores."""
    method = METHODS[name](**settings)
    method.cache(task, trained)
    return method.attribute(split)


def applicable(task: Task, model: nn.Module | None = None) -> list[str]:
    """The registry's baselines that apply to ``task`` (in registry order; STRIDE is configured per suite).

    - tfidf: only for tasks with texts;
    - if_exact: only for classifiers whose last linear layer has at most ``IF_EXACT_MAX_PARAMS`` parameters
      (on the quick pydoc LM, 32 x 512 = 16,384, building the per-token curvature took 24 GB)
      (it is measured on ``model``, else on ``task.new_model()`` where the task has one; without
      either it is left out);
    - dattri_trak_*: only when the optional dependency dattri is installed;
    - the Kronfluence peers (``PEERS``, a dependency of stride) always, after the baselines;
    - the Bergson peers (``OPTIONAL_PEERS``) last, only when the optional dependency bergson is installed
      and the task is a language model (Bergson runs Hugging Face causal LMs, not the classifiers' MLPs).
    TracIn needs a model trained with checkpoints; that is the caller's job, it is always listed.
    """
    if model is None and hasattr(task, "new_model"):
        model = task.new_model()
    names = []
    for name in BASELINES:
        if name == "tfidf" and task.texts(None) is None:
            continue
        if name == "if_exact" and (
            task.kind == "lm"  # per-token curvature over the vocabulary: out of memory even for tiny LMs
            or model is None
            or last_layer_size(task.last_layer(model)) > IF_EXACT_MAX_PARAMS
        ):
            continue
        if name.startswith("dattri_") and not dattri_available():
            continue
        names.append(name)
    optional = list(OPTIONAL_PEERS) if bergson_available() and bergson_supports(task) else []
    return names + list(PEERS) + optional


__all__ = [
    "METHODS",
    "BASELINES",
    "PEERS",
    "OPTIONAL_PEERS",
    "KRONFLUENCE_DAMPING",
    "BERGSON_GRIDS",
    "AttributionMethod",
    "FunctionMethod",
    "StrideMethod",
    "StrideSweep",
    "score_method",
    "CountSketch",
    "MethodResult",
    "applicable",
    "dattri_available",
    "bergson_available",
    "dattri_lds",
    "per_example_grads",
]
