"""A tiny classifier Task for the attribution-method tests (test_eval_methods*.py).

A 5-8-3 MLP on Gaussian blobs, with texts and token ids, keeps those tests independent of the
benchmark tasks and fast; ``toy`` and ``toy_trained`` are its module-scoped fixtures (import them
into a test module to use them there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stride_assets.engine.evaluation.methods.dattri_methods import dattri_available
from stride_assets.engine.evaluation.task import Trained

needs_dattri = pytest.mark.skipif(not dattri_available(), reason="optional dependency dattri is not installed")

WORDS = [f"w{i}" for i in range(30)]


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



@pytest.fixture(scope="module")
def toy() -> ToyTask:
    return ToyTask()


@pytest.fixture(scope="module")
def toy_trained(toy: ToyTask) -> Trained:
    return toy.train(None, seed=0, checkpoints=3)
