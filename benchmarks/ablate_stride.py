"""STRIDE ablations on a benchmark's *validation* draw (never the subsets behind reported LDS).

One setting changes at a time from the suite's STRIDE settings: K, d, rank, form (hook point),
basis, steps, learning rate, each loss term, and lambda (decoded from the same responses).
Prints a markdown table of validation LDS (best lambda, and at the default lambda) and fit
seconds, and writes it as JSON.

    .venv/bin/python benchmarks/ablate_stride.py digits-mlp --out benchmarks/ablation_digits.json [--m 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stride_assets.engine.artifacts import write_json
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods import StrideMethod
from stride_assets.engine.evaluation.task import draw_subsets

LAMBDAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def variants(base: StrideConfig, kind: str) -> dict[str, dict]:
    K, d, r = base.design.K, base.design.d, base.operators.rank
    steps = base.training.steps
    out = {
        "suite setting": {},
        f"K={K // 2}": {"design": {"K": K // 2}},
        f"K={K * 2}": {"design": {"K": K * 2}},
        f"d={max(1, d // 2)}": {"design": {"d": max(1, d // 2)}},
        f"d={d * 2}": {"design": {"d": d * 2}},
        f"rank={max(1, r // 4)}": {"operators": {"rank": max(1, r // 4)}},
        f"rank={r * 2}": {"operators": {"rank": r * 2}},
        "basis=mlp": {"operators": {"basis": "mlp"}},
        f"steps={steps // 2}": {"training": {"steps": steps // 2}},
        f"steps={steps * 2}": {"training": {"steps": steps * 2}},
        "no stability term": {"training": {"stability_weight": 0.0}},
        "stability x10": {"training": {"stability_weight": 10.0 * base.training.stability_weight}},
        "linearity term (weight 30)": {"training": {"linearity_weight": 30.0}},
        "measure=exact": {"measure": {"mode": "exact"}},
        "optimizer=lazy_adam": {"training": {"optimizer": "lazy_adam"}},
        "lazy_adam lr x3": {"training": {"optimizer": "lazy_adam", "lr": 3 * base.training.lr}},
    }
    forms = ("logit", "activation", "input") if kind == "classifier" else ("logit", "activation")
    out.update({f"form={f}": {"operators": {"form": f}} for f in forms if f != base.operators.form})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="benchmark name (as for `stride bench`)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--m", type=int, default=32, help="validation retrains")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variant", default="", help="which STRIDE variant of the suite (default: the first)")
    ap.add_argument("--only", default="", help="comma-separated ablation names to run (default: all)")
    args = ap.parse_args()

    suite = suites.build(args.name, quick=args.quick)
    task = suite.task
    spec = next(s for s in suite.specs if s.registry_name == "stride" and (not args.variant or s.name == args.variant))
    base = spec.settings["config"]
    trained = task.train(None, seed=suite.protocol.model_seed)
    subsets = draw_subsets(task.n, args.m, suite.protocol.fraction, suite.protocol.val_seed)
    truth = task.retrain_losses(subsets, seed=suite.protocol.model_seed)["val"]
    rows = []
    default_ratio = base.recovery.lambda_ratio
    chosen = variants(base, task.kind)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = set(wanted) - set(chosen)
        if unknown:
            raise SystemExit(f"unknown ablations {sorted(unknown)}; known: {list(chosen)}")
        chosen = {w: chosen[w] for w in wanted}
    for name, change in chosen.items():
        method = StrideMethod(base.with_(**change))
        method.cache(task, trained)
        seconds = method.one_time_seconds  # the facade's cache + fit phases (design included)
        Y, _ = method.responses("val")
        by_lambda = {r: lds(method.decode(Y, lambda_ratio=r)[0], subsets, truth).mean for r in LAMBDAS}
        best = max(by_lambda, key=by_lambda.get)
        at_default = by_lambda.get(default_ratio) if default_ratio in by_lambda else float("nan")
        rows.append({"variant": name, "val_lds_best": by_lambda[best], "best_lambda": best,
                     "val_lds_default_lambda": at_default, "fit_seconds": seconds, "by_lambda": by_lambda})
        print(f"{name:<28} best {by_lambda[best]:.3f} (lambda {best})  fit {seconds:.1f}s", flush=True)
    write_json({"benchmark": args.name, "variant": spec.name, "m_val": args.m, "rows": rows}, Path(args.out))
    print(f"\n| variant ({spec.name}) | val LDS (best lambda) | lambda | fit s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['val_lds_best']:.3f} | {r['best_lambda']} | {r['fit_seconds']:.1f} |")


if __name__ == "__main__":
    main()
