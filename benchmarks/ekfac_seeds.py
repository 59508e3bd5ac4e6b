"""How much Kronfluence's EK-FAC / KFAC depend on the targets they sample from the model for the Fisher.

Scores each strategy with Fisher seeds 0..S-1 (``Influence.seed``; damping chosen on validation as in the
suite) on one suite's full protocol and prints the LDS per seed:

    .venv/bin/python benchmarks/ekfac_seeds.py breast-cancer-mlp --out DIR [--seeds 3]

DIR may be the suite's ``stride bench`` folder (its retrains are reused); the entries go into a report there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import MethodSpec, run_benchmark
from stride_assets.engine.evaluation.methods import KRONFLUENCE_DAMPING


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a suite of suites.SUITES, e.g. breast-cancer-mlp")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    suite = suites.build(args.name)
    specs = [MethodSpec(f"kronfluence_{s}_fisher_seed{seed}", {"seed": seed}, grid=KRONFLUENCE_DAMPING,
                        method=f"kronfluence_{s}") for s in ("ekfac", "kfac") for seed in range(args.seeds)]
    report = run_benchmark(suite.task, specs, args.out, suite.protocol, removal=False, resume=True)
    for spec in specs:
        print(args.name, spec.name, f"{report[spec.name]['lds_mean']:.3f}", report[spec.name]["chosen"])


if __name__ == "__main__":
    main()
