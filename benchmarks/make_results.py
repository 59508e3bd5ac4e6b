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


def cost(rows: list[tuple[str, dict]]) -> str:
    ok = [s for _, s in rows if "error" not in s]
    if not ok:
        return "|||"
    mean = lambda k: float(np.mean([s[k] for s in ok]))  # noqa: E731
    return (f"{mean('seconds'):.1f} | {mean('one_time_seconds'):.1f} | {mean('per_query_seconds') * 1000:.2f} | "
            f"{max(s['peak_rss_mb'] for s in ok):.0f}")


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
    out += ["Made by:", "", "```", *args.command, "```", ""]
    for item in args.report:
        name, folder = item.split("=", 1)
        path = Path(folder)
        report = json.loads((path / "report.json" if path.is_dir() else path).read_text())
        p, noise, base = report["protocol"], report["noise_ceiling"], report["base_model"]
        out += [f"## {name}", "",
                f"n = {p['n']} training examples, {p['queries']['test']} test queries ({p['queries']['val']} validation); "
                f"ground truth: {p['m']} retrains on {p['fraction']:.0%} subsets x {p['seeds']} seed(s); settings "
                f"chosen on a separate validation draw of {p['m_val']} retrains. Noise ceiling (seed-to-seed "
                f"Spearman of retrained losses, {noise['subsets']} subsets): {noise['lds_mean']:.3f}. Base model "
                f"test loss {base.get('test_loss', float('nan')):.3f}. Total {p['total_seconds'] / 60:.1f} min.", "",
                "| method | LDS (mean ± std over queries) | total s | one-time s | per-query ms | peak RSS MB |",
                "|---|---|---|---|---|---|"]
        rows = sorted(((cell(r), m, cost(r)) for m, r in seeded_groups(report).items()), key=lambda t: -t[0][1])
        out += [f"| {m} | {c[0]} | {k} |" for c, m, k in rows]
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
