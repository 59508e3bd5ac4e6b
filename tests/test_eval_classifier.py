"""The classifier benchmark task: digits, the MLP recipe, batched retraining, sites, LDS sanity, user tables."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.evaluation.classifier import ClassifierTask
from stride_assets.engine.evaluation.lds import lds, seed_agreement
from stride_assets.engine.evaluation.tabular import digits_task, tabular_task
from stride_assets.engine.evaluation.task import draw_subsets

N_SUBSETS = 16  # 50% subsets for the LDS sanity checks: 2 seeds x 16 models (the bulk of this file's time)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task() -> ClassifierTask:
    return digits_task(seed=0)


@pytest.fixture(scope="module")
def trained(task: ClassifierTask):
    return task.train(seed=0, checkpoints=3)


@pytest.fixture(scope="module")
def retrained(task: ClassifierTask) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """16 random 50% subsets and the query losses of their retrained models, from two init seeds."""
    subsets = draw_subsets(task.n, N_SUBSETS, 0.5, seed=123)
    return subsets, task.retrain_losses(subsets, seed=0), task.retrain_losses(subsets, seed=1)


def accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((model(batch["x"]).argmax(1) == batch["y"]).float().mean())


# --- digits and the recipe --------------------------------------------------------------------


def test_digits_sizes_ids_and_determinism(task: ClassifierTask):
    assert task.kind == "classifier" and task.name == "digits"
    assert task.n == 1300 and task.n_classes == 10 and task.n_features == 64
    assert {s: len(ids) for s, ids in task.query_ids.items()} == {"val": 197, "test": 300}
    ids = task.example_ids + task.query_ids["val"] + task.query_ids["test"]
    assert len(set(ids)) == 1797 and all(i.startswith("digits/") and len(i) == 11 for i in ids)
    batch = task.train_batch()
    assert batch["x"].shape == (1300, 64) and batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.int64
    assert batch["x"].mean(0).abs().max() < 1e-5  # standardised with train statistics
    assert task.train_batch(np.array([3, 5]))["x"].shape == (2, 64)
    assert task.query_batch("val")["x"].shape == (197, 64) and task.texts() is None
    with pytest.raises(StrideConfigError):
        task.query_batch("train")
    again, other = digits_task(seed=0), digits_task(seed=1)
    assert again.example_ids == task.example_ids and torch.equal(again.train_batch()["x"], batch["x"])
    assert other.example_ids != task.example_ids


def test_full_training_is_accurate_and_deterministic(task: ClassifierTask, trained):
    acc = accuracy(trained.model, task.query_batch("test"))
    print(f"digits MLP test accuracy {acc:.4f}, train loss {trained.info['train_loss']:.4f}")
    assert acc > 0.95
    assert trained.info["train_loss"] < 0.1 and trained.info["seconds"] > 0
    assert set(dict(trained.model.named_children())) == {"hidden", "out"}
    few = np.arange(0, task.n, 10)
    first, again = (task.train(few, seed=0).model.state_dict() for _ in range(2))
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert not torch.equal(task.train(few, seed=1).model.state_dict()["out.weight"], first["out.weight"])


def test_checkpoints_are_evenly_spaced_and_end_at_the_final_model(trained):
    assert len(trained.checkpoints) == 3
    lrs = [lr for lr, _ in trained.checkpoints]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # cosine decay; mean rate of each third of training
    final = trained.checkpoints[-1][1]
    assert all(torch.equal(v, final[k]) for k, v in trained.model.state_dict().items())
    assert not torch.equal(trained.checkpoints[0][1]["out.weight"], final["out.weight"])


def test_losses_features_and_functional_loss(task: ClassifierTask, trained):
    model, batch = trained.model, task.query_batch("test")
    losses = task.query_losses(model, "test")
    assert losses.shape == (300,) and np.all(losses >= 0)
    assert np.allclose(task.example_loss(model, batch).detach().numpy(), losses, atol=1e-6)
    assert task.features(model, batch).shape == (300, 128) and task.last_layer(model) is model.out
    params = {k: v.detach() for k, v in model.named_parameters()}
    f = task.functional_loss(model)
    one = {k: v[0] for k, v in batch.items()}
    assert torch.allclose(f(params, one), torch.as_tensor(losses[0], dtype=torch.float32), atol=1e-6)
    grads = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(params, {k: v[:5] for k, v in batch.items()})
    assert grads["hidden.weight"].shape == (5, 128, 64) and grads["out.bias"].shape == (5, 10)


# --- batched retraining -----------------------------------------------------------------------


def test_draw_subsets_exact_sizes(retrained):
    subsets = retrained[0]
    assert subsets.shape == (N_SUBSETS, 1300) and subsets.dtype == bool
    assert set(subsets.sum(1).tolist()) == {650}


def test_batched_retraining_equals_single_training(task: ClassifierTask):
    """Unequal subset sizes (padding) across two chunks, against ``train`` on each subset alone.

    The two paths are the same computation (in float64 they agree to ~1e-9 on 650-example
    subsets); float32 rounding grows over 300 Adam steps to ~1e-4 on a few queries.
    """
    rng = np.random.default_rng(7)
    subsets = np.zeros((3, task.n), dtype=bool)
    for row, size in zip(subsets, (100, 250, 180)):
        row[rng.choice(task.n, size, replace=False)] = True
    batched = task.retrain_losses(subsets, seed=3, chunk=2)
    assert batched["val"].shape == (3, 197) and batched["test"].shape == (3, 300)
    for j in range(3):
        single = task.train(np.flatnonzero(subsets[j]), seed=3).model
        diff = np.concatenate([np.abs(task.query_losses(single, s) - batched[s][j]) for s in ("val", "test")])
        assert np.median(diff) < 1e-5 and diff.max() < 1e-3


def test_training_input_errors(task: ClassifierTask):
    with pytest.raises(StrideInputError, match="empty subset"):
        task.train(np.array([], dtype=np.int64))
    with pytest.raises(StrideConfigError, match="checkpoints"):
        task.train(checkpoints=301)
    with pytest.raises(StrideInputError, match="subsets must be"):
        task.retrain_losses(np.ones((2, 5), dtype=bool), seed=0)
    with pytest.raises(StrideInputError, match="empty"):
        task.retrain_losses(np.zeros((1, task.n), dtype=bool), seed=0)


# --- sites ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form,in_dim,out_dim", [("logit", 128, 10), ("activation", 128, 128), ("input", 64, 64),
                                                ("pre_activation", 64, 128), ("full", 64 + 128, 128 + 10)])
def test_site_zero_shift_is_exact(task: ClassifierTask, trained, form: str, in_dim: int, out_dim: int):
    model, batch = trained.model, task.query_batch("val")
    site = task.site(model, form)
    assert (site.form, site.in_dim, site.out_dim) == (form, in_dim, out_dim)
    feats = site.encode(batch)
    assert feats.shape == (197, 1, in_dim)
    with torch.no_grad():
        reference = model(batch["x"])
    base = site.logits(feats, batch)
    assert base.shape == (197, 1, 10)
    assert torch.equal(base[:, 0], reference)
    assert torch.equal(site.logits(feats, batch, torch.zeros(197, 1, out_dim))[:, 0], reference)
    assert torch.equal(site.example_loss(base, batch), task.example_loss(model, batch).detach())
    assert float(site.kl(base, base, batch)) == 0.0
    shift = torch.zeros(197, 1, out_dim, requires_grad=True)
    steered = site.logits(feats, batch, shift + 0.5 * torch.randn(197, 1, out_dim))
    kl = site.kl(base, steered, batch)
    assert kl > 0 and kl.shape == ()
    (grad,) = torch.autograd.grad(site.example_loss(steered, batch).sum(), shift)
    assert grad.abs().sum() > 0
    assert all(p.requires_grad for p in model.parameters())  # the site froze a copy, not the task's model


def test_full_form_shifts_the_pre_activations_and_the_logits(task: ClassifierTask, trained):
    """The full form's shift is the pre-activation form's on its first H outputs and the logit form's on the rest."""
    model, batch = trained.model, task.query_batch("val")
    full, pre, logit = (task.site(model, form) for form in ("full", "pre_activation", "logit"))
    gen = torch.Generator().manual_seed(0)
    s_pre, s_logit = torch.randn(197, 1, 128, generator=gen), torch.randn(197, 1, 10, generator=gen)
    feats = full.encode(batch)
    assert torch.equal(feats[:, 0, :64], batch["x"]) and torch.equal(feats[:, 0, 64:], model.features(batch["x"]))
    zeros = (torch.zeros_like(s_pre), torch.zeros_like(s_logit))
    on_pre = full.logits(feats, batch, torch.cat([s_pre, zeros[1]], -1))
    assert torch.allclose(on_pre, pre.logits(pre.encode(batch), batch, s_pre))
    on_logits = full.logits(feats, batch, torch.cat([zeros[0], s_logit], -1))
    assert torch.allclose(on_logits, logit.logits(logit.encode(batch), batch, s_logit))
    with torch.no_grad():
        by_hand = model.out(torch.relu(model.hidden(batch["x"]) + s_pre[:, 0])) + s_logit[:, 0]
    assert torch.allclose(full.logits(feats, batch, torch.cat([s_pre, s_logit], -1))[:, 0], by_hand)


def test_site_rejects_unknown_form_and_layer(task: ClassifierTask, trained):
    with pytest.raises(StrideConfigError, match="form"):
        task.site(trained.model, "residual")
    with pytest.raises(StrideConfigError, match="layer"):
        task.site(trained.model, "logit", layer=2)
    assert task.site(trained.model, "activation", layer=0).form == "activation"


# --- LDS sanity on retrained digits -----------------------------------------------------------


def test_lds_perfect_datamodel_scores_high_and_random_scores_do_not(retrained):
    subsets, losses, _ = retrained
    target = losses["test"]  # (m, Q)
    S = subsets.astype(np.float64)
    # Least squares with an intercept: sum_{i in S_j} w_i ~ -loss_j (min-norm; m < n, so it interpolates).
    W = np.linalg.lstsq(S - S.mean(0), -(target - target.mean(0)), rcond=None)[0]
    perfect = lds(W.T, subsets, target)
    random = lds(np.random.default_rng(0).standard_normal(W.T.shape), subsets, target)
    print(f"LDS perfect datamodel {perfect.mean:.3f}, random {random.mean:.3f}")
    assert perfect.n_nan == 0 and perfect.mean > 0.9
    assert abs(random.mean) < 0.1
    assert lds(-W.T, subsets, target).mean < -0.9  # the sign convention matters


def test_seed_agreement_is_high(retrained):
    _, seed0, seed1 = retrained
    for split in ("val", "test"):
        agreement = seed_agreement(seed0[split], seed1[split])
        print(f"seed agreement ({split}, {N_SUBSETS} subsets of 50%): {agreement.mean:.3f} +- {agreement.std:.3f}")
        assert agreement.mean > 0.6


# --- user tables ------------------------------------------------------------------------------


@pytest.fixture
def cancer() -> pl.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = {name: data.data[:, j] for j, name in enumerate(data.feature_names)}
    return pl.DataFrame({**columns, "diagnosis": np.asarray(data.target_names)[data.target]})


def test_tabular_task_happy_path(cancer: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "cancer.csv"
    cancer.write_csv(path)
    task = tabular_task(path, "diagnosis", seed=0)
    assert task.name == "cancer" and task.n_classes == 2 and task.n_features == 30
    assert (task.n, len(task.query_ids["val"]), len(task.query_ids["test"])) == (427, 57, 85)
    ids = task.example_ids + task.query_ids["val"] + task.query_ids["test"]
    assert sorted(ids) == [f"row/{i:06d}" for i in range(569)]
    x = task.train_batch()["x"]
    assert x.mean(0).abs().max() < 1e-5 and (x.std(0, unbiased=False) - 1).abs().max() < 1e-4
    y = task.train_batch()["y"].numpy()
    expected = (cancer["diagnosis"].to_numpy()[[int(i[4:]) for i in task.example_ids]] == "malignant").astype(int)
    assert np.array_equal(y, expected)  # sorted label values: benign = 0, malignant = 1
    model = task.train(seed=0).model
    acc = accuracy(model, task.query_batch("test"))
    print(f"breast-cancer MLP test accuracy {acc:.4f}")
    assert acc > 0.9


def test_tabular_task_parquet_and_max_rows(cancer: pl.DataFrame, tmp_path: Path):
    path = tmp_path / "cancer.parquet"
    cancer.write_parquet(path)
    task = tabular_task(path, "diagnosis", seed=1, max_rows=200, val_fraction=0.2, test_fraction=0.2)
    assert (task.n, len(task.query_ids["val"]), len(task.query_ids["test"])) == (120, 40, 40)
    again = tabular_task(path, "diagnosis", seed=1, max_rows=200, val_fraction=0.2, test_fraction=0.2)
    assert again.example_ids == task.example_ids


@pytest.mark.parametrize(
    "change,label,match",
    [
        (lambda df: df, "label", r"no label column 'label'; columns are \[.*'diagnosis'"),
        (lambda df: df.with_columns(pl.lit("note").alias("comment")), "diagnosis", r"not numeric: comment \(String\)"),
        (
            lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(float("nan"))
                                       .otherwise(pl.col("mean radius")).alias("mean radius")),
            "diagnosis",
            r"column 'mean radius' has 3 missing values",
        ),
        (
            lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(float("inf"))
                                       .otherwise(pl.col("mean area")).alias("mean area")),
            "diagnosis",
            r"column 'mean area' has 1 missing values \(null, NaN or inf\)",
        ),
        (
            lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None)
                                       .otherwise(pl.col("diagnosis")).alias("diagnosis")),
            "diagnosis",
            r"column 'diagnosis' has 1 missing values",
        ),
        (lambda df: df.with_columns(pl.lit("benign").alias("diagnosis")), "diagnosis", "need at least 2"),
    ],
    ids=["missing-label", "non-numeric", "nan-feature", "inf-feature", "null-label", "one-class"],
)
def test_tabular_task_errors(cancer: pl.DataFrame, tmp_path: Path, change, label: str, match: str):
    path = tmp_path / "bad.csv"
    change(cancer).write_csv(path)
    with pytest.raises(StrideInputError, match=match):
        tabular_task(path, label)


def test_tabular_task_rejects_unknown_files(tmp_path: Path):
    with pytest.raises(StrideInputError, match="not found"):
        tabular_task(tmp_path / "missing.csv", "y")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(StrideInputError, match="unsupported format"):
        tabular_task(tmp_path / "data.json", "y")
