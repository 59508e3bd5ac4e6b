"""The reports of ``bench_cost.py`` (no measuring here): the settings it takes from pydoc-gpt's, the derived
numbers, the tables, writing.

The crossover number of queries Q* = (one_time_S - one_time_L) / (per_query_L -
per_query_S); end-to-end ratios logra / STRIDE at 1,000 and 100,000 queries (also with 250 and
100 operator steps: time only, nothing about quality); and fits of each cost against the
parameter count P, power laws (a P^b) and affine (c0 + c1 P), extrapolated (labelled as such) to
the model size at which STRIDE becomes cheaper (and 5x cheaper) at 1,000 queries. All from the
measured costs, so ``bench_cost.py --from-report`` can recompute them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

LOGRA_DAMPING = 1.0  # pydoc-gpt's validation choice (benchmarks/reports/pydoc-gpt.json)
DEFAULT_LAMBDA = {"stride_logit": 0.2, "stride": 0.7}  # idem, used when that report is absent
QUERY_COUNTS = (1_000, 100_000)
WHAT = "seconds split into one-time and per-query cost, STRIDE vs logra, on pydoc over GPT-2 sizes"
MEASURED_VS_SCALED = (
    "STRIDE's seconds are the engine facade's phases (stride.seconds: cache, fit, measure, recover). "
    "Operator training = fit_operators seconds per step (over a 0-step fit) x the suite's steps: at the first "
    "size the methods in full_steps_first run all steps (train_s_measured), elsewhere the median over 3 fits "
    "of a few steps each (steps_measured in all; each a fresh bank of bank_steps steps) after a 2-step "
    "warm-up. logra training gradients = seconds per example on grad_examples_measured examples x n. "
    "STRIDE's per-query Lasso at sizes after the first is the first size's (same K x n problem; its own, on "
    "briefly trained models and operators, is lasso_own_per_query_s). Everything else is measured at full "
    "size; per-query costs are medians of repeats (one run when a run takes over 20 s).")


def chosen_settings(report: Path) -> tuple[dict[str, float], float]:
    """Lambda ratios of the STRIDE forms and logra's damping as chosen on pydoc-gpt validation."""
    lam, damping = dict(DEFAULT_LAMBDA), LOGRA_DAMPING
    if report.exists():
        data = json.loads(report.read_text())
        for name in lam:
            lam[name] = float(data.get(name, {}).get("chosen", {}).get("lambda_ratio", lam[name]))
        damping = float(data.get("logra", {}).get("chosen", {}).get("damping", damping))
    return lam, damping


def total(cost: dict[str, Any], q: float) -> float:
    return cost["one_time_s"] + q * cost["per_query_s"]


def crossover(stride: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Queries beyond (or below) which STRIDE is cheaper end to end than the baseline."""
    d_one = stride["one_time_s"] - base["one_time_s"]
    d_per = base["per_query_s"] - stride["per_query_s"]
    if (d_one <= 0 and d_per >= 0) or (d_one > 0 and d_per <= 0):
        verdict = "always" if d_one <= 0 else "never"
        return {"q_star": None, "verdict": verdict, "text": verdict}
    q = d_one / d_per
    above = d_one > 0
    return {"q_star": q, "verdict": "above" if above else "below", "text": f"Q {'>' if above else '<'} {q:,.0f}"}


def fit_cost(P: np.ndarray, y: np.ndarray, family: str) -> dict[str, float]:
    """power: least squares in log-log, y = a * P^slope; affine: non-negative least squares y = c0 + c1 * P."""
    if family == "power":
        slope, log_a = np.polyfit(np.log(P), np.log(y), 1)
        return {"a": float(math.exp(log_a)), "slope": float(slope)}
    (c0, c1), _ = nnls(np.stack([np.ones_like(P), P], axis=1), y)
    return {"c0": float(c0), "c1": float(c1)}


def _evaluate(fit: dict[str, float], P: np.ndarray) -> np.ndarray:
    return fit["a"] * P ** fit["slope"] if "slope" in fit else fit["c0"] + fit["c1"] * P


COSTS = {"stride_one_time": ("S", "one_time_s"), "stride_per_query": ("S", "per_query_s"),
         "logra_one_time": ("L", "one_time_s"), "logra_per_query": ("L", "per_query_s")}


def extrapolate(sizes: list[dict[str, Any]], method: str, family: str, targets: tuple[float, ...],
                q: float) -> dict[str, Any]:
    """Fits (``family``: "power" or "affine") of the four costs against the parameter count P, and the
    smallest P (from the smallest measured size up to 1e12) at which logra / STRIDE reaches each target at q."""
    P = np.array([s["params"] for s in sizes], dtype=float)
    fits = {key: fit_cost(P, np.array([s[method if who == "S" else "logra"][field] for s in sizes]), family)
            for key, (who, field) in COSTS.items()}

    def ratio(p: np.ndarray) -> np.ndarray:
        logra_total = _evaluate(fits["logra_one_time"], p) + q * _evaluate(fits["logra_per_query"], p)
        return logra_total / (_evaluate(fits["stride_one_time"], p) + q * _evaluate(fits["stride_per_query"], p))

    grid = np.logspace(math.log10(P.min()), 12, 4001)
    r = ratio(grid)
    found = {str(t): (float(grid[np.flatnonzero(r >= t)[0]]) if (r >= t).any() else None)  # None: not below 1e12
             for t in targets}
    out = {"label": f"EXTRAPOLATION from {'power-law' if family == 'power' else 'affine (c0 + c1 P)'} fits over "
                    "the measured ladder; not a measurement",
           "queries": q, "fits": fits, "params_where_ratio_reaches": found,
           "ratio_fitted_at_measured_sizes": [float(x) for x in ratio(P)], "ratio_at_1e12_params": float(r[-1]),
           "fit_range_params": [float(P.min()), float(P.max())]}
    if family == "affine":  # the large-model limit: both sides proportional to P
        s1 = fits["stride_one_time"]["c1"] + q * fits["stride_per_query"]["c1"]
        l1 = fits["logra_one_time"]["c1"] + q * fits["logra_per_query"]["c1"]
        out["ratio_limit_large_models"] = float(l1 / s1) if s1 > 0 else None
    return out


def analyse(report: dict[str, Any]) -> None:
    """Derived numbers, in place: crossovers, end-to-end ratios, extrapolations (from the measured costs)."""
    methods, sizes = report["methods"], report["sizes"]
    for e in sizes:
        lg = e["logra"]
        e["vs_logra"] = {name: {
            "crossover": crossover(e[name], lg),
            "ratio_at": {str(q): total(lg, q) / total(e[name], q) for q in QUERY_COUNTS},
            "ratio_at_steps": {str(st): {str(q): total(lg, q) / (e[name]["one_time_at_steps"][str(st)]
                                                                 + q * e[name]["per_query_s"]) for q in QUERY_COUNTS}
                               for st in (250, 100)},
            "per_query_ratio": lg["per_query_s"] / e[name]["per_query_s"],
            "one_time_ratio": lg["one_time_s"] / e[name]["one_time_s"]} for name in methods}
    report["extrapolation"] = {f"{name}/{family}": extrapolate(sizes, name, family, (1.0, 5.0), 1000.0)
                               for name in methods for family in ("power", "affine")}


def fmt_s(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_p(p: float | None) -> str:
    return "not below 1e12" if p is None else f"{p / 1e6:,.1f}M" if p < 1e9 else f"{p / 1e9:,.1f}B"


def markdown(report: dict[str, Any]) -> str:
    lines = ["| model | params | method | one-time s | per-query ms | STRIDE cheaper when | "
             "logra/STRIDE @1k | logra/STRIDE @100k |", "|---|---|---|---|---|---|---|---|"]
    for s in report["sizes"]:
        head = f"| {s['model']} | {s['params'] / 1e6:.2f}M"
        lines.append(f"{head} | logra | {fmt_s(s['logra']['one_time_s'])} | {s['logra']['per_query_s'] * 1e3:.2f} | "
                     "(baseline) | 1 | 1 |")
        for name in report["methods"]:
            c, cmp = s[name], s["vs_logra"][name]
            lines.append(f"{head} | {name} | {fmt_s(c['one_time_s'])} | {c['per_query_s'] * 1e3:.2f} | "
                         f"{cmp['crossover']['text']} | {cmp['ratio_at']['1000']:.2f} | "
                         f"{cmp['ratio_at']['100000']:.2f} |")
    lines += ["", "Where STRIDE's one-time seconds go (operator training = seconds per step x steps):", "",
              "| model | method | caching s | design+init s | ms/step (AdamW update alone) | steps measured | "
              "training s (x steps) | one-time @250 steps | @100 steps | logra/STRIDE @1k, 250 / 100 steps |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["sizes"]:
        for name in report["methods"]:
            c, at = s[name], s["vs_logra"][name]["ratio_at_steps"]
            lines.append(
                f"| {s['model']} | {name} | {fmt_s(c['cache_s'])} | "
                f"{fmt_s(c['design_s'] + c['bank_init_s'] + c['train_setup_s'])} | "
                f"{c['per_step_s'] * 1e3:.1f} ({c['optimizer_step_s'] * 1e3:.1f}) | {c['steps_measured']} | "
                f"{fmt_s(c['train_s'])} (x{c['steps']}) | {fmt_s(c['one_time_at_steps']['250'])} | "
                f"{fmt_s(c['one_time_at_steps']['100'])} | {at['250']['1000']:.2f} / {at['100']['1000']:.2f} |")
    lines += ["", "EXTRAPOLATION to larger models at 1,000 queries (fits over the measured ladder; not measured):", ""]
    for key, ex in report["extrapolation"].items():
        fits = ", ".join(f"{k} ~ P^{v['slope']:.2f}" if "slope" in v else f"{k} = {v['c0']:.3g} + {v['c1']:.3g} P"
                         for k, v in ex["fits"].items())
        reach = ", ".join(f"{float(t):g}x at ~{fmt_p(p)} params" for t, p in ex["params_where_ratio_reaches"].items())
        limit = ex.get("ratio_limit_large_models")
        tail = f"; large-model limit {limit:.2f}x" if limit is not None else ""
        lines.append(f"- {key}: logra/STRIDE reaches {reach}{tail} ({fits})")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path, started: float, started_cpu: float) -> None:
    """A measured report: derived numbers, total seconds since ``started`` (perf_counter), written and printed."""
    analyse(report)
    report["total_seconds"] = time.perf_counter() - started
    report["machine"]["cpu_over_wall"] = (time.process_time() - started_cpu) / report["total_seconds"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{markdown(report)}\n\nwritten {out} ({report['total_seconds']:.0f}s)")


def reanalyse(source: Path, out: Path, command: str) -> None:
    """``--from-report``: recompute a written report's derived numbers, write it to ``out``, print its tables."""
    report = json.loads(source.read_text())
    analyse(report)
    report["analysis_command"] = command
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
