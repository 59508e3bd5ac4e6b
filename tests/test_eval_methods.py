"""Baseline attribution methods (evaluation/methods): exactness and projection.

Each gradient-based method is checked against an explicit reference (autograd loops, a dense
Hessian) on the tiny classifier Task of ``eval_toys`` and a tiny per-token language model;
signs, shapes and LDS on a real task are in test_eval_methods_behaviour.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from eval_toys import ToyTask, toy, toy_trained  # noqa: F401  (module-scoped fixtures)
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.methods import CountSketch, per_example_grads, score_method
from stride_assets.engine.evaluation.task import Trained
from stride_assets.engine.losses import sequence_nll

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- a tiny per-token "language model" task (for the last-layer influence function) ------------


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 7, d: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))


class ToyLMTask:
    """Right-padded sequences; example loss = mean next-token NLL over real tokens (as LMTask)."""

    name = "toy-lm"
    kind = "lm"

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self._data = {}
        for split, m in (("train", 20), ("val", 4), ("test", 4)):
            ids = torch.randint(0, 7, (m, 6), generator=gen)
            lengths = torch.randint(2, 7, (m,), generator=gen)
            mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
            self._data[split] = {"input_ids": ids * mask, "attention_mask": mask}
        self.example_ids = [f"s{i}" for i in range(20)]
        self.query_ids = {s: [f"{s}{i}" for i in range(4)] for s in ("val", "test")}

    @property
    def n(self) -> int:
        return 20

    def train_batch(self, indices=None):
        return dict(self._data["train"])

    def query_batch(self, split="test"):
        return dict(self._data[split])

    def example_loss(self, model, batch):
        return sequence_nll(model(batch["input_ids"]), batch["input_ids"], batch["attention_mask"])

    def last_layer(self, model):
        return model.head

    def texts(self, split=None):
        return None


# --- references --------------------------------------------------------------------------------


def autograd_grads(task, model: nn.Module, batch) -> torch.Tensor:
    """Per-example gradients of the example loss, one backward pass per example (no vmap)."""
    params = list(model.parameters())
    rows = []
    for i in range(len(next(iter(batch.values())))):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        grads = torch.autograd.grad(task.example_loss(model, one).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double()


def dense_last_layer_influence(task, model: nn.Module, split: str, damping: float, wd: float) -> np.ndarray:
    """Brute force: autograd gradients and the full autograd Hessian of the mean training loss."""
    layer = task.last_layer(model)
    names = [n for n, p in model.named_parameters() if p is layer.weight or p is layer.bias]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    theta0 = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names]).double()

    def unflat(theta):
        out, start = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[start : start + math.prod(s)].reshape(s).float()
            start += math.prod(s)
        return out

    class Swapped(nn.Module):  # the model with the last layer's parameters given explicitly
        def __init__(self, theta):
            super().__init__()
            self.theta = theta

        def __call__(self, *args, **kwargs):
            return functional_call(model, unflat(self.theta), args, kwargs)

    def losses(theta, batch):
        return task.example_loss(Swapped(theta), batch).double()

    train = task.train_batch(None)
    H = torch.autograd.functional.hessian(lambda t: losses(t, train).mean(), theta0)
    H = H + wd * torch.eye(len(theta0), dtype=H.dtype)
    jac = lambda batch: torch.autograd.functional.jacobian(lambda t: losses(t, batch), theta0)  # noqa: E731
    G_train, G_query = jac(train), jac(task.query_batch(split))
    lam = damping * float(torch.trace(H)) / len(theta0)
    return (G_query @ torch.linalg.solve(H + lam * torch.eye(len(theta0), dtype=H.dtype), G_train.T)).numpy()


# --- exactness ---------------------------------------------------------------------------------


def test_gradient_methods_match_an_explicit_autograd_loop(toy, toy_trained):
    model = toy_trained.model
    G_train = autograd_grads(toy, model, toy.train_batch())
    G_query = autograd_grads(toy, model, toy.query_batch("val"))
    dot = score_method("grad_dot", toy, toy_trained, "val", proj_dim=None, chunk_size=17)
    np.testing.assert_allclose(dot.scores, (G_query @ G_train.T).numpy(), rtol=1e-4, atol=1e-7)
    unit = lambda G: G / G.norm(dim=1, keepdim=True)  # noqa: E731
    cos = score_method("grad_cos", toy, toy_trained, "val", proj_dim=None)
    np.testing.assert_allclose(cos.scores, (unit(G_query) @ unit(G_train).T).numpy(), rtol=1e-4, atol=1e-6)

    expected = 0
    work = toy.new_model()
    for lr, state in toy_trained.checkpoints:
        work.load_state_dict(state)
        G_query, G_train = autograd_grads(toy, work, toy.query_batch("val")), autograd_grads(toy, work, toy.train_batch())
        expected = expected + lr * (G_query @ G_train.T)
    tracin = score_method("tracin", toy, toy_trained, "val", proj_dim=None)
    np.testing.assert_allclose(tracin.scores, expected.numpy(), rtol=1e-4, atol=1e-7)


def _logra_reference(task, model, split: str, damping: float, curvature: str) -> torch.Tensor:
    """G_q (Phi^T Phi + lambda I)^-1 G^T, Phi = diag(w) G, lambda = damping * trace / min(n, k), by autograd."""
    G = autograd_grads(task, model, task.train_batch())
    Gq = autograd_grads(task, model, task.query_batch(split))
    with torch.no_grad():
        loss = task.example_loss(model, task.train_batch()).double()
    p, one_minus_p = torch.exp(-loss), (-torch.expm1(-loss)).clamp_min(1e-6)
    w = {"fisher": torch.ones_like(p), "trak": 1 / one_minus_p, "gauss_newton": (p / one_minus_p).sqrt()}[curvature]
    Phi = G * w[:, None]
    A = Phi.T @ Phi
    lam = damping * float(torch.trace(A)) / min(G.shape)
    return Gq @ torch.linalg.solve(A + lam * torch.eye(A.shape[0], dtype=A.dtype), G.T), lam


@pytest.mark.parametrize("curvature", ["gauss_newton", "trak", "fisher"])
def test_logra_equals_the_damped_primal_formula(toy, toy_trained, curvature):
    """scores = G_q (Phi^T Phi + lambda I)^-1 G^T with the curvature's row weights (n = 103 > k = 75: primal)."""
    for damping in (0.5, 1e-3):
        res = score_method("logra", toy, toy_trained, "test", damping=damping, proj_dim=None, curvature=curvature)
        expected, lam = _logra_reference(toy, toy_trained.model, "test", damping, curvature)
        np.testing.assert_allclose(res.scores, expected.numpy(), rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        assert res.info["form"] == "primal"
        assert res.info["lam"] == pytest.approx(lam)
        assert res.settings["curvature"] == curvature


@pytest.mark.parametrize("curvature", ["gauss_newton", "fisher"])
def test_logra_kernel_form_matches_the_primal_formula(curvature):
    """n = 23 < k = 75: the Woodbury (n x n) form gives the same scores, and lambda is over min(n, k) = n."""
    task = ToyTask(n_base=20)
    trained = task.train(None, seed=0)
    for damping in (1.0, 0.01):
        res = score_method("logra", task, trained, "val", damping=damping, proj_dim=None, curvature=curvature)
        expected, lam = _logra_reference(task, trained.model, "val", damping, curvature)
        assert res.info["form"] == "kernel"
        assert res.info["lam"] == pytest.approx(lam)
        np.testing.assert_allclose(res.scores, expected.numpy(), rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_gauss_newton_weights_give_the_exact_logistic_hessian():
    """Binary logistic regression (a planted case where the Gauss-Newton is the Hessian): with
    w = sqrt(p / (1-p)), sum_i w_i^2 g_i g_i^T equals the autograd Hessian of the summed loss;
    the empirical Fisher (w = 1) and TRAK's margin features (w = 1 / (1-p)) do not."""
    from stride_assets.engine.evaluation.methods.gradients import curvature_weights

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * torch.randn(40, generator=gen, dtype=torch.float64) > 0).double()
    theta = torch.tensor([2.0, -0.5, 0.3], dtype=torch.float64)
    per_loss = lambda t: torch.nn.functional.binary_cross_entropy_with_logits(X @ t, y, reduction="none")  # noqa: E731
    H = torch.autograd.functional.hessian(lambda t: per_loss(t).sum(), theta)
    G = torch.autograd.functional.jacobian(per_loss, theta)
    loss = per_loss(theta).detach()
    fits = {}
    for curvature in ("gauss_newton", "fisher", "trak"):
        Phi = G * curvature_weights(loss, curvature)[:, None]
        fits[curvature] = float((Phi.T @ Phi - H).norm() / H.norm())
    assert fits["gauss_newton"] < 1e-8
    assert fits["fisher"] > 0.1 and fits["trak"] > 0.1


def test_logra_rejects_an_unknown_curvature(toy, toy_trained):
    with pytest.raises(StrideConfigError, match="curvature"):
        score_method("logra", toy, toy_trained, "test", curvature="hessian")


def test_if_exact_equals_a_dense_brute_force(toy, toy_trained):
    res = score_method("if_exact", toy, toy_trained, "test", damping=0.05)
    assert res.settings["weight_decay"] == toy.weight_decay  # read from the task (classifier)
    expected = dense_last_layer_influence(toy, toy_trained.model, "test", 0.05, toy.weight_decay)
    np.testing.assert_allclose(res.scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_if_exact_per_token_loss_equals_a_dense_brute_force():
    """Sequences with padding and a per-sequence mean over tokens: delta/B follow the task's loss."""
    task = ToyLMTask()
    torch.manual_seed(1)
    trained = Trained(TinyLM())
    res = score_method("if_exact", task, trained, "val", damping=0.1, chunk_size=7)
    assert res.settings["weight_decay"] == 0.0  # "auto" adds none outside classifiers
    expected = dense_last_layer_influence(task, trained.model, "val", 0.1, 0.0)
    np.testing.assert_allclose(res.scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


# --- projection --------------------------------------------------------------------------------


def test_count_sketch_preserves_inner_products_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    D, k = 20_000, 4_096
    x = torch.randn(8, D, generator=gen)
    x[4:] = x[:4] + 0.5 * torch.randn(4, D, generator=gen)  # correlated pairs
    sketch = CountSketch.make(D, k, seed=3)
    Sx = sketch(x).double()
    x = x.double()
    exact, approx = x @ x.T, Sx @ Sx.T
    norms = x.norm(dim=1)
    bound = 6 * math.sqrt(2 / k)  # ~6 standard deviations of the relative error
    assert ((approx - exact).abs() / torch.outer(norms, norms)).max() < bound
    assert torch.equal(CountSketch.make(D, k, seed=3)(x.float()), sketch(x.float()))
    assert not torch.equal(CountSketch.make(D, k, seed=4)(x.float()), sketch(x.float()))
    assert torch.equal(sketch(x.float()[:3]), sketch(x.float())[:3])  # row-wise: chunking changes nothing


def test_sketched_gradients_are_the_sketch_of_exact_gradients(toy, toy_trained):
    exact = per_example_grads(toy, toy_trained.model, toy.train_batch(), chunk_size=1000)
    sketch = CountSketch.make(exact.shape[1], 32, seed=1)
    chunked = per_example_grads(toy, toy_trained.model, toy.train_batch(), chunk_size=9, sketch=sketch)
    torch.testing.assert_close(chunked, sketch(exact), rtol=1e-5, atol=1e-6)
    res = score_method("grad_dot", toy, toy_trained, "val", proj_dim=32, seed=1)
    assert res.settings["proj_dim_used"] == 32
    q = per_example_grads(toy, toy_trained.model, toy.query_batch("val"), sketch=sketch)
    np.testing.assert_allclose(res.scores, (q.double() @ chunked.double().T).numpy(), rtol=1e-4, atol=1e-7)
    assert score_method("grad_dot", toy, toy_trained, "val", proj_dim=10_000).settings["proj_dim_used"] is None
