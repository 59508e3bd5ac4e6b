"""benchmarks/layer_signal.py's pieces: a flat gradient's columns split by layer, and the per-layer scores
(Grad-Dot exactly; the influence function tends to Grad-Dot / damping as the damping grows)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("layer_signal", REPO / "benchmarks" / "layer_signal.py")
layer_signal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layer_signal)


def test_layer_columns_partition_the_flat_gradient():
    model = nn.Sequential()
    model.hidden, model.out = nn.Linear(5, 4), nn.Linear(4, 3)
    cols = layer_signal.layer_columns(model)
    assert len(cols["hidden"]) == 5 * 4 + 4 and len(cols["out"]) == 4 * 3 + 3
    assert np.array_equal(np.sort(np.concatenate([cols["hidden"], cols["out"]])), cols["all"])


def test_layer_scores_are_grad_dot_and_damped_influence():
    gen = torch.Generator().manual_seed(0)
    G_train, G_query = torch.randn(40, 6, generator=gen), torch.randn(7, 6, generator=gen)
    scores = layer_signal.layer_scores(G_train, G_query)
    assert np.allclose(scores["grad_dot"], (G_query @ G_train.T).numpy(), atol=1e-10)
    H = G_train.double().T @ G_train.double() / 40
    exact = (G_query.double() @ torch.linalg.solve(H + 0.01 * torch.trace(H) / 6 * torch.eye(6, dtype=H.dtype),
                                                    G_train.double().T)).numpy()
    assert np.allclose(scores["influence_damping0.01"], exact)
    # strong damping: the influence is Grad-Dot scaled, so it ranks examples as Grad-Dot does
    strong = scores["influence_damping10"].ravel()
    weak = scores["influence_damping0.01"].ravel()
    dot = scores["grad_dot"].ravel()
    assert np.corrcoef(strong, dot)[0, 1] > 0.95 > np.corrcoef(weak, dot)[0, 1]
