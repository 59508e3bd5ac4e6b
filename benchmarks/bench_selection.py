"""Data selection on pydoc-gpt: train on the examples chosen for the test queries, measure their loss.

For each size N (a fraction of the 1,004 training passages), the test queries are the target:
``selection.select`` keeps the N passages with the most influence on them, by STRIDE (logit
form, the settings of ``suites.lm_stride``) and by TF-IDF similarity; a small GPT-2 is
retrained with the task's recipe on each selection and on random selections of the same size
(``selection_bench.selection_benefit``); the test queries' mean loss is reported for each. A second
check removes harmful examples and compares with removing as many random ones: those the
curation policy drops (``curation.curate``, default settings, on STRIDE's scores), and the
``--harmful-k`` examples of most negative mean influence on the test queries.

Lambda is fixed at 0.2, the ratio the full pydoc-gpt benchmark chose on its validation draw
(benchmarks/reports/pydoc-gpt.json), so no validation retrains are needed here; TF-IDF runs
on token ids, its choice there. Retrained losses and STRIDE's scores are cached under
``--cache``: a re-run redoes nothing it has already done. About 6 CPU-minutes from scratch.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_selection.py \
        --out benchmarks/reports/selection.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from stride_assets.engine.artifacts import atomic_path
from stride_assets.engine.config import CurationConfig
from stride_assets.engine.curation import curate
from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import scores_frame
from stride_assets.engine.evaluation.lm_task import pydoc_task
from stride_assets.engine.evaluation.methods import score_method
from stride_assets.engine.evaluation.selection_bench import selection_benefit, selection_mask
from stride_assets.engine.selection import select

LAMBDA_RATIO = 0.2  # chosen on validation by the full pydoc-gpt benchmark
STRIDE_SECTIONS = {"design", "operators", "training", "measure", "recovery"}  # the settings that shape the scores


def stride_scores(task, trained, cache: Path, log) -> tuple[np.ndarray, dict[str, Any]]:
    """STRIDE (logit form) influence of the training passages on the test queries, (Q, n).

    Kept in ``cache`` under a hash of the settings, recipe, max_length and ids: a re-run skips the fit.
    """
    settings = suites.lm_stride(quick=False)["stride_logit"].with_(
        recovery={"lambda_ratio": LAMBDA_RATIO, "n_jobs": 1})
    parts = [settings.model_dump_json(include=STRIDE_SECTIONS), repr(task.recipe), str(task.max_length),
             repr(task.example_ids), repr(task.query_ids)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    path = cache / f"stride_scores_{key}.npz"
    if path.exists():
        with np.load(path) as stored:
            scores, seconds = stored["scores"], float(stored["seconds"])
    else:
        start = time.perf_counter()
        scores = score_method("stride", task, trained, "test", config=settings).scores
        seconds = time.perf_counter() - start
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, scores=scores, seconds=seconds)
    log(f"stride: fitted and scored in {seconds:.0f}s, {int((scores != 0).sum())} non-zero scores")
    info = {"design": settings.design.model_dump(), "operators": settings.operators.model_dump(),
            "training_steps": settings.training.steps, "lambda_ratio": LAMBDA_RATIO, "fit_seconds": seconds}
    return scores, info


def measured(result: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``selection_benefit`` result that the report keeps."""
    keep = ("size", "selection_loss", "random_loss_mean", "random_loss_std", "difference", "win_rate", "other_splits")
    return {k: result[k] for k in keep}


def harmful_removal(task, frame: pl.DataFrame, candidates: pl.DataFrame, queries: pl.DataFrame, k: int,
                    benefit: dict[str, Any], log) -> dict[str, Any]:
    """Train without the harmful examples vs without as many random ones.

    Harmful by the curation policy (``curate``, default settings), and, as a comparison, the k
    examples with the most negative mean influence on the target (``select`` on negated scores).
    """
    report: dict[str, Any] = {"policy": CurationConfig().model_dump()}
    dropped = curate(frame, candidates, CurationConfig()).filter(pl.col("decision") == "drop")
    report["policy_dropped"] = dropped.height
    if dropped.height:
        kept = ~np.isin(np.asarray(task.example_ids), dropped["example_id"].to_list())
        report["policy_removal"] = measured(selection_benefit(task, kept, **benefit))
    worst = select(frame.with_columns(-pl.col("score")), candidates, queries, k)
    negative = worst.filter(pl.col("score_sum") > 0)  # the scores were negated
    report.update(negative_sums=negative.height, min_score_sum=-float(worst["score_sum"].max()))
    worst = worst.filter(pl.col("selected") & (pl.col("score_sum") > 0))
    if worst.height:
        kept = ~selection_mask(worst, task.example_ids)
        report["most_negative_removal"] = {"k": worst.height, **measured(selection_benefit(task, kept, **benefit))}
    for name in ("policy_removal", "most_negative_removal"):
        if name in report:
            r = report[name]
            log(f"{name}: test loss {r['selection_loss']:.4f} vs {r['random_loss_mean']:.4f} ± "
                f"{r['random_loss_std']:.4f} removing as many at random")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/reports/selection.json")
    ap.add_argument("--fractions", default="0.25,0.5", help="selection sizes as fractions of the training set")
    ap.add_argument("--random", type=int, default=4, help="random selections per size")
    ap.add_argument("--seed", type=int, default=0, help="random selections and retraining")
    ap.add_argument("--cache", default="/tmp/stride-selection-cache", help="retrained losses, reused by re-runs")
    ap.add_argument("--harmful-k", type=float, default=0.05,
                    help="most negative examples removed, as a fraction of the training set (0: skip the check)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(sys.argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    task = pydoc_task(seed=0)
    trained = task.train(None, seed=0)
    full_loss = float(task.query_losses(trained.model, "test").mean())
    log(f"base model on all {task.n} passages: test loss {full_loss:.4f}")
    cache = Path(args.cache)
    method_scores = {"tfidf": score_method("tfidf", task, trained, "test", on="token_ids").scores}
    method_scores["stride"], stride_info = stride_scores(task, trained, cache, log)
    frames = {name: scores_frame(s, task) for name, s in method_scores.items()}
    candidates = pl.DataFrame({"example_id": task.example_ids, "text": task.texts()})
    queries = pl.DataFrame({"query_id": task.query_ids["test"]})
    benefit = dict(n_random=args.random, seed=args.seed, cache=cache)

    selection: dict[str, Any] = {}
    for fraction in [float(f) for f in args.fractions.split(",")]:
        size = round(fraction * task.n)
        row: dict[str, Any] = {"size": size}
        for name in ("stride", "tfidf"):
            chosen = select(frames[name], candidates, queries, size)
            result = measured(selection_benefit(task, selection_mask(chosen, task.example_ids), **benefit))
            row.update({k: result.pop(k) for k in ("size", "random_loss_mean", "random_loss_std")})
            row[name] = {**result, "selected_with_positive_score":
                         chosen.filter(pl.col("selected") & (pl.col("score") > 0)).height}
            log(f"N={size} {name}: test loss {result['selection_loss']:.4f} vs random "
                f"{row['random_loss_mean']:.4f} ± {row['random_loss_std']:.4f}")
        selection[f"{fraction:g}"] = row

    harmful: dict[str, Any] = {"skipped": True}
    if args.harmful_k > 0:
        harmful = harmful_removal(task, frames["stride"], candidates, queries, round(args.harmful_k * task.n),
                                  benefit, log)

    report = {
        "command": command,
        "task": {"name": task.name, "n": task.n, "test_queries": len(task.query_ids["test"]),
                 "recipe": repr(task.recipe), "max_length": task.max_length},
        "target": "test queries (mean next-token NLL); one task",
        "full_data_test_loss": full_loss,
        "n_random": args.random, "seed": args.seed,
        "stride": stride_info,
        "tfidf": {"on": "token_ids"},
        "selection": selection,
        "harmful_removal": harmful,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{command}\n\n| N | STRIDE | TF-IDF | random (mean ± std, {args.random} draws) |\n|---|---|---|---|")
    for row in selection.values():
        print(f"| {row['size']} | {row['stride']['selection_loss']:.4f} | {row['tfidf']['selection_loss']:.4f} | "
              f"{row['random_loss_mean']:.4f} ± {row['random_loss_std']:.4f} |")
    print(f"full data ({task.n}): {full_loss:.4f}")
    for name in ("policy_removal", "most_negative_removal"):
        if name in harmful:
            r = harmful[name]
            print(f"{name} ({task.n - r['size']} removed): {r['selection_loss']:.4f} vs random removal "
                  f"{r['random_loss_mean']:.4f} ± {r['random_loss_std']:.4f}")
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
