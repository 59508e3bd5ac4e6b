"""Bergson's EK-FAC and TrackStar as harness peers (``methods.bergson_methods``; optional dependency).

On a tiny LM task whose test query 0 is training example ``COPY`` verbatim: both methods rank the
copy first with a positive score, and a retrain without the copy confirms that positive means
helpful (its loss on the query rises). Bergson's EK-FAC agrees with the engine's Kronfluence EK-FAC
over the same modules (the blocks, no head). Importing it leaves the root logger as it was.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("bergson")

from scipy.stats import spearmanr  # noqa: E402

from stride_assets.engine.config import TinyModelConfig  # noqa: E402
from stride_assets.engine.errors import StrideConfigError  # noqa: E402
from stride_assets.engine.evaluation.lm_task import LMTask  # noqa: E402
from stride_assets.engine.evaluation.methods import METHODS, applicable  # noqa: E402
from stride_assets.engine.evaluation.suites import baseline_specs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ANIMALS = ["cat", "dog", "bird", "fish", "cow", "pig", "hen", "fox", "owl", "bee"]
PLACES = ["mat", "door", "barn", "pond", "road", "tree"]
TEXTS = [f"the {a} sat by the {p} and then the {a} ran {i} times" for i, (a, p) in
         enumerate((a, p) for p in PLACES for a in ANIMALS[: 5 + len(p) % 3])]
COPY = 7  # test query 0 is this training text verbatim
QUERY = TEXTS[COPY]
TINY = TinyModelConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=300, steps=150, batch_size=8, lr=5e-3)


@pytest.fixture(scope="module")
def task() -> LMTask:
    return LMTask(TEXTS, {"val": ["the owl sat by the barn and then the owl ran 3 times"],
                          "test": [QUERY, "the bee sat by the road and then the bee ran 9 times"]},
                  TINY, max_length=24)


@pytest.fixture(scope="module")
def trained(task):
    return task.train(None, seed=0)


@pytest.fixture(scope="module")
def ekfac_scores(task, trained) -> np.ndarray:
    method = METHODS["bergson_ekfac"]()
    method.cache(task, trained)
    result = method.attribute("test")
    assert result.one_time_seconds > 0 and result.settings["damping"] == 0.1
    return result.scores


def test_ekfac_ranks_the_planted_copy_first_and_positive(task, ekfac_scores):
    assert ekfac_scores.shape == (2, task.n) and np.isfinite(ekfac_scores).all()
    assert int(np.argmax(ekfac_scores[0])) == COPY and ekfac_scores[0, COPY] > 0


def test_positive_means_helpful(task, trained, ekfac_scores):
    """Retrained without the top-scored (positive) example, the model's loss on the query rises."""
    assert ekfac_scores[0, COPY] > 0
    without = task.train(np.delete(np.arange(task.n), COPY), seed=0)
    assert task.query_losses(without.model, "test")[0] > task.query_losses(trained.model, "test")[0]


def test_ekfac_agrees_with_kronfluence_on_the_same_modules(task, trained, ekfac_scores, tmp_path):
    from stride_assets.engine.ekfac import Influence, lm_objective

    influence = Influence(trained.model, lm_objective, strategy="ekfac", include_head=False)
    influence.fit(task.train_batch(), into=tmp_path / "factors")
    reference = influence.scores(task.query_batch("test"), task.train_batch(), tmp_path / "factors")
    # a tiny task and sampled Fisher labels: 0.71 here (0.986 per query on the quick pydoc task)
    assert min(spearmanr(ekfac_scores[q], reference[q])[0] for q in range(2)) > 0.5


def test_trackstar_ranks_the_copy_first_under_both_settings(task, trained):
    method = METHODS["bergson_trackstar"]()
    method.cache(task, trained)
    for option in ({}, {"unit_normalize": False, "damping": 1e-2}):
        scores = method.attribute("test", **option).scores
        assert scores.shape == (2, task.n) and np.isfinite(scores).all()
        assert int(np.argmax(scores[0])) == COPY and scores[0, COPY] > 0
    cosine = method.attribute("test").scores
    assert np.abs(cosine).max() <= 1 + 1e-4 and cosine[0, COPY] == pytest.approx(1.0, abs=1e-3)


def test_listed_for_lm_tasks_only_with_their_grids(task, trained):
    from eval_toys import ToyTask

    names = applicable(task, trained.model)
    assert names[-2:] == ["bergson_ekfac", "bergson_trackstar"]
    grids = {s.name: s.grid for s in baseline_specs(task, trained.model)}
    assert {"damping": 0.1} in grids["bergson_ekfac"] and len(grids["bergson_trackstar"]) == 8
    toy = ToyTask()
    assert not any(n.startswith("bergson") for n in applicable(toy))
    with pytest.raises(StrideConfigError, match="language-model"):
        METHODS["bergson_ekfac"]().cache(toy, toy.train(None, seed=0))
    with pytest.raises(StrideConfigError, match="unit-normalise"):
        METHODS["bergson_ekfac"](unit_normalize=True)


def test_running_bergson_keeps_the_root_logger(task, trained):
    """Bergson's import calls logging.basicConfig(force=True); neither it nor a run touches our logging."""
    import subprocess
    import sys

    first_import = ("import logging; h = logging.StreamHandler(); logging.getLogger().addHandler(h)\n"
                    "from stride_assets.engine.evaluation.methods.bergson_methods import _quiet_bergson\n"
                    "with _quiet_bergson(): pass\n"
                    "assert logging.getLogger().handlers == [h], logging.getLogger().handlers")
    subprocess.run([sys.executable, "-c", first_import], check=True)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    method = METHODS["bergson_trackstar"]()
    method.cache(task, trained)
    method.attribute("val")
    assert root.handlers == handlers and root.level == level
    assert logging.root.manager.disable == logging.NOTSET
