"""Baseline attribution methods of the quality harness, all written against the ``Task`` protocol.

Every method is ``method(task, trained, split, **settings) -> MethodResult`` with scores (Q, n):
a positive score means training on the example lowers the query's loss.

| name | family | module |
|---|---|---|
| grad_dot, grad_cos, tracin, logra | per-example gradients (optionally CountSketch-projected) | gradients |
| repsim, tfidf | similarity of representations / of texts | similarity |
| if_exact | exact influence function on the last linear layer | influence |
| dattri_trak_1, dattri_trak_5 | dattri's TRAK (optional dependency) | dattri_methods |
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from stride_assets.engine.evaluation.methods.base import MethodResult
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
from stride_assets.engine.evaluation.task import Task

Method = Callable[..., MethodResult]

METHODS: dict[str, Method] = {
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


def applicable(task: Task, model: nn.Module | None = None) -> list[str]:
    """The registry's methods that apply to ``task`` (in registry order).

    - tfidf: only for tasks with texts;
    - if_exact: only for classifiers whose last linear layer has at most ``IF_EXACT_MAX_PARAMS`` parameters
      (on the quick pydoc LM, 32 x 512 = 16,384, building the per-token curvature took 24 GB)
      (it is measured on ``model``, else on ``task.new_model()`` where the task has one; without
      either it is left out);
    - dattri_trak_*: only when the optional dependency dattri is installed.
    TracIn needs a model trained with checkpoints; that is the caller's job, it is always listed.
    """
    if model is None and hasattr(task, "new_model"):
        model = task.new_model()
    names = []
    for name in METHODS:
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
    return names


__all__ = [
    "METHODS",
    "CountSketch",
    "MethodResult",
    "applicable",
    "dattri_available",
    "dattri_lds",
    "per_example_grads",
]
