"""Reading a benchmark report: a table of methods, and what its MLflow run should hold.

The harness does not log anything itself: each benchmark turns its report into a ``TrackedRun``
and whoever runs it (``stride bench``: ``stride_assets.tracking.log_bench``) logs that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stride_assets.engine.store import BenchFolder

RESERVED = {"protocol", "noise_ceiling", "noise_ceiling_leave_out", "base_model", "removal"}


@dataclass(frozen=True)
class TrackedRun:
    """One benchmark's experiment-tracking run: its name, tags, params, metrics (non-numeric ones are
    dropped when logged), text artifacts (file name -> content) and local files to attach."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    texts: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def method_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(method, stats) pairs, best LDS first; failed methods last."""
    rows = [(k, v) for k, v in report.items() if k not in RESERVED]
    return sorted(rows, key=lambda kv: -kv[1].get("lds_mean", float("-inf")) if "error" not in kv[1] else float("inf"))


def _lds_cell(s: dict[str, Any] | None) -> str:
    return "" if s is None else f"{s['lds_mean']:.3f} ± {s['lds_std']:.3f}"


def table(report: dict[str, Any]) -> str:
    """A markdown table: method, LDS mean ± std (halves, and leave-out when measured), NaN queries,
    seconds (one-time / per query), peak RSS."""
    leave = "noise_ceiling_leave_out" in report
    head = ["method", "LDS", *(["leave-out LDS"] if leave else []), "n_nan", "seconds", "one-time s",
            "per-query s", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, s in method_rows(report):
        if "error" in s:
            lines.append(f"| {name} | failed: {s['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        cells = [name, _lds_cell(s), *([_lds_cell(s.get("leave_out"))] if leave else []), str(s["n_nan"]),
                 f"{s['seconds']:.1f}", f"{s['one_time_seconds']:.1f}", f"{s['per_query_seconds']:.4f}",
                 f"{s['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ceiling, base = report.get("noise_ceiling", {}), report.get("base_model", {})
    p = report.get("protocol", {})
    lines.append("")
    lines.append(
        f"protocol: task {p.get('task')}, n={p.get('n')}, queries {p.get('queries')}, m={p.get('m')} subsets of "
        f"{p.get('fraction')}, {p.get('seeds')} seed(s); noise ceiling (seed-to-seed Spearman) "
        f"{ceiling.get('lds_mean', float('nan')):.3f} on {ceiling.get('subsets')} subsets; base test loss "
        f"{base.get('test_loss', float('nan')):.3f}"
    )
    if leave:
        lo, c = p.get("leave_out") or {}, report["noise_ceiling_leave_out"]
        lines.append(
            f"leave-out: m={lo.get('m')} retrains each without {c.get('left_out')} examples ({lo.get('fraction')}); "
            f"noise ceiling {c.get('lds_mean', float('nan')):.3f} on {c.get('subsets')} subsets; mean |test-loss "
            f"change| {c.get('mean_abs_loss_change', float('nan')):.4f} (mean rise {c.get('mean_loss_rise', float('nan')):+.4f})"
        )
    if "removal" in report:
        rises = ", ".join(f"{k} {v:+.4f}" for k, v in report["removal"]["mean_loss_rise"].items())
        lines.append(f"counterfactual removal, mean query-loss rise: {rises}")
    return "\n".join(lines)


def tracked_run(report: dict[str, Any], out: Path) -> TrackedRun:
    """What to log of an LDS benchmark: LDS and cost per method as metrics, the table, report.json."""
    p = report["protocol"]
    metrics = {}
    for name, s in method_rows(report):
        for key in ("lds_mean", "lds_std", "n_nan", "seconds", "one_time_seconds", "per_query_seconds", "peak_rss_mb"):
            if key in s:
                metrics[f"{name}.{key}"] = s[key]
        metrics |= {f"{name}.leave_out.{key}": s["leave_out"][key] for key in ("lds_mean", "lds_std")
                    if key in s.get("leave_out", {})}
    metrics["noise_ceiling"] = report.get("noise_ceiling", {}).get("lds_mean", float("nan"))
    if "noise_ceiling_leave_out" in report:
        metrics["noise_ceiling_leave_out"] = report["noise_ceiling_leave_out"].get("lds_mean", float("nan"))
    metrics.update({f"base.{k}": v for k, v in report.get("base_model", {}).items()})
    params = {k: v for k, v in p.items() if not isinstance(v, dict)}
    return TrackedRun(f"bench {p['task']}", {"stride_bench": p["task"]}, params, metrics,
                      texts={"table.md": table(report)}, files=[BenchFolder(out).file("report")])
