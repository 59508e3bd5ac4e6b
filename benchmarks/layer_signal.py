"""Where the attribution signal lies in a classifier: gradient methods restricted to one layer's parameters.

For each layer of a classifier suite's MLP (``hidden``: the first weight matrix and bias, ``out``: the output layer,
``all``: both), the LDS of Grad-Dot and of an influence function with damping ``lambda * tr(H) / D`` (H the
empirical Fisher of the n training gradients in that layer, D its size), on the full protocol's test retrains. STRIDE's
logit form is a compressed influence function of the output layer only; this says how much of the ground truth that
layer can explain, and how much an operator on the first layer (form ``pre_activation``) could add (issue 10).

    .venv/bin/python benchmarks/layer_signal.py breast-cancer-mlp --out DIR [--json FILE]

DIR is the suite's ``stride bench`` folder: its cached retrains are reused (run without them, they are retrained).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import Protocol, ground_truth
from stride_assets.engine.evaluation.task import draw_subsets
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods.base import DampedSolver
from stride_assets.engine.evaluation.methods.gradients import per_example_grads
from stride_assets.engine.store import BenchFolder

DAMPINGS = (0.01, 0.1, 1.0, 10.0)


def layer_columns(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The columns of a flat all-parameter gradient that belong to each layer (named by its module)."""
    spans, start = {}, 0
    for name, p in model.named_parameters():
        layer = name.split(".")[0]
        spans.setdefault(layer, []).extend(range(start, start + p.numel()))
        start += p.numel()
    return {"all": np.arange(start), **{k: np.asarray(v) for k, v in spans.items()}}


def layer_scores(G_train: torch.Tensor, G_query: torch.Tensor) -> dict[str, np.ndarray]:
    """Grad-Dot and damped influence (queries x n, larger = more helpful) from gradients in one layer."""
    G_train, G_query = G_train.double(), G_query.double()
    out = {"grad_dot": (G_query @ G_train.T).numpy()}
    H = G_train.T @ G_train / len(G_train)
    for lam in DAMPINGS:
        out[f"influence_damping{lam:g}"] = (G_query @ DampedSolver.fit(H, lam).solve(G_train.T)).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a classifier suite: digits-mlp, breast-cancer-mlp, wine-mlp")
    ap.add_argument("--out", required=True, type=Path, help="the suite's bench folder (its cache/ is reused)")
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args()
    suite = suites.build(args.name)
    task, p = suite.task, suite.protocol or Protocol()
    trained = task.train(None, seed=p.model_seed)
    subsets = draw_subsets(task.n, p.m, p.fraction, p.seed)
    truth = ground_truth(task, subsets, p.seeds, p.model_seed, cache=BenchFolder(args.out).file("cache"))["test"]
    G_train = per_example_grads(task, trained.model, task.train_batch())
    G_query = per_example_grads(task, trained.model, task.query_batch("test"))
    table = {}
    for layer, cols in layer_columns(trained.model).items():
        scores = layer_scores(G_train[:, cols], G_query[:, cols])
        table[layer] = {"parameters": len(cols), **{k: lds(v, subsets, truth).mean for k, v in scores.items()}}
        print(args.name, layer, {k: round(v, 3) if isinstance(v, float) else v for k, v in table[layer].items()},
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": args.name, "command": f"python benchmarks/layer_signal.py "
                                         f"{args.name} --out DIR", "layers": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
