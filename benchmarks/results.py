"""Regenerate benchmarks/RESULTS.md: every benchmark's full protocol, STRIDE's attempts, then the tables.

    make results                      # = .venv/bin/python benchmarks/results.py --work .stride/results
    .venv/bin/python benchmarks/results.py --work DIR [--only pydoc-gpt,digits-mlp] [--tables-only]

Each benchmark runs ``stride bench NAME`` into ``WORK/NAME`` (retrains are cached there, and a
rerun skips the methods its report already has on the same protocol: ``--resume``; run it from the
repository root), then
``benchmarks/stride_attempts.py`` into the same folder (same ground truth), and its report is
copied to ``benchmarks/reports/NAME.json``. ``--tables-only`` only rewrites RESULTS.md from the
reports in benchmarks/reports. From nothing, on 2 CPU cores, the whole set takes several hours
(pydoc-gpt alone about two: STRIDE's three seeds per form, TracIn and TRAK-5 dominate).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRIDE = [sys.executable, "-m", "stride_assets.cli"]

# name -> extra `stride bench` arguments (the full protocol; removal where it separates methods)
BENCHMARKS: dict[str, list[str]] = {
    "pydoc-gpt": ["--stride-seeds", "3", "--removal-methods",
                  "stride_logit_s0,kronfluence_ekfac,logra,tfidf,grad_dot,dattri_trak_1", "--removal-ks", "20"],
    "digits-mlp": ["--stride-seeds", "3"],
    "breast-cancer-mlp": ["--stride-seeds", "3"],
    "wine-mlp": ["--stride-seeds", "3"],
    "numpy-docs-gpt": ["--methods", "stride_logit,stride,kronfluence_ekfac,kronfluence_kfac,logra,tfidf,grad_dot,repsim",
                       "--removal-methods", "stride_logit,kronfluence_ekfac,logra,tfidf", "--removal-ks", "20"],
}
FIRST_LAYER_ENSEMBLES = "attempt_ensemble_first_layer_logra,attempt_ensemble_first_layer_ekfac"
ATTEMPTS = {  # where benchmarks/stride_attempts.py runs: all attempts ([]) or those named
    "pydoc-gpt": [],
    "digits-mlp": ["--only", f"attempt_ensemble,attempt_dense,attempt_ridge,{FIRST_LAYER_ENSEMBLES}"],
    "breast-cancer-mlp": ["--only", f"attempt_ensemble,{FIRST_LAYER_ENSEMBLES}"],
    "wine-mlp": ["--only", f"attempt_ensemble,{FIRST_LAYER_ENSEMBLES}"],
    "numpy-docs-gpt": ["--only", "attempt_ensemble"],
}


def commands(name: str, work: Path) -> list[list[str]]:
    out = [[*STRIDE, "bench", name, "--out", str(work / name), "--resume", "--leave-out", "--no-mlflow",
            *BENCHMARKS[name]]]
    if name in ATTEMPTS:
        out.append([sys.executable, "benchmarks/stride_attempts.py", name, "--out", str(work / name), "--leave-out",
                    *ATTEMPTS[name]])
    return out


def tables(names: list[str], made_by: list[str]) -> str:
    reports = [f"{n}={HERE / 'reports' / f'{n}.json'}" for n in names if (HERE / "reports" / f"{n}.json").exists()]
    args = [sys.executable, str(HERE / "make_results.py"), "--intro", str(HERE / "results_intro.md"),
            "--appendix", str(HERE / "results_appendix.md"), *[a for r in reports for a in ("--report", r)],
            *[a for c in made_by for a in ("--command", c)]]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(".stride/results"), help="benchmark output folders")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--tables-only", action="store_true", help="only rewrite RESULTS.md from benchmarks/reports")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    made_by = [shlex.join(["stride", *c[3:]]) if c[:3] == STRIDE else shlex.join(["python", *c[1:]])
               for n in BENCHMARKS for c in commands(n, Path("WORK"))]
    if not args.tables_only:
        for name in names:
            for command in commands(name, args.work):
                print("$", shlex.join(command), flush=True)
                subprocess.run(command, check=True)
            shutil.copyfile(args.work / name / "report.json", HERE / "reports" / f"{name}.json")
    (HERE / "RESULTS.md").write_text(tables(list(BENCHMARKS), made_by))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
