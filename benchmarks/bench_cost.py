"""Cost of attribution on pydoc-gpt: STRIDE (logit and activation form) against ``logra``.

For each GPT-2 size of a ladder, on the pydoc training passages (n = 1,004, 100 test queries),
seconds are split into a one-time part (does not depend on the queries) and a per-query part:

- STRIDE, run through the engine's facade (``engine/stride.py``) and timed by its own phases
  (``stride.seconds``): one-time = ``cache`` (features) + ``fit`` (drawing the design, the bank's
  set-up and operator training, ``steps`` from the suite); per query = ``measure`` (the query's
  forward pass and first-order responses) + ``recover`` (the Lasso, at the lambda the pydoc-gpt
  report chose, one job).
- logra: one-time = per-example training gradients, CountSketch-projected (``GradientSpace``)
  + Gram matrix and Cholesky factor (``DampedSolver``); per query = the query's projected
  gradient + the damped solve and scoring against the n training gradients.

Settings are the pydoc-gpt suite's (``suites.lm_stride(quick=False)``: K 256, d 8, rank 16,
1,000 steps of 32 pairs; logra with damping 1.0 as chosen there, projection "auto" = 4,096).
Cost, not quality, is measured: only the first size gets the suite's full training recipe; the
others are trained for ``--train-steps`` steps (seconds per forward / backward / training step do
not depend on the weights). STRIDE's Lasso is the same K x n problem at every size but its
iterations depend on how well the model and operators are trained, so the per-query Lasso of
the first size (the suite's model and, for ``--full-steps-first``, operators trained all steps) is
used at every size; each size's own is kept as ``lasso_own_per_query_s``.

Seconds are CPU seconds of this single-threaded process (``--clock cpu``; the facade's phases are
timed on the same clock): what the work takes on one core, much less sensitive than wall time to
other jobs sharing the cores (not immune: memory bandwidth and caches are shared too).

Two things are measured on part of the work and scaled linearly, and say so in the report:
operator training (``fit_operators`` seconds per step over a 0-step fit, the median of 3 short fits
after a warm-up, times the suite's steps: a step does the same fixed-size work every time; at the
first size the methods of ``--full-steps-first``, by default the logit form, run all steps instead)
and, when it would take longer than ``--grad-budget`` seconds, logra's training-gradient pass
(seconds per example, measured on a prefix of the training set, times n; the Gram matrix and its
Cholesky factor are always computed at full size). STRIDE's per-query seconds are the median of
``--repeats`` runs over the test queries, logra's one run over them (``scale_bench.logra_rates``).

Then the derived numbers (``cost_analysis.py``): crossovers, end-to-end ratios, extrapolations.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_cost.py --out benchmarks/reports/cost.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cost.py --from-report benchmarks/reports/cost.json  # re-analyse only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stride_assets.engine.config import StrideConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.evaluation.lm_task import LMTask, pydoc_task
from stride_assets.engine.evaluation.methods.base import trainable
from stride_assets.engine.evaluation.methods.gradients import clear_cache, logra
from stride_assets.engine.evaluation.scale_bench import (Budgets, ClockedStride, fit_rate, logra_curvature,
                                                         logra_rates, median_of, optimizer_step_seconds, parse_size,
                                                         set_clock, spent, timed)
from stride_assets.engine.evaluation.suites import lm_stride

# the report side (settings, derived numbers, tables, writing); a sibling: this script's folder is sys.path[0]
from cost_analysis import MEASURED_VS_SCALED, WHAT, chosen_settings, reanalyse, write_report

warnings.filterwarnings("ignore", message="There is a performance drop")  # vmap over CPU attention

STRIDE_SECTIONS = {"design", "operators", "training", "measure", "recovery"}  # what the report keeps of a config
Log = Callable[[str], None]
# timing (timed, median_of, ClockedStride, spent, fit_rate, the clock) lives in the engine's scale benchmark
# (stride_assets/engine/evaluation/scale_bench.py), which `stride bench scale` runs over larger models and corpora


# --- STRIDE: the facade's phases ----------------------------------------------------------------


def stride_cost(task: LMTask, model: torch.nn.Module, name: str, cfg: StrideConfig, lam: float, all_steps: bool,
                step_budget: float, repeats: int, lasso_reference: tuple[float, str] | None,
                log: Log) -> dict[str, Any]:
    """STRIDE's four phases through the facade, seconds read from ``stride.seconds``.

    Operator training: one ``fit_operators`` of all the suite's steps when ``all_steps``, else 3 fits
    of a few steps each (after a 2-step warm-up); seconds per step are over a 0-step fit (the bank's
    set-up, sampler, optimizer: once per training), times the suite's steps.
    ``lasso_reference``: per-query Lasso seconds to use instead of this model's own (the Lasso is a
    K x n problem whatever the model; its iterations depend on how well the operators are trained).
    """
    steps = cfg.training.steps
    stride = ClockedStride(task.site(model, cfg.operators.form, cfg.operators.layer), cfg)
    batch = task.train_batch()
    feats = stride.cache_features(batch)
    with stride.phase("fit"):
        design = draw_design(task.n, cfg.design.K, cfg.design.d, cfg.design.seed)
    design_s = stride.seconds["fit"]

    fit = fit_rate(stride, feats, batch, design, steps, all_steps=all_steps, step_budget=step_budget)
    bank, per_step, bank_init_s = fit["bank"], fit["per_step_s"], fit["bank_init_s"]
    out: dict[str, Any] = {
        "form": cfg.operators.form, "steps": steps, "cache_s": stride.seconds["cache"], "design_s": design_s,
        "bank_init_s": bank_init_s, "steps_measured": fit["steps_measured"], "bank_steps": fit["bank_steps"],
        "per_step_s": per_step, "per_step_runs_s": fit["per_step_runs_s"],
        "train_setup_s": max(0.0, fit["fit0_s"] - bank_init_s),
        "optimizer_step_s": optimizer_step_seconds(stride, design.K),
        "operator_params": int(sum(p.numel() for p in bank.parameters() if p.requires_grad)),
        "train_s": per_step * steps, "train_s_measured": fit["train_s_measured"]}
    fixed = out["cache_s"] + design_s + bank_init_s + out["train_setup_s"]
    out["one_time_s"] = fixed + out["train_s"]
    out["one_time_at_steps"] = {str(s): fixed + per_step * s for s in (1000, 500, 250, 100, 0)}
    log(f"    {name}: cache {out['cache_s']:.2f}s, {per_step * 1e3:.1f} ms/step x {steps} "
        f"(measured over {fit['steps_measured']}; an AdamW update alone {out['optimizer_step_s'] * 1e3:.1f} ms)")

    qbatch, n_q = task.query_batch("test"), len(task.query_ids["test"])
    recovery = cfg.recovery.model_copy(update={"lambda_ratio": lam, "n_jobs": 1})
    stride.measure(bank, qbatch)  # warm-up
    measure_s, measure_runs, Y = median_of(lambda: spent(stride, "measure", lambda: stride.measure(bank, qbatch)),
                                           repeats)
    decode_s, decode_runs, _ = median_of(
        lambda: spent(stride, "recover", lambda: stride.recover(Y, design.membership, recovery)), repeats)
    own = decode_s / n_q
    lasso, source = (own, "own") if lasso_reference is None else lasso_reference
    out.update(measure_per_query_s=measure_s / n_q, lasso_per_query_s=lasso, lasso_own_per_query_s=own,
               lasso_source=source, per_query_s=measure_s / n_q + lasso, queries=n_q, lambda_ratio=lam,
               measure_runs_s=measure_runs, lasso_runs_s=decode_runs)
    log(f"    {name}: per query {out['per_query_s'] * 1e3:.2f} ms (measure {out['measure_per_query_s'] * 1e3:.2f}, "
        f"Lasso {lasso * 1e3:.2f}; this bank's own Lasso {own * 1e3:.2f})")
    return out


# --- logra --------------------------------------------------------------------------------------


def logra_cost(task: LMTask, model: torch.nn.Module, damping: float, grad_budget: float, repeats: int,
               log: Log) -> dict[str, Any]:
    """``gradients.logra`` taken apart (``scale_bench.logra_rates`` / ``logra_curvature``): training gradients
    (on a prefix when slow), Gram + Cholesky at full size, the test queries' gradients, solve and scores."""
    n = task.n
    rates = logra_rates(model, task.train_batch(), task.query_batch("test"), (n,),
                        Budgets(pool=n, grad_s=grad_budget, query_grad_s=float("inf")), log)
    curv = logra_curvature(rates, n, damping, rows_cap=n)
    m = rates["grads_measured"][-1][0]
    grads_s = rates["grad_per_example_s"] * n if m < n else rates["grads_measured"][-1][1]
    out: dict[str, Any] = {"proj_dim": rates["proj_dim"], "chunk_size": rates["chunk_size"], "damping": damping,
                           "grad_examples_measured": m, "grad_per_example_s": rates["grad_per_example_s"],
                           "train_grads_s": grads_s,
                           "curvature_s": curv["gram_s"] + curv["cholesky_s"], "form": curv["form"]}
    out["one_time_s"] = out["train_grads_s"] + out["curvature_s"]
    out.update(per_query_s=rates["query_grad_s"] + curv["solve_score_per_query_s"], queries=rates["query_grads"],
               query_grad_per_query_s=rates["query_grad_s"], solve_per_query_s=curv["solve_score_per_query_s"])
    log(f"    logra: grads {out['grad_per_example_s'] * 1e3:.2f} ms/example (measured on {m}/{n}), "
        f"curvature {out['curvature_s']:.2f}s, per query {out['per_query_s'] * 1e3:.2f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2x64x2,4x128x4,6x256x4,8x384x6",
                    help="GPT-2 sizes LAYERSxWIDTH[xHEADS], comma separated; the first gets the full recipe")
    ap.add_argument("--train-steps", type=int, default=10, help="training steps of the models after the first")
    ap.add_argument("--methods", default="stride_logit,stride")
    ap.add_argument("--full-steps-first", default="stride_logit",
                    help="methods that run all their operator steps at the first size (a measured one-time cost, "
                         "and fully trained operators for the reference Lasso); comma separated, or none")
    ap.add_argument("--step-budget", type=float, default=10.0,
                    help="seconds of measured operator steps per form and size")
    ap.add_argument("--grad-budget", type=float, default=30.0,
                    help="seconds of logra training gradients before scaling")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this process's CPU seconds (with one thread, the wall time it would take on an idle "
                         "core; robust to other jobs sharing the cores); wall: elapsed seconds")
    ap.add_argument("--check-logra", action=argparse.BooleanOptionalAction, default=True,
                    help="at the first size, also time gradients.logra() itself (a check of the split)")
    ap.add_argument("--pydoc-report", default="benchmarks/reports/pydoc-gpt.json")
    ap.add_argument("--out", default="benchmarks/reports/cost.json")
    ap.add_argument("--from-report", default=None,
                    help="measure nothing: recompute the derived numbers (crossovers, ratios, extrapolations) of a "
                         "report this script wrote, print its table and write it to --out")
    args = ap.parse_args()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    if args.from_report:
        reanalyse(Path(args.from_report), Path(args.out), "PYTHONPATH=. " + command)
        return
    torch.set_num_threads(args.threads)
    set_clock(args.clock)
    started, started_cpu = time.perf_counter(), time.process_time()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    lam, damping = chosen_settings(Path(args.pydoc_report))
    suite = lm_stride(quick=False)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    full_first = {m.strip() for m in args.full_steps_first.split(",")} & set(methods)
    lasso_ref: dict[str, tuple[float, str]] = {}
    task = pydoc_task(seed=0)
    base_recipe = task.recipe
    log(f"pydoc: n={task.n}, test queries {len(task.query_ids['test'])}, torch threads {torch.get_num_threads()}")
    sizes = []
    for j, text in enumerate(args.sizes.split(",")):
        n_layer, n_embd, n_head = parse_size(text)
        full = j == 0
        task.recipe = base_recipe.model_copy(update={"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                                                     **({} if full else {"epochs": None, "steps": args.train_steps})})
        train_s, trained = timed(lambda: task.train(None, seed=0))
        params = int(sum(p.numel() for p in trainable(trained.model).values()))
        test_loss = float(task.query_losses(trained.model, "test").mean())
        log(f"GPT-2 {n_layer}x{n_embd} ({params:,} params): trained {trained.info['steps']} steps in {train_s:.1f}s, "
            f"test loss {test_loss:.3f}")
        entry: dict[str, Any] = {"model": f"{n_layer}x{n_embd}", "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
                                 "params": params, "model_train_steps": trained.info["steps"],
                                 "model_train_s": train_s, "test_loss": test_loss}
        for name in methods:
            entry[name] = stride_cost(task, trained.model, name, suite[name], lam[name], full and name in full_first,
                                      args.step_budget, args.repeats, None if full else lasso_ref[name], log)
            if full:
                trained_ops = "all steps" if name in full_first else f"{entry[name]['bank_steps']} steps"
                lasso_ref[name] = (entry[name]["lasso_per_query_s"], f"first size's (operators trained {trained_ops})")
        entry["logra"] = logra_cost(task, trained.model, damping, args.grad_budget, args.repeats, log)
        if full and args.check_logra:
            clear_cache()
            res = logra(task, trained, "test", damping=damping)
            clear_cache()
            entry["logra_check"] = {"one_time_s": res.one_time_seconds, "per_query_s": res.per_query_seconds,
                                    "note": "gradients.logra() in this run, timed by its own (wall) clock"}
            log(f"    logra() itself: one-time {res.one_time_seconds:.2f}s, "
                f"per query {res.per_query_seconds * 1e3:.2f} ms")
        sizes.append(entry)
        del trained
    report = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} PYTHONPATH=. {command}",
        "argv": sys.argv,
        "what": WHAT,
        "settings": {
            "stride": {name: suite[name].model_dump(include=STRIDE_SECTIONS) for name in methods},
            "lambda_ratio": lam, "lasso_n_jobs": 1,
            "logra": {"damping": damping, "proj_dim": "auto", "chunk_size": "auto", "seed": 0},
            "n": task.n, "queries_timed": len(task.query_ids["test"]),
        },
        "measured_vs_scaled": MEASURED_VS_SCALED,
        "full_steps_first": sorted(full_first),
        "methods": methods,
        "sizes": sizes,
        "clock": args.clock,
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
                    "cpu_count": os.cpu_count(),
                    "note": "cpu_over_wall: share of the wall time this process got (other jobs on the cores)"},
        "total_seconds": None,
    }
    write_report(report, Path(args.out), started, started_cpu)


if __name__ == "__main__":
    main()
