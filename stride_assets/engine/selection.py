"""Data selection: keep the N training examples that help a target query set most.

``select`` ranks candidates by their influence on the target queries and keeps the top N. When
the queries come in tasks (a ``task`` column, e.g. "functions" and "exceptions"), the tasks
take turns: each picks its best candidate not yet picked, until N are picked. Without the
turns, the task with the largest scores (or the most queries behind a summed score) would take
every slot and the selection would serve one task. A task's score for an example is the *mean*
of its queries' scores, so a task with many queries does not outweigh one with few.

The measured check of a selection (retrain on it and on random selections of its size, compare
the target queries' losses) is part of the quality harness: ``selection_benefit`` and
``selection_mask`` live in ``evaluation.selection_bench``. This module is pure pipeline engine
and imports nothing from ``evaluation``.

Sign convention (as everywhere in stride): a positive score means that training on the example
*lowers* the query's loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import polars as pl

from stride_assets.engine.errors import StrideInputError

ALL_QUERIES = "all"  # the task name when the queries carry no task column
OUTPUT_COLUMNS = ("example_id", "text", "selected", "selection_rank", "task", "task_rank", "score", "score_sum",
                  "reason")


# ---------------------------------------------------------------- input checks
def _check_frame(frame: Any, name: str, columns: Sequence[str]) -> None:
    """A non-empty polars frame with the required columns."""
    if not isinstance(frame, pl.DataFrame):
        raise StrideInputError(f"{name} must be a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StrideInputError(f"{name} lacks column(s) {missing}; it has {frame.columns}")
    if frame.height == 0:
        raise StrideInputError(f"{name} is empty")


def _check_ids(frame: pl.DataFrame, name: str, keys: Sequence[str]) -> None:
    """Key columns without nulls, each key combination once."""
    for key in keys:
        if frame[key].null_count():
            raise StrideInputError(f"{name}.{key} has {frame[key].null_count()} null value(s)")
    duplicated = frame.height - frame.select(keys).n_unique()
    if duplicated:
        raise StrideInputError(f"{name} repeats {duplicated} {'/'.join(keys)} value(s); each must appear once")


def _check_same_dtype(a: pl.DataFrame, b: pl.DataFrame, column: str, names: tuple[str, str]) -> None:
    if a.schema[column] != b.schema[column]:
        raise StrideInputError(f"{names[0]}.{column} is {a.schema[column]} but {names[1]}.{column} is "
                               f"{b.schema[column]}; the ids must have one type to be matched")


def _check_inputs(scores: pl.DataFrame, candidates: pl.DataFrame, queries: pl.DataFrame, n: int) -> None:
    _check_frame(scores, "scores", ("query_id", "example_id", "score"))
    _check_frame(candidates, "candidates", ("example_id", "text"))
    _check_frame(queries, "queries", ("query_id",))
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= candidates.height:
        raise StrideInputError(f"n must be an integer in 1..{candidates.height} (the candidates), got {n!r}")
    _check_ids(scores, "scores", ("query_id", "example_id"))
    _check_ids(candidates, "candidates", ("example_id",))
    _check_ids(queries, "queries", ("query_id",))
    _check_same_dtype(scores, candidates, "example_id", ("scores", "candidates"))
    _check_same_dtype(scores, queries, "query_id", ("scores", "queries"))
    if not scores.schema["score"].is_numeric():
        raise StrideInputError(f"scores.score must be numeric, got {scores.schema['score']}")
    bad = scores["score"].null_count() + int((~scores["score"].cast(pl.Float64).is_finite()).sum())
    if bad:
        raise StrideInputError(f"scores.score has {bad} null or non-finite value(s)")
    if "task" in queries.columns and queries["task"].null_count():
        raise StrideInputError(f"queries.task has {queries['task'].null_count()} null value(s); "
                               "every query needs a task")
    clashes = sorted(set(candidates.columns) & set(OUTPUT_COLUMNS) - {"example_id", "text"})
    if clashes:
        raise StrideInputError(f"candidates has column(s) {clashes} that the selection writes; drop or rename them")


# ---------------------------------------------------------------- ranking
def task_scores(scores: pl.DataFrame, candidates: pl.DataFrame, queries: pl.DataFrame
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tasks (sorted), each task's mean influence (T, C) and the summed influence (C,) per candidate.

    Candidates are in ``candidates`` order; a score absent from ``scores`` counts as 0. Scores of
    queries outside ``queries`` or of examples outside ``candidates`` are ignored. The table is
    dense, 8 * T * C bytes: fine for tens of tasks over a million candidates.
    """
    task_col = pl.col("task").cast(pl.String) if "task" in queries.columns else pl.lit(ALL_QUERIES)
    q = queries.select("query_id", task_col.alias("task"))
    tasks = sorted(q["task"].unique().to_list())
    q = q.with_columns(
        pl.col("task").replace_strict(tasks, list(range(len(tasks))), return_dtype=pl.Int64).alias("t"),
        pl.len().over("task").alias("n_queries"),
    )
    index = candidates.select("example_id").with_row_index("c")
    rows = scores.join(q, on="query_id").join(index, on="example_id")
    if rows.height == 0:
        raise StrideInputError("no score concerns both a target query and a candidate: check that scores, queries "
                               "and candidates use the same query_id and example_id values")
    per_task = rows.group_by("t", "c").agg((pl.col("score").cast(pl.Float64) / pl.col("n_queries")).sum())
    mean = np.zeros((len(tasks), candidates.height))
    mean[per_task["t"].to_numpy(), per_task["c"].to_numpy()] = per_task["score"].to_numpy()
    summed = rows.group_by("c").agg(pl.col("score").cast(pl.Float64).sum())
    total = np.zeros(candidates.height)
    total[summed["c"].to_numpy()] = summed["score"].to_numpy()
    return tasks, mean, total


def rankings(mean: np.ndarray, example_ids: Sequence[Any]) -> np.ndarray:
    """Each task's candidates, best first: (T, C) candidate indices, ties broken by example_id."""
    by_id = np.argsort(np.asarray(example_ids, dtype=object), kind="stable")
    # a stable sort of the id-ordered candidates by descending score keeps equal scores in id order
    return by_id[np.argsort(-mean[:, by_id], axis=1, kind="stable")]


def round_robin(order: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tasks take turns picking their best candidate not yet picked: (candidates, tasks) of n picks.

    ``order`` is (T, C) as from ``rankings``; n <= C, so a task always finds a free candidate.
    """
    n_tasks, n_candidates = order.shape
    taken = np.zeros(n_candidates, dtype=bool)
    cursor = np.zeros(n_tasks, dtype=np.int64)
    picks, pickers = [], []
    while len(picks) < n:
        for t in range(n_tasks):
            if len(picks) == n:
                break
            while taken[order[t, cursor[t]]]:
                cursor[t] += 1
            c = int(order[t, cursor[t]])
            taken[c] = True
            picks.append(c)
            pickers.append(t)
    return np.asarray(picks, dtype=np.int64), np.asarray(pickers, dtype=np.int64)


def select(scores: pl.DataFrame, candidates: pl.DataFrame, queries: pl.DataFrame, n: int) -> pl.DataFrame:
    """Keep the ``n`` candidates with the most influence on the target queries, tasks taking turns.

    ``scores``: query_id, example_id, score (the non-zeros; absent = 0). ``candidates``:
    example_id, text and any other columns (kept). ``queries``: query_id and optionally task
    (without it, all queries form one task, "all").

    Returns one row per candidate, selected ones first in the order they were picked:
    example_id, text, selected, selection_rank (1..n, null if not selected), task (the task it
    was picked for; if not selected, the task where it ranks best), task_rank (its place in that
    task's ranking), score (its mean influence on that task), score_sum (over all target
    queries), reason, then the other candidate columns.
    """
    _check_inputs(scores, candidates, queries, n)
    ids = candidates["example_id"].to_list()
    tasks, mean, total = task_scores(scores, candidates, queries)
    order = rankings(mean, ids)
    rank = np.empty_like(order)  # rank[t, c]: 1-based place of candidate c in task t's ranking
    rank[np.arange(len(tasks))[:, None], order] = np.arange(1, order.shape[1] + 1)
    picks, pickers = round_robin(order, int(n))

    n_candidates = len(ids)
    selection_rank = np.zeros(n_candidates, dtype=np.int64)
    selection_rank[picks] = np.arange(1, len(picks) + 1)
    task_of = np.argmin(rank, axis=0)  # not selected: the task where it ranks best (first such task)
    task_of[picks] = pickers
    columns = np.arange(n_candidates)
    own_rank, own_score = rank[task_of, columns], mean[task_of, columns]
    reasons = [
        f"selected #{s}: rank {r} for task {tasks[t]!r} (mean influence {m:.4g})" if s
        else f"not in top-{n}: best task rank {r} (task {tasks[t]!r}, mean influence {m:.4g})"
        for s, r, t, m in zip(selection_rank.tolist(), own_rank.tolist(), task_of.tolist(), own_score.tolist())
    ]
    decided = pl.DataFrame({
        "selected": selection_rank > 0,
        "selection_rank": pl.Series([s or None for s in selection_rank.tolist()], dtype=pl.Int64),
        "task": [tasks[t] for t in task_of],
        "task_rank": own_rank.astype(np.int64),
        "score": own_score,
        "score_sum": total,
        "reason": reasons,
    })
    extra = [c for c in candidates.columns if c not in ("example_id", "text")]
    return pl.concat([candidates.select("example_id", "text"), decided, candidates.select(extra)],
                     how="horizontal").sort(["selection_rank", "task_rank", "example_id"], nulls_last=True)
