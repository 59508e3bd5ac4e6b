"""Baseline attribution methods (evaluation/methods): exactness, projection, signs, shapes.

A tiny Task of our own (a 5-8-3 MLP on Gaussian blobs, with texts and token ids) keeps these
tests independent of the benchmark tasks and fast; a small digits task checks the methods on
the real ClassifierTask, and dattri's TRAK and LDS are checked where dattri is installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods import METHODS, CountSketch, MethodResult, applicable, per_example_grads
from stride_assets.engine.evaluation.methods.dattri_methods import dattri_available, dattri_lds
from stride_assets.engine.evaluation.task import Trained, draw_subsets
from stride_assets.engine.losses import sequence_nll

needs_dattri = pytest.mark.skipif(not dattri_available(), reason="optional dependency dattri is not installed")

WORDS = [f"w{i}" for i in range(30)]


# --- a tiny classifier task --------------------------------------------------------------------


class TinyMLP(nn.Module):
    def __init__(self, d: int = 5, hidden: int = 8, classes: int = 3):
        super().__init__()
        self.hidden = nn.Linear(d, hidden)
        self.out = nn.Linear(hidden, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class ToyTask:
    """Three overlapping Gaussian blobs; test queries 0..2 also appear (exactly) in the training set.

    Recipe: full-batch Adam, fixed init per seed, objective mean CE + wd / 2 ||theta||^2.
    Every example has a text (words drawn by class) and the matching token ids.
    """

    name = "toy"
    kind = "classifier"
    weight_decay = 1e-2
    steps = 300
    duplicates = {0: 100, 1: 101, 2: 102}  # test query -> training index of its copy

    def __init__(self, n_base: int = 100, n_queries: int = 12, seed: int = 0):
        rng = np.random.default_rng(seed)

        def draw(m: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
            y = rng.integers(0, 3, m)
            x = rng.normal(0, 1.3, (m, 5)) + np.eye(3, 5)[y] * 2.0
            words = [list(rng.choice(10, 6) + 10 * c) + list(rng.choice(30, 3)) for c in y]
            return x.astype(np.float32), y, words

        xq, yq, wq = draw(2 * n_queries)
        xt, yt, wt = draw(n_base)
        dup = list(self.duplicates)
        xt, yt = np.concatenate([xt, xq[n_queries:][dup]]), np.concatenate([yt, yq[n_queries:][dup]])
        wt = wt + [wq[n_queries + q] for q in dup]
        self._data = {
            "train": (xt, yt, wt),
            "val": (xq[:n_queries], yq[:n_queries], wq[:n_queries]),
            "test": (xq[n_queries:], yq[n_queries:], wq[n_queries:]),
        }
        self.example_ids = [f"ex{i}" for i in range(len(yt))]
        self.query_ids = {s: [f"{s}{i}" for i in range(n_queries)] for s in ("val", "test")}

    @property
    def n(self) -> int:
        return len(self.example_ids)

    def _batch(self, split: str) -> dict[str, torch.Tensor]:
        x, y, _ = self._data[split]
        return {"x": torch.as_tensor(x), "y": torch.as_tensor(y)}

    def train_batch(self, indices=None):
        batch = self._batch("train")
        return batch if indices is None else {k: v[torch.as_tensor(indices)] for k, v in batch.items()}

    def query_batch(self, split="test"):
        return self._batch(split)

    def new_model(self, seed: int = 0) -> TinyMLP:
        torch.manual_seed(seed)
        return TinyMLP()

    def train(self, indices=None, seed=0, checkpoints=0) -> Trained:
        batch = self.train_batch(indices)
        model = self.new_model(seed)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        saves = {round((j + 1) * self.steps / checkpoints) for j in range(checkpoints)} if checkpoints else set()
        ckpts = []
        for step in range(self.steps):
            opt.zero_grad()
            l2 = sum(p.pow(2).sum() for p in model.parameters())
            (self.example_loss(model, batch).mean() + self.weight_decay / 2 * l2).backward()
            opt.step()
            if step + 1 in saves:
                ckpts.append((0.05, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return Trained(model.eval(), ckpts)

    def retrain_losses(self, subsets, seed):
        rows = [self.train(np.flatnonzero(s), seed).model for s in subsets]
        return {s: np.stack([self.query_losses(m, s) for m in rows]) for s in ("val", "test")}

    @torch.no_grad()
    def query_losses(self, model, split="test"):
        return self.example_loss(model, self.query_batch(split)).double().numpy()

    def example_loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def functional_loss(self, model):
        def loss(params, batch):
            x, y = batch["x"], batch["y"]
            if x.dim() == 1:
                x, y = x.unsqueeze(0), y.reshape(1)
            return F.cross_entropy(functional_call(model, params, (x,)), y)

        return loss

    @torch.no_grad()
    def features(self, model, batch):
        return model.features(batch["x"])

    def last_layer(self, model):
        return model.out

    def texts(self, split=None):
        return [" ".join(WORDS[w] for w in row) for row in self._data[split or "train"][2]]

    def token_ids(self, split=None):
        return [list(row) for row in self._data[split or "train"][2]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy() -> ToyTask:
    return ToyTask()


@pytest.fixture(scope="module")
def toy_trained(toy: ToyTask) -> Trained:
    return toy.train(None, seed=0, checkpoints=3)


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
    dot = METHODS["grad_dot"](toy, toy_trained, "val", proj_dim=None, chunk_size=17)
    np.testing.assert_allclose(dot.scores, (G_query @ G_train.T).numpy(), rtol=1e-4, atol=1e-7)
    unit = lambda G: G / G.norm(dim=1, keepdim=True)  # noqa: E731
    cos = METHODS["grad_cos"](toy, toy_trained, "val", proj_dim=None)
    np.testing.assert_allclose(cos.scores, (unit(G_query) @ unit(G_train).T).numpy(), rtol=1e-4, atol=1e-6)

    expected = 0
    work = toy.new_model()
    for lr, state in toy_trained.checkpoints:
        work.load_state_dict(state)
        G_query, G_train = autograd_grads(toy, work, toy.query_batch("val")), autograd_grads(toy, work, toy.train_batch())
        expected = expected + lr * (G_query @ G_train.T)
    tracin = METHODS["tracin"](toy, toy_trained, "val", proj_dim=None)
    np.testing.assert_allclose(tracin.scores, expected.numpy(), rtol=1e-4, atol=1e-7)


def test_logra_equals_the_damped_primal_formula(toy, toy_trained):
    """Kernel (n < k) and primal forms agree with G_q (Phi^T Phi + lambda I)^-1 Phi^T."""
    Phi = autograd_grads(toy, toy_trained.model, toy.train_batch())
    Gq = autograd_grads(toy, toy_trained.model, toy.query_batch("test"))
    for damping in (0.5, 1e-3):
        res = METHODS["logra"](toy, toy_trained, "test", damping=damping, proj_dim=None)
        A = Phi.T @ Phi
        lam = damping * float(torch.trace(A)) / A.shape[0]
        expected = Gq @ torch.linalg.solve(A + lam * torch.eye(A.shape[0], dtype=A.dtype), Phi.T)
        np.testing.assert_allclose(res.scores, expected.numpy(), rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        assert res.info["form"] == "primal"  # n = 103 > k = 75 parameters
        assert res.info["lam"] == pytest.approx(lam)


def test_logra_kernel_form_matches_primal_form():
    from stride_assets.engine.evaluation.methods.base import DampedSolver

    gen = torch.Generator().manual_seed(0)
    Phi, Gq = torch.randn(20, 50, generator=gen).double(), torch.randn(3, 50, generator=gen).double()
    primal = DampedSolver.fit(Phi.T @ Phi, 0.3)
    kernel = DampedSolver.fit(Phi @ Phi.T, 0.3, size=50)
    assert kernel.lam == pytest.approx(primal.lam)
    torch.testing.assert_close(kernel.solve(Phi @ Gq.T).T, primal.solve(Gq.T).T @ Phi.T)


def test_if_exact_equals_a_dense_brute_force(toy, toy_trained):
    res = METHODS["if_exact"](toy, toy_trained, "test", damping=0.05)
    assert res.settings["weight_decay"] == toy.weight_decay  # read from the task (classifier)
    expected = dense_last_layer_influence(toy, toy_trained.model, "test", 0.05, toy.weight_decay)
    np.testing.assert_allclose(res.scores, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_if_exact_per_token_loss_equals_a_dense_brute_force():
    """Sequences with padding and a per-sequence mean over tokens: delta/B follow the task's loss."""
    task = ToyLMTask()
    torch.manual_seed(1)
    trained = Trained(TinyLM())
    res = METHODS["if_exact"](task, trained, "val", damping=0.1, chunk_size=7)
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
    res = METHODS["grad_dot"](toy, toy_trained, "val", proj_dim=32, seed=1)
    assert res.settings["proj_dim_used"] == 32
    q = per_example_grads(toy, toy_trained.model, toy.query_batch("val"), sketch=sketch)
    np.testing.assert_allclose(res.scores, (q.double() @ chunked.double().T).numpy(), rtol=1e-4, atol=1e-7)
    assert METHODS["grad_dot"](toy, toy_trained, "val", proj_dim=10_000).settings["proj_dim_used"] is None


# --- signs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, settings",
    [("grad_dot", {}), ("logra", {}), ("if_exact", {}), ("repsim", {}), ("tfidf", {}), ("tfidf", {"on": "token_ids"}),
     pytest.param("dattri_trak_1", {"regularization": 1e-3}, marks=needs_dattri)],
)
def test_a_training_duplicate_of_a_query_gets_a_top_positive_score(toy, toy_trained, name, settings):
    """The copy scores positive; it ranks in the top 3 of 103 where the query is not already fit.

    A well-fit query (loss 0.08 here) has a small gradient, and harder training examples of its
    class pointing the same way legitimately outrank its copy for loss-gradient methods
    (grad_dot puts it 6th, if_exact 9th), so the rank is asserted for the queries with loss > 0.3.
    """
    res = METHODS[name](toy, toy_trained, "test", **settings)
    losses = toy.query_losses(toy_trained.model, "test")
    hard = [q for q in toy.duplicates if losses[q] > 0.3]
    assert len(hard) >= 2
    for q, i in toy.duplicates.items():
        assert res.scores[q, i] > 0, (name, q)
        rank = int(np.flatnonzero(np.argsort(-res.scores[q]) == i)[0])
        assert q not in hard or rank < 3, (name, q, rank)


@pytest.mark.parametrize("name", ["grad_dot", "if_exact"])
def test_removing_top_scored_examples_raises_the_query_loss_more_than_random(toy, toy_trained, name):
    """Counterfactual retraining: drop the top-k (or k random, or the bottom-k) and retrain."""
    scores = METHODS[name](toy, toy_trained, "test").scores
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
    assert {"grad_dot", "grad_cos", "tracin", "logra", "repsim", "tfidf", "if_exact"} <= set(names)
    for name in names:
        if name == "dattri_trak_5":
            continue  # trains 4 extra models; run on digits below
        res = METHODS[name](toy, toy_trained, "val")
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
        METHODS["tracin"](toy, Trained(toy_trained.model), "val")
    with pytest.raises(StrideConfigError, match="does not apply"):
        METHODS["if_exact"](big, toy_trained, "val")
    with pytest.raises(StrideConfigError):
        METHODS["tfidf"](toy, toy_trained, "val", on="letters")


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
    from stride_assets.engine.evaluation.classifier import ClassifierTask, MLPRecipe, digits_task

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
    res = METHODS[name](task, trained, "val", **settings)
    assert res.scores.shape == (40, 300)
    assert lds(res.scores, subsets, losses).mean > 0.2, name
    if dattri_available():
        np.testing.assert_allclose(lds(res.scores, subsets, losses).per_query, dattri_lds(res.scores, subsets, losses),
                                   rtol=1e-8, atol=1e-10)
