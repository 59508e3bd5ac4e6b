"""The contamination scenario: do attribution methods find planted copies of the test queries?

Protocol (``run``)
1. The pydoc LM task (``lm_task.pydoc_task``: its split, recipe and sizes, full or quick).
2. ``planting.plant_copies``: ``copies`` copies of a fraction of the test queries, exact
   (``rates["exact"]``) or lightly edited (``rates["edited"]``), inserted at random positions of
   the training set; a new ``LMTask`` (tokenizer included) is built on the contaminated data.
   The ``hard`` scenario (``Scenario.named("hard")``, ``stride bench contamination --hard``)
   plants with ``hard_planting.plant_variants`` instead, one copy per query at low rates:
   exact copies (the reference), paraphrases (corpus words swapped in, words dropped, local
   shuffles) and partial copies (the start of the query) embedded inside unrelated passages.
3. The base model is trained on it with the task's recipe (no retraining: the answer is known).
4. Scores of the test queries: STRIDE in logit form (``suites.lm_stride``; lambda_ratio is the
   recovery default 0.2, the value the pydoc-gpt validation draw chose, since no retrains are
   made here to choose it) and the registry's ``repsim``, ``grad_dot``, ``tfidf`` and ``kronfluence_ekfac`` with their
   default settings. TF-IDF matches words, so on copies it is a textual upper reference rather
   than a model-based attribution.
5. ``planting.recall_at_k`` of the planted copies per method (overall and per kind), and
   ``contamination.audit`` (the pipeline's audit) of each method's scores: how many flags, how
   many of them planted copies (its precision), and the share of each kind's copies it flags.

Outputs (in ``out``): report.json ({method: {recall_at_k, recall_at_k_by_kind, k, planted,
rates, seconds, audit: {flagged, planted_flagged, other_flagged, precision, found_by_kind}},
"base_model": ..., "protocol": ...}), planted.parquet, scores/<method>.parquet
(nonzero scores), audit.parquet and audit.md (the audit of STRIDE's scores).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from stride_assets.engine import contamination
from stride_assets.engine import plots
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.store import BenchFolder
from stride_assets.engine.artifacts import atomic_path, read_json, write_json, write_parquet
from stride_assets.engine.evaluation import hard_planting, planting
from stride_assets.engine.evaluation.bench import scores_frame
from stride_assets.engine.evaluation.lm_task import SPLITS, LMTask, pydoc_task
from stride_assets.engine.evaluation.meter import metered
from stride_assets.engine.evaluation.suites import lm_stride
from stride_assets.engine.evaluation.task import Trained

Log = Callable[[str], None]
STRIDE = "stride_logit"


@dataclass
class Scenario:
    name: str = "easy"  # "hard": see ``named``
    rates: dict[str, float] = field(default_factory=lambda: {"exact": 0.1, "edited": 0.1})
    copies: int = 1  # copies per contaminated query (one: recall@1 can reach 1; the harder case)
    edit_rate: float = 0.1  # share of words edited in an "edited" copy
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    baselines: list[str] = field(default_factory=lambda: ["repsim", "grad_dot", "tfidf", "kronfluence_ekfac"])
    audit_k: int = 10
    min_overlap: float = 0.3
    ngram: int = 5
    seed: int = 0  # data split; planting uses seed + 1, rank tie-breaks seed
    model_seed: int = 0
    embed_share: float = 0.5  # an embedded copy: this share of the words the model sees of the query

    @classmethod
    def named(cls, name: str, seed: int = 0) -> "Scenario":
        """``easy`` (the defaults) or ``hard``: one copy per contaminated query, 5% of the queries
        each as exact copies, paraphrases and partial copies embedded in unrelated passages."""
        if name == "easy":
            return cls(seed=seed)
        if name == "hard":
            return cls(name="hard", rates={"exact": 0.05, "paraphrase": 0.05, "embedded": 0.05}, seed=seed)
        raise StrideInputError(f"unknown contamination scenario {name!r}; use easy or hard")

    @property
    def kinds(self) -> list[str]:
        return [k for k in hard_planting.HARD_KINDS if self.rates.get(k)]


def contaminated_task(scenario: Scenario, quick: bool) -> tuple[LMTask, pl.DataFrame]:
    """The pydoc task with copies of some test queries planted in its training set, and the plants."""
    clean = pydoc_task(seed=scenario.seed, quick=quick)
    args = (clean.texts(None), clean.example_ids, clean.texts("test"), clean.query_ids["test"], scenario.rates)
    if set(scenario.rates) <= set(planting.KINDS):  # the easy kinds: as before, ``copies`` each
        texts, ids, planted = planting.plant_copies(*args, scenario.copies, seed=scenario.seed + 1,
                                                    edit_rate=scenario.edit_rate)
    elif scenario.copies != 1:
        raise StrideInputError(f"kinds {sorted(scenario.rates)} plant one copy per query, not {scenario.copies}")
    else:
        texts, ids, planted = hard_planting.plant_variants(
            *args, seed=scenario.seed + 1, edit_rate=scenario.edit_rate, embed_share=scenario.embed_share,
            visible_words=[visible_words(clean.tokenizer, t, clean.max_length) for t in clean.texts("test")])
    task = LMTask(texts, {s: clean.texts(s) for s in SPLITS}, clean.recipe, max_length=clean.max_length,
                  name="pydoc-contaminated", example_ids=ids, query_ids=clean.query_ids)
    return task, planted


def visible_words(tokenizer: Any, text: str, max_length: int) -> int:
    """How many of the text's (whitespace) words fit in ``max_length`` tokens: what the model sees."""
    words, lo, hi = text.split(), 1, len(text.split())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= max_length else (lo, mid - 1)
    return lo


def score(task: LMTask, trained: Trained, method: str, quick: bool) -> np.ndarray:
    """Test-query scores (Q, n) of STRIDE (``STRIDE``) or of a registry baseline, default settings."""
    from stride_assets.engine.evaluation.methods import score_method

    if method == STRIDE:
        return score_method("stride", task, trained, "test", config=lm_stride(quick)[STRIDE]).scores
    return score_method(method, task, trained, "test").scores


def run(out: Path, quick: bool = False, scenario: Scenario | None = None, log: Log = print) -> dict[str, Any]:
    """Run the scenario and write its files under ``out``; returns the report as read back from report.json."""
    sc = scenario or Scenario()
    out = Path(out)
    folder = BenchFolder(out)
    started = time.perf_counter()
    task, planted = contaminated_task(sc, quick)
    log(f"[contamination] {planted.height} copies of {planted['query_id'].n_unique()} test queries planted; "
        f"n={task.n}")
    with metered() as base_meter:
        trained = task.train(None, seed=sc.model_seed)
    queries = pl.DataFrame({"query_id": task.query_ids["test"], "text": task.texts("test")})
    corpus = pl.DataFrame({"example_id": task.example_ids, "text": task.texts(None)})
    report: dict[str, Any] = {}
    for method in [STRIDE, *sc.baselines]:
        log(f"[contamination] method {method}")
        with metered() as meter:
            scores = score(task, trained, method, quick)
        recall = planting.recall_at_k(scores, task.query_ids["test"], task.example_ids, planted, sc.ks, sc.seed)
        by_kind = {kind: planting.recall_at_k(scores, task.query_ids["test"], task.example_ids,
                                              planted.filter(pl.col("kind") == kind), sc.ks, sc.seed)["recall_at_k"]
                   for kind in sc.kinds if (planted["kind"] == kind).any()}
        frame = scores_frame(scores, task)
        leaks = contamination.audit(frame, queries, corpus, sc.audit_k, sc.min_overlap, sc.ngram, seed=sc.seed)
        report[method] = {"recall_at_k": recall["recall_at_k"], "recall_at_k_by_kind": by_kind,
                          "k": sc.ks, "planted": planted.height, "rates": sc.rates, "seconds": meter.seconds,
                          "audit": audit_stats(leaks, planted)}
        write_parquet(frame, folder.file("scores", method))
        if method == STRIDE:
            write_parquet(leaks, folder.file("audit"))
            with atomic_path(folder.file("audit_summary")) as tmp:
                tmp.write_text(contamination.audit_markdown(leaks) + "\n")
        log(f"[contamination]   {method}: recall@k {recall['recall_at_k']} ({meter.seconds:.1f}s)")
    write_parquet(planted, folder.file("planted"))
    losses = pl.DataFrame({"query_id": task.query_ids["test"], "loss": task.query_losses(trained.model, "test")})
    by_kind = losses.join(planted.unique("query_id").select("query_id", "kind"), on="query_id", how="left")
    report["base_model"] = {"train_seconds": base_meter.seconds, **trained.info, "test_loss_by_kind": {
        kind or "clean": float(v) for kind, v in by_kind.group_by("kind").agg(pl.col("loss").mean()).iter_rows()}}
    report["protocol"] = {**asdict(sc), "task": "pydoc", "quick": quick, "n": task.n,
                          "n_clean": task.n - planted.height, "queries": len(task.query_ids["test"]),
                          "contaminated": planted["query_id"].n_unique(), "stride": lm_stride(quick)[STRIDE].model_dump(),
                          "total_seconds": time.perf_counter() - started}
    write_json(report, folder.file("report"))
    plots.curves({m: [(int(k), v) for k, v in report[m]["recall_at_k"].items()] for m in methods(report)},
                 folder.file("recall_curves"), "recall of planted copies", xlabel="k (most influential examples)",
                 marker="o")
    return read_json(folder.file("report"))  # as written: JSON keys (k as strings, "1", "5", ...)


def audit_stats(leaks: pl.DataFrame, planted: pl.DataFrame) -> dict[str, Any]:
    """The audit's flags against the planted copies: how many, how many planted (precision), and
    per kind the share of planted copies flagged."""
    hit = planted.join(leaks, on=["query_id", "example_id"], how="semi")
    found = {kind: hit.filter(pl.col("kind") == kind).height / count
             for kind, count in planted.group_by("kind").len().iter_rows()}
    return {"flagged": leaks.height, "planted_flagged": hit.height, "other_flagged": leaks.height - hit.height,
            "precision": hit.height / leaks.height if leaks.height else float("nan"),
            "found_by_kind": dict(sorted(found.items()))}


def methods(report: dict[str, Any]) -> list[str]:
    return [k for k in report if k not in ("base_model", "protocol")]


def table(report: dict[str, Any]) -> str:
    """Markdown of a report as written: recall@k per method (overall, then per kind at the smallest
    and largest k), audit flags (of which planted copies, its precision, and per kind the share of
    copies it flags), seconds."""
    ks = report["protocol"]["ks"]
    kinds = [k for k in hard_planting.HARD_KINDS if report["protocol"]["rates"].get(k)]
    low, top = min(ks), max(ks)
    head = ([f"recall@{k}" for k in ks] + [f"{kind}@{low}/{top}" for kind in kinds]
            + ["audit flags (planted)", "audit precision"] + [f"audit {kind}" for kind in kinds] + ["seconds"])
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name in methods(report):
        s, a = report[name], report[name]["audit"]
        by_kind = s["recall_at_k_by_kind"]
        cells = [f"{s['recall_at_k'][str(k)]:.3f}" for k in ks]
        cells += [f"{by_kind[kind][str(low)]:.2f}/{by_kind[kind][str(top)]:.2f}" if kind in by_kind else ""
                  for kind in kinds]
        cells += [f"{a['flagged']} ({a['planted_flagged']})", f"{a.get('precision', float('nan')):.2f}"]
        cells += [f"{a['found_by_kind'][kind]:.2f}" if kind in a.get("found_by_kind", {}) else "" for kind in kinds]
        lines.append(f"| {name} | " + " | ".join(cells + [f"{s['seconds']:.1f}"]) + " |")
    p, losses = report["protocol"], report["base_model"]["test_loss_by_kind"]
    lines += ["", f"scenario {p.get('name', 'easy')}: {p['contaminated']} of {p['queries']} test queries "
              f"contaminated ({p['rates']}), planted "
              f"copies per query {p['copies']}, n={p['n']}; base-model test loss by kind: "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(losses.items()))]
    return "\n".join(lines)


def tracked_run(report: dict[str, Any], out: Path) -> "TrackedRun":
    """What to log: recall@k per method (and per kind) as metrics (named ``<method>.<metric>`` like
    the LDS benchmarks'), the table; report.json, audit.md and the recall curves as files."""
    from stride_assets.engine.evaluation.report import TrackedRun

    metrics: dict[str, float] = {}
    for name in methods(report):
        s = report[name]
        metrics |= {f"{name}.recall_at_{k}": v for k, v in s["recall_at_k"].items()}
        metrics |= {f"{name}.{kind}.recall_at_{k}": v
                    for kind, r in s["recall_at_k_by_kind"].items() for k, v in r.items()}
        metrics |= {f"{name}.seconds": s["seconds"], f"{name}.audit_flagged": s["audit"]["flagged"]}
        metrics |= {f"{name}.audit_precision": s["audit"]["precision"]} if "precision" in s["audit"] else {}
    params = {k: v for k, v in report["protocol"].items() if k != "stride"}
    name = "contamination" + ("" if report["protocol"].get("name", "easy") == "easy" else f"-{report['protocol']['name']}")
    return TrackedRun(f"bench {name}", {"stride_bench": name}, params, metrics,
                      texts={"table.md": table(report)},
                      files=[BenchFolder(out).file(a) for a in ("report", "audit_summary", "recall_curves")])
