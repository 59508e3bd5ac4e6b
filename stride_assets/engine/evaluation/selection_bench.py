"""The measured benefit of a data selection: retrain on it, and on random selections of its size.

``selection.select`` (pipeline engine) picks the examples; this harness module checks the pick.
``selection_benefit`` retrains the task's model on the selection and on random selections of the
same size and compares the target queries' losses. An attribution that ranks well should give a
selection that beats random; a selection that does not is not worth curating. ``selection_mask``
turns a ``select`` result into the boolean mask it takes.

Moved here from ``engine.selection`` so that the engine imports nothing from ``evaluation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.bench import ground_truth
from stride_assets.engine.evaluation.task import Task, draw_subsets


def selection_mask(selection: pl.DataFrame, example_ids: Sequence[Any]) -> np.ndarray:
    """Boolean mask over ``example_ids`` of the rows ``select`` marked as selected."""
    chosen = set(selection.filter(pl.col("selected"))["example_id"].to_list())
    return np.fromiter((i in chosen for i in example_ids), dtype=bool, count=len(example_ids))


def _target_queries(task: Task, split: str, query_ids: Sequence[str] | None) -> np.ndarray:
    """Positions in the split's query list of the target queries (all of the split when None)."""
    if split not in task.query_ids:
        raise StrideInputError(f"task {task.name!r} has no query split {split!r}; it has {sorted(task.query_ids)}")
    known = {q: j for j, q in enumerate(task.query_ids[split])}
    if query_ids is None:
        return np.arange(len(known))
    unknown = [q for q in query_ids if q not in known]
    if unknown or not len(query_ids):
        raise StrideInputError(f"target queries must be a non-empty list of {split!r} query ids; "
                               f"unknown: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return np.asarray([known[q] for q in query_ids])


def selection_benefit(task: Task, selected_mask: np.ndarray, n_random: int = 4, seed: int = 0, *,
                      split: str = "test", query_ids: Sequence[str] | None = None,
                      cache: Path | None = None) -> dict[str, Any]:
    """Target loss after training on the selection vs on ``n_random`` random selections of its size.

    ``task`` is a ``Task`` (``evaluation.task``): its own recipe retrains every model
    (``retrain_losses``, one training seed for all, so the models differ only in their data).
    ``selected_mask``: (n,) bool over the task's training examples. The target is the
    ``split`` queries, or the ``query_ids`` among them. ``seed`` draws the random selections
    and seeds the training. ``cache`` (a folder) keeps retrained losses between calls, so
    selections of one size compared against the same random draws retrain those draws once.

    Returns the target's mean loss under the selection, the random selections' mean and std
    (over draws) and each draw's, ``difference`` = selection - random mean (negative: the
    selection is better), ``win_rate`` = the fraction of target queries whose loss is lower
    under the selection than their mean loss under the random selections, and the same means
    for the task's other query splits (all of their queries), as a control.
    """
    mask = np.asarray(selected_mask)
    if mask.dtype != bool or mask.shape != (task.n,):
        raise StrideInputError(f"selected_mask must be a ({task.n},) bool mask over the training examples, "
                               f"got {mask.dtype} {mask.shape}")
    size = int(mask.sum())
    if not 0 < size < task.n:
        raise StrideInputError(f"the selection has {size} of {task.n} examples; it must be non-empty and not all "
                               "of them (else there is nothing to compare with)")
    if isinstance(n_random, bool) or not isinstance(n_random, (int, np.integer)) or n_random < 2:
        raise StrideInputError(f"n_random must be an integer >= 2 (their spread is reported), got {n_random!r}")
    target = _target_queries(task, split, query_ids)
    randoms = draw_subsets(task.n, n_random, size / task.n, seed)
    chosen = ground_truth(task, mask[None], 1, seed, cache=cache)
    random = ground_truth(task, randoms, 1, seed, cache=cache)
    mine, theirs = chosen[split][0, target], random[split][:, target]  # (Q,), (R, Q)
    per_draw = theirs.mean(axis=1)
    return {
        "split": split,
        "target_queries": len(target),
        "size": size,
        "n": task.n,
        "n_random": int(n_random),
        "seed": seed,
        "selection_loss": float(mine.mean()),
        "random_loss_mean": float(per_draw.mean()),
        "random_loss_std": float(per_draw.std(ddof=1)),
        "random_losses": per_draw.tolist(),
        "difference": float(mine.mean() - per_draw.mean()),
        "win_rate": float((mine < theirs.mean(axis=0)).mean()),
        "other_splits": {s: {"selection_loss": float(chosen[s][0].mean()), "random_loss_mean": float(random[s].mean())}
                         for s in chosen if s != split},
    }
