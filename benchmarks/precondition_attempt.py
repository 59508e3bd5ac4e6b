"""Attempt (issue 10): first-layer STRIDE with curvature-preconditioned responses.

The suite's first-layer operators (``stride_pre_activation``, one damping variant) are trained as
usual; each query's first-order response to operator k is then measured with a KFAC-preconditioned
query gradient in the operators' own space,

    Y[q, k] = -< (A + a tr(A)/r I)^-1  codes_q^T g_q  (G + a tr(G)/C I)^-1 ,  A_k >,

A = E[codes codes^T] and G = E[g g^T] over the training examples (g: the loss gradient at the steered
pre-activations), and with one factor only (the other I: the input side alone whitens the code space). ``a``
large is the plain measurement; ``a`` and the Lasso's lambda are chosen on the
validation draw. The idea: a trained operator is a member gradient inside the rank-r basis, so its
response is a compressed influence function only if the curvature is right. It reads the ground truth
from a ``stride bench NAME --leave-out`` folder (its retrain cache), and prints and writes JSON:

    .venv/bin/python benchmarks/precondition_attempt.py wine-mlp --out DIR [--variant damping0.01] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from stride_assets.engine.artifacts import write_json
from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import ground_truth, leave_out_truth
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods.stride import StrideMethod
from stride_assets.engine.evaluation.task import draw_subsets
from stride_assets.engine.measure import sequence_loss

ALPHAS = (None, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01)  # None: no preconditioning (the suite's measurement)
SIDES = ("both", "input", "output")  # which Kronecker factors precondition


def codes_and_gradients(site, bank, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's codes (N, T, r) and the loss gradient at the steered site (N, T, C) of ``batch``."""
    feats = site.encode(batch)
    shift0 = torch.zeros(*feats.shape[:-1], site.out_dim, requires_grad=True)
    (grad,) = torch.autograd.grad(sequence_loss(site, site.logits(feats, batch, shift0), batch).sum(), shift0)
    with torch.no_grad():
        return bank.codes(feats), grad


def damped_inverse(F: torch.Tensor, alpha: float | None) -> torch.Tensor:
    eye = torch.eye(F.shape[0])
    return eye if alpha is None else torch.linalg.inv(F + alpha * F.trace() / F.shape[0] * eye)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a classifier suite: wine-mlp, breast-cancer-mlp, digits-mlp")
    ap.add_argument("--out", required=True, type=Path, help="the suite's `stride bench --leave-out` folder")
    ap.add_argument("--variant", default="damping0.01", help="stride_pre_activation's damping variant")
    ap.add_argument("--json", type=Path, help="where to write the result (default: OUT/precondition_attempt.json)")
    args = ap.parse_args()
    suite = suites.build(args.name)
    task, p = suite.task, suites.with_leave_out(suite.protocol, False, 0, None)
    cache = args.out / "cache"
    trained = task.train(None, seed=p.model_seed, checkpoints=10)
    subsets, val_subsets = (draw_subsets(task.n, m, p.fraction, seed) for m, seed in ((p.m, p.seed), (p.m_val, p.val_seed)))
    truth = {"test": (subsets, ground_truth(task, subsets, p.seeds, p.model_seed, cache=cache)["test"]),
             "val": (val_subsets, ground_truth(task, val_subsets, p.seeds, p.model_seed, cache=cache)["val"])}
    kept, kept_losses, _ = leave_out_truth(task, p, task.query_losses(trained.model, "test"), cache)
    spec = next(s for s in suite.specs if s.name == "stride_pre_activation")
    grid = [{k: v for k, v in g.items() if k != "variant"} for g in spec.grid if g["variant"] == args.variant]
    method = StrideMethod(spec.settings["configs"][args.variant])
    method.cache(task, trained)
    site, bank = method.stride.site, method.bank
    codes, grads = (x.reshape(-1, x.shape[-1]) for x in codes_and_gradients(site, bank, task.train_batch()))
    A, G = codes.T @ codes / len(codes), grads.T @ grads / len(grads)
    queries = {split: codes_and_gradients(site, bank, task.query_batch(split)) for split in ("val", "test")}
    rows = []
    for side, alpha in [(None, None)] + [(side, alpha) for side in SIDES for alpha in ALPHAS[1:]]:
        Ai = damped_inverse(A, alpha if side in ("both", "input") else None)
        Gi = damped_inverse(G, alpha if side in ("both", "output") else None)
        with torch.no_grad():
            Y = {s: (-bank.contract(Ai @ torch.bmm(c.transpose(1, 2), g) @ Gi)).numpy().astype(np.float32)
                 for s, (c, g) in queries.items()}
        val, option = max(((lds(method.decode(Y["val"], **o)[0], *truth["val"]).mean, o) for o in grid),
                          key=lambda c: c[0])
        scores = method.decode(Y["test"], **option)[0]
        rows.append({"side": side, "alpha": alpha, "chosen": option, "val_lds": val, "lds_mean": lds(scores, *truth["test"]).mean,
                     "leave_out_lds_mean": lds(scores, kept, kept_losses).mean})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["val_lds"])
    result = {"benchmark": args.name, "variant": args.variant, "rows": rows, "chosen_on_validation": best}
    write_json(result, args.json or args.out / "precondition_attempt.json")
    print("chosen on validation:", json.dumps(best))


if __name__ == "__main__":
    main()
