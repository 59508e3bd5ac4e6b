"""Write benchmarks/RESULTS.md from benchmark reports (and ablation JSONs) made by the commands it names.

    .venv/bin/python benchmarks/make_results.py --report digits-mlp=DIR1 --report pydoc-gpt=DIR2.json \
        [--ablation digits-mlp=benchmarks/ablation_digits.json] --command "..." > benchmarks/RESULTS.md

STRIDE variants run with several seeds (names ending in _s0, _s1, ...) are reported as the mean
± std of their LDS means across seeds; every other row is mean ± std over queries.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from stride_assets.engine.evaluation.report import RESERVED


def seeded_groups(report: dict) -> dict[str, list[tuple[str, dict]]]:
    groups: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for name, stats in report.items():
        if name in RESERVED:
            continue
        groups[re.sub(r"_s\d+$", "", name)].append((name, stats))
    return groups


def cell(rows: list[tuple[str, dict]]) -> tuple[str, float]:
    ok = [s for _, s in rows if "error" not in s]
    if not ok:
        return f"failed: {rows[0][1].get('error', '')[:60]}", float("-inf")
    if len(ok) == 1:
        s = ok[0]
        return f"{s['lds_mean']:.3f} ± {s['lds_std']:.3f}", s["lds_mean"]
    means = np.array([s["lds_mean"] for s in ok])
    return f"{means.mean():.3f} ± {means.std():.3f} ({len(ok)} seeds)", float(means.mean())


def leave_out_cell(rows: list[tuple[str, dict]]) -> str:
    """The leave-a-few-out protocol's LDS (mean over queries; over seeds for seeded variants), or blank."""
    values = [s["leave_out"]["lds_mean"] for _, s in rows if "leave_out" in s]
    if not values:
        return ""
    return f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ({len(values)} seeds)"


def cost(rows: list[tuple[str, dict]]) -> str:
    ok = [s for _, s in rows if "error" not in s]
    if not ok:
        return "|||"
    mean = lambda k: float(np.mean([s[k] for s in ok]))  # noqa: E731
    return (f"{mean('seconds'):.1f} | {mean('one_time_seconds'):.1f} | {mean('per_query_seconds') * 1000:.2f} | "
            f"{max(s['peak_rss_mb'] for s in ok):.0f}")


# the baselines whose cost scales to large models (issue 10's bar for STRIDE), and the peers
SCALABLE = ("dattri_trak_1", "dattri_trak_5", "logra", "tracin", "grad_dot", "tfidf")
PEERS = ("kronfluence_ekfac", "kronfluence_kfac", "kronfluence_diagonal")
ENSEMBLES = {"attempt_ensemble": "STRIDE + EK-FAC", "attempt_ensemble_first_layer_logra": "first-layer STRIDE + logra",
             "attempt_ensemble_first_layer_ekfac": "first-layer STRIDE + EK-FAC",
             "attempt_ensemble_first_layer_logit": "first-layer STRIDE + logit STRIDE"}


def _means(report: dict) -> dict[str, float]:
    return {m: cell(r)[1] for m, r in seeded_groups(report).items() if cell(r)[1] > float("-inf")}


def verdict(name: str, report: dict) -> str:
    """One plain line: STRIDE's best variant on a benchmark and what is above and below it."""
    means = _means(report)
    strides = {m: v for m, v in means.items() if m.startswith("stride")}
    if not strides:
        return f"- **{name}**: STRIDE not measured."
    best, value = max(strides.items(), key=lambda kv: kv[1])
    above = [f"{m} {v:.3f}" for m, v in sorted(means.items(), key=lambda kv: -kv[1])
             if v > value and not m.startswith("stride")]
    beaten = [m for m in SCALABLE if m in means and means[m] < value]
    lost = [m for m in SCALABLE if m in means and means[m] >= value]
    words = "wins against every other method" if not above else f"loses to {', '.join(above)}"
    line = f"- **{name}**: STRIDE ({best}) {value:.3f} {words}"
    if lost:
        line += f"; of the scalable baselines it loses to {', '.join(lost)}"
    elif beaten:
        line += "; it beats every scalable baseline measured"
    blends = [f"{words} {means[m]:.3f}" for m, words in ENSEMBLES.items() if m in means]
    if blends:
        line += "; ensembles: " + ", ".join(blends)
    return line + "."


def matrix(reports: dict[str, dict]) -> list[str]:
    """Method x benchmark table of LDS means (rows in order of their mean rank)."""
    means = {name: _means(r) for name, r in reports.items()}
    methods = sorted({m for v in means.values() for m in v},
                     key=lambda m: -np.mean([v.get(m, np.nan) for v in means.values() if m in v]))
    out = ["| method | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    for m in methods:
        cells = [f"{means[b][m]:.3f}" if m in means[b] else "" for b in reports]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="append", default=[], help="NAME=DIR (with DIR/report.json) or NAME=FILE.json")
    ap.add_argument("--ablation", action="append", default=[], help="NAME=FILE from ablate_stride.py")
    ap.add_argument("--command", action="append", default=[], help="the command(s) that made the reports")
    ap.add_argument("--intro", help="markdown file placed under the title (status, reading notes)")
    ap.add_argument("--appendix", help="markdown file placed at the end (scenario benchmarks)")
    args = ap.parse_args()
    out = ["# Attribution quality: LDS against real retraining", ""]
    if args.intro:
        out += [Path(args.intro).read_text().rstrip(), ""]
    reports = {}
    for item in args.report:
        name, folder = item.split("=", 1)
        path = Path(folder)
        reports[name] = json.loads((path / "report.json" if path.is_dir() else path).read_text())
    out += ["## Where STRIDE wins and where it loses (LDS, halves protocol)", "",
            *[verdict(name, r) for name, r in reports.items()], "", *matrix(reports), ""]
    out += ["Made by:", "", "```", *args.command, "```", ""]
    for name, report in reports.items():
        p, noise, base = report["protocol"], report["noise_ceiling"], report["base_model"]
        out += [f"## {name}", "",
                f"n = {p['n']} training examples, {p['queries']['test']} test queries ({p['queries']['val']} validation); "
                f"ground truth: {p['m']} retrains on {p['fraction']:.0%} subsets x {p['seeds']} seed(s); settings "
                f"chosen on a separate validation draw of {p['m_val']} retrains. Noise ceiling (seed-to-seed "
                f"Spearman of retrained losses, {noise['subsets']} subsets): {noise['lds_mean']:.3f}. Base model "
                f"test loss {base.get('test_loss', float('nan')):.3f}. Total {p['total_seconds'] / 60:.1f} min.", "",
                *([f"Leave-out protocol: {report['protocol']['leave_out']['m']} retrains, each without a block of "
                   f"{report['protocol']['leave_out']['fraction']:.0%} of the data; noise ceiling "
                   f"{report['noise_ceiling_leave_out']['lds_mean']:.3f}.", ""]
                  if report.get("noise_ceiling_leave_out") else []),
                "| method | LDS (mean ± std over queries) | leave-out LDS | total s | one-time s | per-query ms | "
                "peak RSS MB |", "|---|---|---|---|---|---|---|"]
        rows = sorted(((cell(r), m, leave_out_cell(r), cost(r)) for m, r in seeded_groups(report).items()),
                      key=lambda t: -t[0][1])
        out += [f"| {m} | {c[0]} | {lo} | {k} |" for c, m, lo, k in rows]
        if "removal" in report:
            rm = report["removal"]
            out += ["", f"Counterfactual removal ({len(rm['queries'])} test queries; mean rise of the query loss "
                    "after removing each method's top-k, or k random examples, and retraining):", "",
                    "| method@k | loss rise |", "|---|---|"]
            out += [f"| {k} | {v:+.4f} |" for k, v in rm["mean_loss_rise"].items()]
        out.append("")
    for item in args.ablation:
        name, path = item.split("=", 1)
        data = json.loads(Path(path).read_text())
        out += [f"## STRIDE ablations on {name} (validation draw of {data['m_val']} retrains, variant "
                f"{data['variant']}; one change at a time)", "",
                "| variant | validation LDS (best lambda) | lambda | fit s |", "|---|---|---|---|"]
        out += [f"| {r['variant']} | {r['val_lds_best']:.3f} | {r['best_lambda']} | {r['fit_seconds']:.1f} |"
                for r in data["rows"]]
        out.append("")
    if args.appendix:
        out += [Path(args.appendix).read_text().rstrip(), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
