"""Baseline attribution methods (evaluation/methods): signs, shapes, registry, dattri, LDS.

On the tiny classifier Task of ``eval_toys``: a training copy of a query scores top-positive and
removing top-scored examples hurts most; every applicable method returns well-formed results. A
small digits task checks the methods on the real ClassifierTask, and dattri's TRAK and LDS are
checked where dattri is installed. Exactness against references is in test_eval_methods.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from eval_toys import ToyTask, needs_dattri, toy, toy_trained  # noqa: F401  (module-scoped fixtures)
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods import MethodResult, applicable, score_method
from stride_assets.engine.evaluation.methods.dattri_methods import dattri_available, dattri_lds
from stride_assets.engine.evaluation.task import Trained, draw_subsets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- signs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, settings",
    [("grad_dot", {}), ("logra", {}), ("if_exact", {}), ("repsim", {}), ("tfidf", {}), ("tfidf", {"on": "token_ids"}),
     ("kronfluence_ekfac", {}), ("kronfluence_kfac", {}), ("kronfluence_ekfac", {"damping": 1e-3}),
     pytest.param("dattri_trak_1", {"regularization": 1e-3}, marks=needs_dattri)],
)
def test_a_training_duplicate_of_a_query_gets_a_top_positive_score(toy, toy_trained, name, settings):
    """The copy scores positive; it ranks in the top 3 of 103 where the query is not already fit.

    A well-fit query (loss 0.08 here) has a small gradient, and harder training examples of its
    class pointing the same way legitimately outrank its copy for loss-gradient methods
    (grad_dot puts it 6th, if_exact 9th), so the rank is asserted for the queries with loss > 0.3.
    """
    res = score_method(name, toy, toy_trained, "test", **settings)
    losses = toy.query_losses(toy_trained.model, "test")
    hard = [q for q in toy.duplicates if losses[q] > 0.3]
    assert len(hard) >= 2
    for q, i in toy.duplicates.items():
        assert res.scores[q, i] > 0, (name, q)
        rank = int(np.flatnonzero(np.argsort(-res.scores[q]) == i)[0])
        assert q not in hard or rank < 3, (name, q, rank)


@pytest.mark.parametrize("name", ["grad_dot", "if_exact", "kronfluence_ekfac"])
def test_removing_top_scored_examples_raises_the_query_loss_more_than_random(toy, toy_trained, name):
    """Counterfactual retraining: drop the top-k (or k random, or the bottom-k) and retrain."""
    scores = score_method(name, toy, toy_trained, "test").scores
    rng = np.random.default_rng(0)
    full = toy.query_losses(toy_trained.model, "test")
    k, queries = 10, [3, 4, 5, 6]
    rises = {"top": [], "random": [], "bottom": []}
    for q in queries:
        picks = {"top": np.argsort(-scores[q])[:k], "bottom": np.argsort(scores[q])[:k],
                 "random": rng.choice(toy.n, size=k, replace=False)}
        for kind, drop in picks.items():
            keep = np.setdiff1d(np.arange(toy.n), drop)
            rises[kind].append(toy.query_losses(toy.train(keep, seed=0).model, "test")[q] - full[q])
    mean = {kind: float(np.mean(v)) for kind, v in rises.items()}
    assert mean["top"] > mean["random"] > mean["bottom"], mean
    assert mean["top"] > 0 > mean["bottom"], mean


# --- shapes, timings, registry -----------------------------------------------------------------


def test_every_applicable_method_returns_scores_and_timings(toy, toy_trained):
    names = applicable(toy)
    assert {"grad_dot", "grad_cos", "tracin", "logra", "repsim", "tfidf", "if_exact", "kronfluence_ekfac",
            "kronfluence_kfac", "kronfluence_diagonal"} <= set(names)
    for name in names:
        if name == "dattri_trak_5":
            continue  # trains 4 extra models; run on digits below
        res = score_method(name, toy, toy_trained, "val")
        assert isinstance(res, MethodResult)
        assert res.scores.shape == (len(toy.query_ids["val"]), toy.n), name
        assert np.isfinite(res.scores).all(), name
        assert res.one_time_seconds >= 0 and res.per_query_seconds >= 0, name
        assert isinstance(res.settings, dict), name


def test_applicability_and_clear_errors(toy, toy_trained):
    no_text = ToyTask()
    no_text.texts = lambda split=None: None
    assert "tfidf" not in applicable(no_text)
    big = ToyTask()
    big.last_layer = lambda model: nn.Linear(200, 100)
    assert "if_exact" not in applicable(big)
    with pytest.raises(StrideConfigError, match="checkpoints"):
        score_method("tracin", toy, Trained(toy_trained.model), "val")
    with pytest.raises(StrideConfigError, match="does not apply"):
        score_method("if_exact", big, toy_trained, "val")
    with pytest.raises(StrideConfigError):
        score_method("tfidf", toy, toy_trained, "val", on="letters")


# --- dattri ------------------------------------------------------------------------------------


@needs_dattri
def test_our_lds_agrees_with_dattris_lds():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 40))
    subsets = draw_subsets(40, 25, 0.5, seed=1)
    losses = -(subsets.astype(float) @ scores.T) + rng.normal(scale=2.0, size=(25, 7))
    ours = lds(scores, subsets, losses).per_query
    np.testing.assert_allclose(ours, dattri_lds(scores, subsets, losses), rtol=1e-10, atol=1e-12)
    assert ours.mean() > 0.3


# --- digits (the real ClassifierTask), small ---------------------------------------------------


@pytest.fixture(scope="module")
def digits_small():
    from stride_assets.engine.evaluation.classifier import ClassifierTask, MLPRecipe
    from stride_assets.engine.evaluation.tabular import digits_task

    full = digits_task()
    tr, va, te = full.train_batch(np.arange(300)), full.query_batch("val"), full.query_batch("test")
    task = ClassifierTask(
        "digits-small", tr["x"].numpy(), tr["y"].numpy(), va["x"][:40].numpy(), va["y"][:40].numpy(),
        te["x"][:40].numpy(), te["y"][:40].numpy(), n_classes=10, example_ids=full.example_ids[:300],
        query_ids={"val": full.query_ids["val"][:40], "test": full.query_ids["test"][:40]},
        recipe=MLPRecipe(hidden=32, steps=150),
    )
    trained = task.train(None, seed=0, checkpoints=3)
    subsets = draw_subsets(task.n, 24, 0.5, seed=5)
    return task, trained, subsets, task.retrain_losses(subsets, seed=0)["val"]


@pytest.mark.parametrize(
    "name, settings",
    [("grad_dot", {}), ("tracin", {}), ("logra", {"damping": 3.0}), ("if_exact", {}),
     pytest.param("dattri_trak_1", {}, marks=needs_dattri), pytest.param("dattri_trak_5", {}, marks=needs_dattri)],
)
def test_digits_methods_have_positive_lds(digits_small, name, settings):
    """LDS correlates summed scores with -loss: a flipped sign would give a clearly negative LDS."""
    task, trained, subsets, losses = digits_small
    res = score_method(name, task, trained, "val", **settings)
    assert res.scores.shape == (40, 300)
    assert lds(res.scores, subsets, losses).mean > 0.2, name
    if dattri_available():
        np.testing.assert_allclose(lds(res.scores, subsets, losses).per_query, dattri_lds(res.scores, subsets, losses),
                                   rtol=1e-8, atol=1e-10)
