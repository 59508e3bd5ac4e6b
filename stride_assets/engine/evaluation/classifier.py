"""Tabular classification benchmarks: a one-hidden-layer MLP on standardised features.

``ClassifierTask`` implements the ``Task`` protocol (see ``task.py``) for any (X, y) arrays
(``tabular.py`` builds it from data sets). The recipe (``MLPRecipe``) is deterministic:
fixed initialisation per seed, full-batch Adam, cosine learning rate, no data order. Hence

- ``train`` trains one ``MLP`` (an ``nn.Module``) on a subset, with optional checkpoints;
- ``retrain_losses`` trains many models at once as one batched computation: parameters are
  stacked along a leading model axis, each model's loss is its own masked mean over its
  subset, and one Adam steps the stacked tensors. Adam is elementwise and the total loss is
  a sum over models, so every model follows exactly the trajectory it would follow alone.

``ClassifierSite`` is where STRIDE's operators attach (token axis T = 1): on the logits
("logit"), on the hidden activations ("activation"), on the inputs ("input"), on the hidden pre-activations read
from the inputs ("pre_activation": a low-rank change of the first weight matrix), or on both layers ("full": the
hidden pre-activations and the logits, so an operator acts as a low-rank change of both weight matrices).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stride_assets.engine.backbone import Batch
from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.evaluation.task import Trained

SPLITS = ("val", "test")
FORMS = ("head", "logit", "activation", "input", "pre_activation", "full")
# Float elements of batched-training activations allowed per chunk of models (~256 MiB).
_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class MLPRecipe:
    """How every model of a classifier task is trained (the same for all subsets)."""

    hidden: int = 128
    steps: int = 300
    lr: float = 1e-2  # peak; cosine decay to 0 over ``steps``
    weight_decay: float = 1e-3  # objective = mean CE + weight_decay / 2 * ||theta||^2 (all parameters)

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based)."""
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))


class MLP(nn.Module):
    """Linear(F, H) -> ReLU -> Linear(H, C)."""

    def __init__(self, n_features: int, hidden: int, n_classes: int):
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activations after the ReLU."""
        return torch.relu(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def init_params(n_features: int, hidden: int, n_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """The MLP's initial state dict for ``seed``: PyTorch's default U(+-1/sqrt(fan_in)), seeded."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "hidden.weight": ((hidden, n_features), n_features),
        "hidden.bias": ((hidden,), n_features),
        "out.weight": ((n_classes, hidden), hidden),
        "out.bias": ((n_classes,), hidden),
    }
    return {
        name: (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(fan_in) for name, (shape, fan_in) in shapes.items()
    }


def _stacked_logits(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (m, N, C) of m stacked MLPs on inputs x (m, N, F)."""
    h = torch.relu(torch.baddbmm(p["hidden.bias"].unsqueeze(1), x, p["hidden.weight"].transpose(1, 2)))
    return torch.baddbmm(p["out.bias"].unsqueeze(1), h, p["out.weight"].transpose(1, 2))


def _adam(params: list[torch.Tensor], recipe: MLPRecipe) -> torch.optim.Adam:
    """Adam whose (coupled) weight decay adds wd * theta to the gradient: the L2 term wd/2 ||theta||^2.

    The update is elementwise, so one Adam over stacked parameters equals one Adam per model.
    """
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


class ClassifierSite:
    """STRIDE's attachment point on an ``MLP`` (T = 1); a frozen private copy of the model.

    - "logit": feats = hidden activations (N, 1, H); logits = out(feats) + shift, C = classes;
    - "activation" (= "head": the output layer's input): feats = hidden activations; logits = out(feats + shift), C = H;
    - "input": feats = inputs (N, 1, F); logits = MLP(feats + shift), C = F;
    - "pre_activation": feats = inputs; logits = out(relu(W1 x + b1 + shift)), C = H;
    - "full": feats = [inputs, hidden activations] (N, 1, F + H); the shift's first H outputs are added to the
      hidden pre-activations, its last ``classes`` to the logits: logits = out(relu(W1 x + b1 + s_1)) + s_2,
      C = H + classes. The basis reads both layers' inputs, so operator k is a low-rank change of W1 and W2.
    """

    def __init__(self, model: MLP, form: str):
        if form not in FORMS:
            raise StrideConfigError(f"unknown operator form {form!r} for a classifier ({', '.join(FORMS)})")
        self.form = form
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        n_features, hidden = self.model.hidden.in_features, self.model.hidden.out_features
        n_classes = self.model.out.out_features
        self.n_features = n_features
        self.in_dim, self.out_dim = {  # (features the basis reads, outputs a shift has) per form
            "logit": (hidden, n_classes), "activation": (hidden, hidden), "head": (hidden, hidden),
            "input": (n_features, n_features), "pre_activation": (n_features, hidden),
            "full": (n_features + hidden, hidden + n_classes)}[form]

    @torch.no_grad()
    def encode(self, batch: Batch) -> torch.Tensor:
        x = batch["x"]
        if self.form == "full":
            return torch.cat([x, self.model.features(x)], -1).unsqueeze(1)
        return (x if self.form in ("input", "pre_activation") else self.model.features(x)).unsqueeze(1)

    def logits(self, feats: torch.Tensor, batch: Batch, shift: torch.Tensor | None = None) -> torch.Tensor:
        h = feats[:, 0]
        s = None if shift is None else shift[:, 0]
        if self.form == "input":
            return self.model(h if s is None else h + s).unsqueeze(1)
        if self.form == "pre_activation":
            out = self.model(h) if s is None else self.model.out(torch.relu(self.model.hidden(h) + s))
            return out.unsqueeze(1)
        if self.form == "full":
            x, hidden = h[:, :self.n_features], self.model.hidden.out_features
            if s is None:
                return self.model(x).unsqueeze(1)
            pre = self.model.hidden(x) + s[:, :hidden]
            return (self.model.out(torch.relu(pre)) + s[:, hidden:]).unsqueeze(1)
        if self.form in ("activation", "head"):
            return self.model.out(h if s is None else h + s).unsqueeze(1)
        out = self.model.out(h)
        return (out if s is None else out + s).unsqueeze(1)

    def example_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits[:, 0].float(), batch["y"], reduction="none")

    def kl(self, base_logits: torch.Tensor, steered_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        base = F.log_softmax(base_logits[:, 0].float(), dim=-1)
        steered = F.log_softmax(steered_logits[:, 0].float(), dim=-1)
        return (base.exp() * (base - steered)).sum(-1).mean()


class ClassifierTask:
    """A ``Task`` over standardised tabular features, trained with ``MLPRecipe``."""

    kind = "classifier"

    def __init__(
        self,
        name: str,
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        X_test: np.ndarray,
        y_test: np.ndarray,
        n_classes: int,
        example_ids: list[str],
        query_ids: dict[str, list[str]],
        recipe: MLPRecipe | None = None,
    ):
        self.name = name
        self.n_classes = int(n_classes)
        self.recipe = recipe or MLPRecipe()
        self.example_ids = list(example_ids)
        self.query_ids = {split: list(query_ids[split]) for split in SPLITS}
        self._data: dict[str, Batch] = {
            split: {"x": torch.as_tensor(X, dtype=torch.float32), "y": torch.as_tensor(y, dtype=torch.int64)}
            for split, X, y in (("train", X_train, y_train), ("val", X_val, y_val), ("test", X_test, y_test))
        }
        for split, batch in self._data.items():
            ids = self.example_ids if split == "train" else self.query_ids[split]
            if len(ids) != len(batch["y"]) or batch["x"].shape[0] != len(batch["y"]):
                raise StrideInputError(f"{split}: {batch['x'].shape[0]} rows, {len(batch['y'])} labels, {len(ids)} ids")
            if len(batch["y"]) and not 0 <= int(batch["y"].min()) <= int(batch["y"].max()) < self.n_classes:
                raise StrideInputError(f"{split}: labels must lie in 0..{self.n_classes - 1}")
        self.n_features = int(self._data["train"]["x"].shape[1])

    @property
    def n(self) -> int:
        return len(self.example_ids)

    # --- data -------------------------------------------------------------------------------

    def train_batch(self, indices: np.ndarray | None = None) -> Batch:
        batch = self._data["train"]
        if indices is None:
            return dict(batch)
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return {k: v[index] for k, v in batch.items()}

    def query_batch(self, split: str = "test") -> Batch:
        if split not in SPLITS:
            raise StrideConfigError(f"unknown query split {split!r} ({' or '.join(SPLITS)})")
        return dict(self._data[split])

    def texts(self, split: str | None = None) -> list[str] | None:
        return None

    # --- training ---------------------------------------------------------------------------

    def new_model(self, seed: int = 0) -> MLP:
        """An untrained MLP with the recipe's deterministic initialisation for ``seed``."""
        rc = self.recipe
        model = MLP(self.n_features, rc.hidden, self.n_classes)
        model.load_state_dict(init_params(self.n_features, rc.hidden, self.n_classes, seed))
        return model

    def train(self, indices: np.ndarray | None = None, seed: int = 0, checkpoints: int = 0) -> Trained:
        """Train one MLP on ``indices`` (None = all).

        Checkpoint j is saved after update round((j+1) * steps / k), so the last one is the final
        model; its learning rate is the mean rate of the updates since the previous checkpoint
        (the interval it stands for in TracIn-CP).
        """
        start = time.perf_counter()
        rc = self.recipe
        if not 0 <= checkpoints <= rc.steps:
            raise StrideConfigError(f"checkpoints must lie in 0..{rc.steps} (the recipe's steps), got {checkpoints}")
        batch = self.train_batch(indices)
        if len(batch["y"]) == 0:
            raise StrideInputError("cannot train on an empty subset")
        model = self.new_model(seed).train()
        opt = _adam(list(model.parameters()), rc)
        saves = {round((j + 1) * rc.steps / checkpoints) for j in range(checkpoints)}
        ckpts: list[tuple[float, dict[str, torch.Tensor]]] = []
        last_save = 0
        for step in range(rc.steps):
            for group in opt.param_groups:
                group["lr"] = rc.lr_at(step)
            opt.zero_grad(set_to_none=True)
            self.example_loss(model, batch).mean().backward()
            opt.step()
            if step + 1 in saves:
                lr = float(np.mean([rc.lr_at(s) for s in range(last_save, step + 1)]))
                ckpts.append((lr, {k: v.detach().clone() for k, v in model.state_dict().items()}))
                last_save = step + 1
        model.eval()
        with torch.no_grad():
            train_loss = float(self.example_loss(model, batch).mean())
        return Trained(model, ckpts, {"train_loss": train_loss, "seconds": time.perf_counter() - start})

    def retrain_losses(self, subsets: np.ndarray, seed: int, chunk: int | None = None) -> dict[str, np.ndarray]:
        """Per-query CE losses {split: (m, Q)} of m models trained at once, one per row of ``subsets``.

        ``chunk`` models are trained together (None: as many as fit a ~256 MiB activation budget).
        """
        subsets = np.asarray(subsets, dtype=bool)
        if subsets.ndim != 2 or subsets.shape[1] != self.n:
            raise StrideInputError(f"subsets must be (m, n={self.n}) bool, got {subsets.shape}")
        sizes = subsets.sum(1)
        if (sizes == 0).any():
            raise StrideInputError(f"{int((sizes == 0).sum())} subsets are empty")
        if chunk is None:
            per_model = int(sizes.max()) * (self.n_features + 3 * self.recipe.hidden + 2 * self.n_classes)
            chunk = max(1, _CHUNK_ELEMENTS // per_model)
        parts = [self._train_stacked(subsets[s : s + chunk], seed) for s in range(0, len(subsets), chunk)]
        return {split: np.concatenate([p[split] for p in parts]) for split in SPLITS}

    def _train_stacked(self, subsets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Train len(subsets) models as one batched computation; their query losses per split."""
        rc, m = self.recipe, len(subsets)
        # Members of each subset, right-padded to the largest; padding has weight 0.
        sizes = subsets.sum(1)
        width = int(sizes.max())
        index = np.zeros((m, width), dtype=np.int64)
        weight = np.zeros((m, width), dtype=np.float32)
        for j, row in enumerate(subsets):
            members = np.flatnonzero(row)
            index[j, : len(members)] = members
            weight[j, : len(members)] = 1.0 / len(members)
        train = self._data["train"]
        x, y = train["x"][index], train["y"][index]
        w = torch.from_numpy(weight)
        init = init_params(self.n_features, rc.hidden, self.n_classes, seed)
        params = {k: v.unsqueeze(0).repeat(m, *([1] * v.dim())).requires_grad_(True) for k, v in init.items()}
        opt = _adam(list(params.values()), rc)
        for step in range(rc.steps):
            for group in opt.param_groups:
                group["lr"] = rc.lr_at(step)
            opt.zero_grad(set_to_none=True)
            logits = _stacked_logits(params, x)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, width)
            (ce * w).sum().backward()  # sum over models of each model's mean over its members
            opt.step()
        out = {}
        with torch.no_grad():
            for split in SPLITS:
                q = self._data[split]
                logits = _stacked_logits(params, q["x"].unsqueeze(0).expand(m, -1, -1))
                target = q["y"].unsqueeze(0).expand(m, -1)
                out[split] = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").double().numpy()
        return out

    # --- losses and model views -------------------------------------------------------------

    def example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    @torch.no_grad()
    def query_losses(self, model: nn.Module, split: str = "test") -> np.ndarray:
        return self.example_loss(model, self.query_batch(split)).double().numpy()

    def functional_loss(self, model: nn.Module) -> Callable[[dict[str, torch.Tensor], Batch], torch.Tensor]:
        """f(params, batch) -> mean CE (scalar); a single example may come without its batch axis."""

        def loss(params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
            x, y = batch["x"], batch["y"]
            if x.dim() == 1:
                x, y = x.unsqueeze(0), y.reshape(1)
            return F.cross_entropy(functional_call(model, params, (x,)), y)

        return loss

    @torch.no_grad()
    def features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model.features(batch["x"])  # type: ignore[operator]

    def last_layer(self, model: nn.Module) -> nn.Linear:
        return model.out  # type: ignore[return-value]

    def site(self, model: nn.Module, form: str, layer: int | None = None) -> ClassifierSite:
        """``layer`` may be None or 0: the MLP has a single hidden layer."""
        if layer not in (None, 0):
            raise StrideConfigError(f"operator layer {layer} out of range: the classifier MLP has one hidden layer (0)")
        return ClassifierSite(model, form)  # type: ignore[arg-type]
