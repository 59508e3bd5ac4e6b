"""The LM benchmark task (stride_assets.engine.evaluation.lm_task): splits, training, gradients, sites."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from stride_assets.engine.backbone import take
from stride_assets.engine.config import TinyModelConfig
from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.evaluation.lm_task import (
    MAX_LENGTH,
    PYDOC_RECIPE,
    QUICK_RECIPE,
    LMTask,
    pydoc_task,
    text_task,
)
from stride_assets.engine.evaluation.task import draw_subsets

pytestmark = [
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),  # sdpa under vmap
    pytest.mark.usefixtures("one_torch_thread"),
]

TINY = TinyModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=300, steps=20, batch_size=8, lr=2e-3)
TINY_LENGTH = 32  # tokens per example in the tests' tasks




@pytest.fixture(scope="module")
def task() -> LMTask:
    return pydoc_task(seed=0, quick=True, recipe=TINY, max_length=TINY_LENGTH)


@pytest.fixture(scope="module")
def trained(task):
    return task.train(None, seed=0, checkpoints=3)


def test_construction_and_splits(task):
    assert task.kind == "lm" and task.n == 300 == len(task.texts()) == len(task.token_ids())
    assert {s: len(ids) for s, ids in task.query_ids.items()} == {"val": 20, "test": 40}
    train, val, test = set(task.example_ids), set(task.query_ids["val"]), set(task.query_ids["test"])
    assert not (train & val or train & test or val & test)
    assert not set(task.texts()) & set(task.texts("test"))
    batch = task.train_batch(np.array([3, 1]))
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == 2
    assert task.query_batch("val")["input_ids"].shape[1] <= TINY_LENGTH
    ids = task.token_ids("test")
    assert len(ids) == 40 and all(2 <= len(row) <= TINY_LENGTH for row in ids)
    assert ids[0] == task.query_batch("test")["input_ids"][0, : len(ids[0])].tolist()
    with pytest.raises(StrideConfigError, match="split"):
        task.query_batch("train")


def test_recipe_steps():
    assert TinyModelConfig(epochs=2.0, batch_size=16).steps_for(100) == 13
    assert TINY.steps_for(100) == TINY.steps_for(7) == 20
    assert TinyModelConfig(epochs=1.0, steps=5, batch_size=16).steps_for(100) == 7  # epochs, when set, wins
    with pytest.raises(ValueError, match="epochs"):
        TinyModelConfig(epochs=0.0)
    with pytest.raises(ValueError, match="steps"):
        TinyModelConfig(steps=0)


def test_harness_recipes_keep_their_values():
    """The pydoc recipe (once ``GPTRecipe()``) and the quick one: every benchmark score depends on them."""
    fields = ("n_layer", "n_embd", "n_head", "vocab_size", "epochs", "batch_size", "lr", "weight_decay")
    assert [getattr(PYDOC_RECIPE, f) for f in fields] == [2, 64, 2, 2048, 12.0, 16, 2e-3, 0.01]
    assert [getattr(QUICK_RECIPE, f) for f in fields] == [2, 32, 2, 512, 4.0, 16, 2e-3, 0.01]
    assert MAX_LENGTH == 64 and PYDOC_RECIPE.steps_for(1004) == 753


def test_training_is_deterministic(task, trained):
    again = task.train(None, seed=0)
    np.testing.assert_array_equal(task.query_losses(trained.model), task.query_losses(again.model))
    other = task.train(None, seed=1)
    assert not np.allclose(task.query_losses(trained.model), task.query_losses(other.model))
    rebuilt = pydoc_task(seed=0, quick=True, recipe=TINY, max_length=TINY_LENGTH)
    assert rebuilt.example_ids == task.example_ids and rebuilt.query_ids == task.query_ids


def test_checkpoints(trained):
    assert trained.info["steps"] == TINY.steps and len(trained.checkpoints) == 3
    assert all(lr > 0 for lr, _ in trained.checkpoints)
    final = trained.checkpoints[-1][1]
    assert all(torch.equal(final[k], v) for k, v in trained.model.state_dict().items())


def test_subsets_change_losses_and_retrain_shape(task, trained):
    subsets = draw_subsets(task.n, 2, 0.5, seed=3)
    out = task.retrain_losses(subsets, seed=0)
    assert out["val"].shape == (2, 20) and out["test"].shape == (2, 40)
    assert out["test"].dtype == np.float64 and np.isfinite(out["test"]).all()
    assert not np.allclose(out["test"][0], task.query_losses(trained.model))
    assert not np.allclose(out["test"][0], out["test"][1])
    alone = task.train(np.flatnonzero(subsets[1]), seed=0).model
    np.testing.assert_array_equal(out["test"][1], task.query_losses(alone, "test"))
    with pytest.raises(StrideInputError, match="subsets"):
        task.retrain_losses(subsets[:, :10], seed=0)


def test_example_loss_matches_query_losses(task, trained):
    batch = task.query_batch("val")
    np.testing.assert_allclose(task.example_loss(trained.model, batch).detach().numpy(),
                               task.query_losses(trained.model, "val"), rtol=1e-5, atol=1e-6)


def test_vmap_grads_match_autograd(task, trained):
    model = trained.model
    lengths = task.train_batch()["attention_mask"].sum(1)
    rows = torch.cat([(lengths < TINY_LENGTH).nonzero()[:2, 0], (lengths == TINY_LENGTH).nonzero()[:2, 0]])
    batch = task.train_batch(rows.numpy())
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # padding is covered
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = torch.func.vmap(torch.func.grad(task.functional_loss(model)), in_dims=(None, 0))(params, batch)
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        for i in range(len(rows)):
            model.zero_grad()
            task.example_loss(model, take(batch, torch.tensor([i]))).sum().backward()
            for name, p in model.named_parameters():
                torch.testing.assert_close(grads[name][i], p.grad, atol=1e-6, rtol=1e-5)
    finally:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(False)


def test_model_views(task, trained):
    batch = task.query_batch("val")
    feats = task.features(trained.model, batch)
    assert feats.shape == (20, TINY.n_embd) and torch.isfinite(feats).all()
    head = task.last_layer(trained.model)
    assert isinstance(head, torch.nn.Linear) and head.out_features == TINY.vocab_size


@pytest.mark.parametrize("form", ["activation", "logit"])
def test_zero_shift_site_is_exact(task, trained, form):
    batch = task.query_batch("test")
    site = task.site(trained.model, form)
    logits = site.logits(site.encode(batch), batch)
    with torch.no_grad():
        base = trained.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, base, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(site.example_loss(logits, batch).numpy(), task.query_losses(trained.model), rtol=1e-5)


def _write_parquet(path, n: int) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=12)) + f" row {i}." for i in range(n)]
    pl.DataFrame({"body": texts, "other": list(range(n))}).write_parquet(path)


def test_text_task_from_parquet(tmp_path):
    path = tmp_path / "notes.parquet"
    _write_parquet(path, 60)
    task = text_task(path, "body", n_val=5, n_test=10, recipe=TINY, max_length=TINY_LENGTH)
    assert task.name == "notes" and task.n == 45 and not task.finetune
    assert np.isfinite(task.query_losses(task.train(np.arange(10)).model, "val")).all()
    tuned = text_task(path, "body", n_val=5, n_test=10, recipe=TINY, max_length=TINY_LENGTH, finetune=True)
    assert tuned.finetune and tuned.n == 23
    assert set(tuned.example_ids) < set(task.example_ids)  # same queries; half the rest pre-trains
    start = tuned.new_model(seed=5).state_dict()
    assert all(torch.equal(start[k], v) for k, v in tuned.new_model(seed=6).state_dict().items())
    with pytest.raises(StrideInputError, match="text column 'missing' not found"):
        text_task(path, "missing")
    with pytest.raises(StrideInputError, match="cannot give"):
        text_task(path, "body", n_val=30, n_test=30, recipe=TINY, max_length=TINY_LENGTH)
