"""An ensemble of two harness methods (the paper's LoGRA + STRIDE combination; here STRIDE + EK-FAC by
default): each query's scores of each member divided by their standard deviation over the examples,
then blended as ``(1 - weight) * first + weight * second`` (``engine.attribution.blend``, the same
combination the pipeline's ``attribution.method: ensemble`` uses). ``weight`` and each member's own
options are chosen on the validation draw like any other setting. Each member's result is kept per split
and option, so a grid over weights x first's options x second's options attributes each member option once.
"""

from __future__ import annotations

from typing import Any

from stride_assets.engine.attribution import blend
from stride_assets.engine.evaluation.methods.base import MethodResult
from stride_assets.engine.evaluation.task import Task, Trained


class EnsembleMethod:
    """Two methods of the registry, given as (name, settings) pairs, blended per query."""

    def __init__(self, first: tuple[str, dict[str, Any]] = ("stride", {}),
                 second: tuple[str, dict[str, Any]] = ("kronfluence_ekfac", {}), weight: float = 0.5):
        from stride_assets.engine.evaluation.methods import METHODS

        self.names = (first[0], second[0])
        self.members = (METHODS[first[0]](**first[1]), METHODS[second[0]](**second[1]))
        self.weight = weight
        self._results: dict[tuple[int, str, str], MethodResult] = {}

    def cache(self, task: Task, trained: Trained) -> None:
        for member in self.members:
            member.cache(task, trained)

    def attribute(self, split: str, **option: Any) -> MethodResult:
        """Options: ``weight``, and ``first`` / ``second`` (dicts of the members' own options)."""
        weight = option.get("weight", self.weight)
        a = self._member(0, split, option.get("first", {}))
        b = self._member(1, split, option.get("second", {}))
        scores = blend(a.scores, b.scores, weight).toarray()
        return MethodResult(scores, a.one_time_seconds + b.one_time_seconds,
                            a.per_query_seconds + b.per_query_seconds,
                            {"members": list(self.names), "weight": weight, "first": a.settings, "second": b.settings})

    def _member(self, i: int, split: str, option: dict[str, Any]) -> MethodResult:
        key = (i, split, repr(sorted(option.items())))
        if key not in self._results:
            self._results[key] = self.members[i].attribute(split, **option)
        return self._results[key]
