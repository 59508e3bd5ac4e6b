"""Data selection (stride_assets.engine.selection): tasks taking turns on a planted score table,
one explained row per candidate, and a measured benefit on real retrains (wine classifier, tiny LM;
stride_assets.engine.evaluation.selection_bench)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stride_assets.engine.config import TinyModelConfig
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.classifier import MLPRecipe
from stride_assets.engine.evaluation.lm_task import LMTask
from stride_assets.engine.evaluation.selection_bench import selection_benefit, selection_mask
from stride_assets.engine.evaluation.tabular import tabular_task
from stride_assets.engine.selection import select

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Task "a" has two queries, task "b" one. Mean influence per task:
#   a: e1 .9, e2 .8, e7 .7, e6 .6 (1.2 on qa1 only), e3 .25     b: e3 1.0, e4 .5, e5 .5, e1 -.2
# Summed over all queries e6 (1.2) beats e4 (.5), but with turns task b gets its second pick.
PLANTED = [
    ("qa1", "e1", 0.9), ("qa1", "e2", 0.8), ("qa1", "e6", 1.2), ("qa1", "e7", 0.7),
    ("qa2", "e1", 0.9), ("qa2", "e2", 0.8), ("qa2", "e3", 0.5), ("qa2", "e7", 0.7),
    ("qb1", "e3", 1.0), ("qb1", "e4", 0.5), ("qb1", "e5", 0.5), ("qb1", "e1", -0.2),
]


def planted() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    scores = pl.DataFrame(PLANTED, schema=["query_id", "example_id", "score"], orient="row")
    candidates = pl.DataFrame({"example_id": [f"e{i}" for i in range(10)], "text": [f"text {i}" for i in range(10)],
                               "example_index": list(range(10))})
    queries = pl.DataFrame({"query_id": ["qa1", "qa2", "qb1"], "task": ["a", "a", "b"]})
    return scores, candidates, queries


def test_tasks_take_turns_picking_their_best_remaining_candidate() -> None:
    scores, candidates, queries = planted()
    out = select(scores, candidates, queries, 5)
    assert out.columns == ["example_id", "text", "selected", "selection_rank", "task", "task_rank", "score",
                           "score_sum", "reason", "example_index"]
    assert out.height == 10 and sorted(out["example_id"]) == sorted(candidates["example_id"])
    picked = out.filter(pl.col("selected"))
    assert picked["example_id"].to_list() == ["e1", "e3", "e2", "e4", "e7"]
    assert picked["task"].to_list() == ["a", "b", "a", "b", "a"]
    assert picked["selection_rank"].to_list() == [1, 2, 3, 4, 5]
    row = {r["example_id"]: r for r in out.iter_rows(named=True)}
    # a task's score is the mean over its queries; score_sum covers every query
    assert row["e1"]["score"] == pytest.approx(0.9) and row["e1"]["score_sum"] == pytest.approx(1.6)
    assert row["e3"]["score"] == pytest.approx(1.0) and row["e3"]["task_rank"] == 1
    assert row["e7"]["task_rank"] == 3  # e3 (a's 5th) was taken by b; e7 is a's 3rd
    assert row["e3"]["reason"] == "selected #2: rank 1 for task 'b' (mean influence 1)"
    # e4 and e5 tie in task b: the smaller example_id wins
    assert row["e5"]["reason"] == "not in top-5: best task rank 3 (task 'b', mean influence 0.5)"
    assert row["e6"]["reason"] == "not in top-5: best task rank 4 (task 'a', mean influence 0.6)"
    assert not row["e6"]["selected"] and row["e6"]["selection_rank"] is None
    assert all(r["example_index"] == int(r["example_id"][1:]) for r in row.values())  # extra columns stay aligned
    assert out["selected"].sum() == 5 and out["reason"].is_not_null().all()


def test_without_a_task_column_all_queries_form_one_task() -> None:
    scores, candidates, queries = planted()
    out = select(scores, candidates, queries.drop("task"), 5)
    picked = out.filter(pl.col("selected"))
    # means over 3 queries: e1 = e2 = 1.6/3 (tie, by id), e3 .5, e7 1.4/3, e6 .4
    assert picked["example_id"].to_list() == ["e1", "e2", "e3", "e7", "e6"]
    assert set(out["task"]) == {"all"} and picked["score"][0] == pytest.approx(1.6 / 3)
    assert out.filter(pl.col("example_id") == "e4")["reason"].item().startswith("not in top-5: best task rank 6")


def test_selection_is_deterministic_and_ignores_row_order_and_foreign_scores() -> None:
    scores, candidates, queries = planted()
    expected = select(scores, candidates, queries, 6)
    assert select(scores, candidates, queries, 6).equals(expected)
    shuffled = [f.sample(fraction=1.0, shuffle=True, seed=3) for f in (scores, candidates, queries)]
    assert select(*shuffled, 6).equals(expected)
    # scores of queries outside the target and of examples outside the candidates change nothing
    foreign = pl.DataFrame({"query_id": ["qz", "qa1"], "example_id": ["e9", "zz"], "score": [9.0, 9.0]})
    assert select(pl.concat([scores, foreign]), candidates, queries, 6).equals(expected)


def test_every_candidate_can_be_selected() -> None:
    scores, candidates, queries = planted()
    out = select(scores, candidates, queries, candidates.height)
    assert out["selected"].all() and out["selection_rank"].to_list() == list(range(1, 11))


def _bad(kind: str):
    scores, candidates, queries = planted()
    n = 3
    if kind == "n zero":
        n = 0
    elif kind == "n too large":
        n = 11
    elif kind == "n float":
        n = 2.0
    elif kind == "scores column":
        scores = scores.drop("score")
    elif kind == "candidates column":
        candidates = candidates.drop("text")
    elif kind == "queries column":
        queries = queries.rename({"query_id": "id"})
    elif kind == "empty scores":
        scores = scores.head(0)
    elif kind == "empty candidates":
        candidates = candidates.head(0)
    elif kind == "empty queries":
        queries = queries.head(0)
    elif kind == "duplicate candidate":
        candidates = pl.concat([candidates, candidates.head(1)])
    elif kind == "duplicate score":
        scores = pl.concat([scores, scores.head(1)])
    elif kind == "null task":
        queries = queries.with_columns(pl.when(pl.col("query_id") == "qb1").then(None).otherwise("task").alias("task"))
    elif kind == "nan score":
        scores = scores.with_columns(pl.when(pl.col("example_id") == "e4").then(float("nan")).otherwise("score")
                                     .alias("score"))
    elif kind == "no overlap":
        scores = scores.with_columns(pl.col("example_id").str.replace("e", "x"))
    elif kind == "id types":
        candidates = candidates.with_columns(pl.col("example_index").alias("example_id"))
    elif kind == "output clash":
        candidates = candidates.with_columns(pl.lit(1.0).alias("score"))
    elif kind == "not a frame":
        scores = scores.to_dict(as_series=False)
    return scores, candidates, queries, n


@pytest.mark.parametrize("kind, message", [
    ("n zero", "n must be"), ("n too large", r"n must be an integer in 1\.\.10"), ("n float", "n must be"),
    ("scores column", r"scores lacks column\(s\) \['score'\]"), ("candidates column", "candidates lacks"),
    ("queries column", "queries lacks"), ("empty scores", "scores is empty"),
    ("empty candidates", "candidates is empty"), ("empty queries", "queries is empty"),
    ("duplicate candidate", "candidates repeats 1 example_id"), ("duplicate score", "scores repeats 1"),
    ("null task", "queries.task has 1 null"), ("nan score", "non-finite"),
    ("no overlap", "same query_id and example_id"),
    ("id types", "the ids must have one type"), ("output clash", r"\['score'\] that the selection writes"),
    ("not a frame", "polars DataFrame"),
])
def test_bad_inputs_raise_clear_errors(kind: str, message: str) -> None:
    with pytest.raises(StrideInputError, match=message):
        select(*_bad(kind))


def test_the_selection_loads_with_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    scores, candidates, queries = planted()
    out = select(scores, candidates, queries, 4)
    out.write_parquet(tmp_path / "selection.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "selection.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == out.columns and len(ds) == out.height
    assert ds[0]["reason"] == out["reason"][0] and ds[9]["selection_rank"] is None


# ---------------------------------------------------------------- measured benefit on real retrains
@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory):
    from sklearn.datasets import load_wine

    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    pl.from_pandas(load_wine(as_frame=True).frame).write_csv(path)
    return tabular_task(path, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=40))


def _label_scores(task, target: list[str], helpful_label: int, sign: float) -> pl.DataFrame:
    """Planted influence: every target query scores the training examples of one label (only those)."""
    y = task.train_batch()["y"].numpy()
    ids = [e for e, label in zip(task.example_ids, y) if (label == helpful_label) == (sign > 0)]
    return pl.DataFrame({"query_id": np.repeat(target, len(ids)).tolist(), "example_id": ids * len(target),
                         "score": [1.0] * (len(ids) * len(target))})


def test_selection_benefit_on_a_classifier_rewards_the_right_examples(wine) -> None:
    task = wine
    y_train, y_test = task.train_batch()["y"].numpy(), task.query_batch("test")["y"].numpy()
    target = [q for q, label in zip(task.query_ids["test"], y_test) if label == 0]
    size = int((y_train == 0).sum())
    candidates = pl.DataFrame({"example_id": task.example_ids, "text": [""] * task.n})
    queries = pl.DataFrame({"query_id": target})

    good = select(_label_scores(task, target, 0, +1.0), candidates, queries, size)
    good_mask = selection_mask(good, task.example_ids)
    assert np.array_equal(good_mask, y_train == 0)  # the planted signal is what gets selected
    helped = selection_benefit(task, good_mask, n_random=3, seed=0, query_ids=target)
    assert helped["size"] == size and helped["target_queries"] == len(target) and len(helped["random_losses"]) == 3
    assert helped["selection_loss"] < min(helped["random_losses"]) / 4  # below every random draw, by far
    assert helped["difference"] < 0 and helped["win_rate"] >= 0.9
    # the control split (all classes) is hurt by a class-0-only selection: the gain is the target's
    assert helped["other_splits"]["val"]["selection_loss"] > helped["other_splits"]["val"]["random_loss_mean"]

    # the same size chosen from the other classes must lose to random on the target
    bad = select(_label_scores(task, target, 0, -1.0), candidates, queries, size)
    hurt = selection_benefit(task, selection_mask(bad, task.example_ids), n_random=3, seed=0, query_ids=target)
    assert hurt["random_loss_mean"] == helped["random_loss_mean"]  # same seeded draws
    assert hurt["selection_loss"] > 4 * max(hurt["random_losses"]) and hurt["win_rate"] <= 0.1


def test_selection_benefit_draws_random_selections_of_the_same_size_and_caches_them(wine, tmp_path: Path) -> None:
    task = wine
    calls: list[np.ndarray] = []
    real = task.retrain_losses
    task.retrain_losses = lambda subsets, seed: calls.append(subsets.copy()) or real(subsets, seed=seed)
    try:
        first = np.zeros(task.n, dtype=bool)
        first[:20] = True
        selection_benefit(task, first, n_random=4, seed=5, cache=tmp_path)
        selection_benefit(task, np.roll(first, 30), n_random=4, seed=5, cache=tmp_path)
    finally:
        del task.retrain_losses
    assert [len(c) for c in calls] == [1, 4, 1]  # the random draws of the second call came from the cache
    assert np.array_equal(calls[0][0], first) and (calls[1].sum(1) == 20).all()
    assert len({c.tobytes() for c in calls[1]}) == 4  # distinct random selections


@pytest.mark.parametrize("change, message", [
    ("indices", "bool mask"), ("short", "bool mask"), ("empty", "must be non-empty"), ("all", "not all of them"),
    ("one random", "n_random must be"), ("split", "no query split 'train'"), ("queries", "unknown"),
])
def test_selection_benefit_rejects_bad_requests(wine, change: str, message: str) -> None:
    mask = np.zeros(wine.n, dtype=bool)
    mask[:10] = True
    kwargs = {"n_random": 2}
    if change == "indices":
        mask = np.flatnonzero(mask)
    elif change == "short":
        mask = mask[:-1]
    elif change in ("empty", "all"):
        mask[:] = change == "all"
    elif change == "one random":
        kwargs["n_random"] = 1
    elif change == "split":
        kwargs["split"] = "train"
    elif change == "queries":
        kwargs["query_ids"] = ["no-such-query"]
    with pytest.raises(StrideInputError, match=message):
        selection_benefit(wine, mask, **kwargs)


def test_selection_benefit_on_a_tiny_language_model() -> None:
    """Two kinds of text; queries of the first kind. Training on that kind must beat random."""
    rng = np.random.default_rng(0)
    animals = [f"the {a} sat on the {b} mat" for a, b in rng.choice(["cat", "dog", "fox"], size=(24, 2))]
    numbers = [" ".join(map(str, rng.integers(0, 99, size=8))) for _ in range(24)]
    task = LMTask(animals[:20] + numbers[:20], {"val": numbers[20:], "test": animals[20:]},
                  TinyModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=300, steps=60, batch_size=8, lr=3e-3),
                  max_length=16)
    mask = np.arange(task.n) < 20
    result = selection_benefit(task, mask, n_random=2, seed=0)
    assert result["selection_loss"] < result["random_loss_mean"] and result["win_rate"] == 1.0
    assert result["other_splits"]["val"]["selection_loss"] > result["other_splits"]["val"]["random_loss_mean"]
