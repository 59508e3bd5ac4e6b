"""One benchmark run: ground truth by retraining, every method scored on the same subsets.

Protocol
1. Train the base model on all training data (the task's recipe).
2. Ground truth: m random subsets (``fraction`` of the data, own seed, independent of STRIDE's
   design), a model retrained on each, every test query's loss recorded (averaged over
   ``seeds`` retraining seeds). A second, independent *validation* draw of retrains scores the
   validation queries: every setting a method can choose (lambda, damping, ...) is chosen
   there, never on the subsets that produce the reported LDS.
3. Noise ceiling: the first ``noise_subsets`` subsets retrained with another seed; the per-query
   Spearman between the two seeds' losses bounds what any method can reach.
4. Each method scores the test queries; LDS per query; seconds split into one-time and
   per-query cost; peak RSS.
5. Counterfactual removal: for a few test queries, each method's top-k examples (and k random
   ones) removed, the model retrained, the rise of the query loss recorded.
6. Optional calibration (``Protocol.calibrate``): every method's scores get per-example gains fitted on
   the validation draw's retrains (``evaluation.calibration``), scored as a row ``<method>_calibrated``
   beside the raw one on the same test draw; its cost is the m_val retrains a user would have to run.
7. Optional second protocol, leave-a-few-out (``Protocol.leave_out``, as EleutherAI Bergson's
   ``validate``): ``LeaveOut.m`` retrains, each on all the data but a small block (``fraction``,
   e.g. 5%) drawn from the protocol's own seed; the LDS is computed as for the halves (the
   predicted sum over the kept set, i.e. minus the predicted effect of removing the block), with
   the same scores (settings chosen on the halves' validation draw) and its own noise ceiling.

Outputs (in ``out``): eval_subsets.parquet, retrained_losses.parquet, scores/<method>.parquet,
report.json ({method: {lds_mean, lds_std, n_nan, seconds, peak_rss_mb, ..., leave_out: {lds_mean, ...}},
"noise_ceiling": ..., "noise_ceiling_leave_out": ..., "protocol": ...}).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from stride_assets.engine.store import BenchFolder
from stride_assets.engine.artifacts import atomic_path, write_json, write_parquet
from stride_assets.engine.evaluation.lds import lds, seed_agreement
from stride_assets.engine.evaluation.meter import metered
from stride_assets.engine.evaluation.task import Task, Trained, draw_subsets

Log = Callable[[str], None]
CALIBRATED = "_calibrated"  # the suffix of a method's calibrated row (``Protocol.calibrate``)


@dataclass
class LeaveOut:
    """Leave-a-few-out retrains: ``m`` models, each trained without ``fraction`` of the examples."""

    m: int = 32
    fraction: float = 0.05
    seed: int = 3000  # the left-out blocks (independent of the halves' seeds)
    noise_subsets: int = 8  # the first retrains redone with Protocol.noise_seed


@dataclass
class Protocol:
    m: int = 64
    fraction: float = 0.5
    seed: int = 1000  # evaluation subsets (independent of STRIDE's design seed)
    seeds: int = 1  # retraining seeds averaged per subset
    m_val: int = 24  # validation draw, for choosing settings
    val_seed: int = 2000
    noise_subsets: int = 8
    noise_seed: int = 7
    removal_queries: int = 5
    removal_ks: list[int] = field(default_factory=lambda: [10, 50])
    removal_random: int = 3
    removal_methods: list[str] | None = None  # None: every method scored
    model_seed: int = 0
    leave_out: LeaveOut | None = None  # None: the halves only
    calibrate: bool = False  # also each method calibrated on the validation draw (``<name>_calibrated``)


@dataclass
class MethodSpec:
    """A method to score: a name in the methods registry (``method``, default: the name before any
    ``:``), its fixed settings, and a grid of options chosen on the validation draw."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)  # the method's settings (STRIDE: {"config": ...})
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])  # alternatives chosen on validation
    method: str | None = None

    @property
    def registry_name(self) -> str:
        return self.method or self.name.split(":")[0]


def ground_truth(task: Task, subsets: np.ndarray, seeds: int, first_seed: int,
                 cache: Path | None = None) -> dict[str, np.ndarray]:
    """Query losses per split averaged over ``seeds`` retraining seeds: {split: (m, Q)}.

    With ``cache`` (a folder), the losses are kept in a file named by a hash of everything they
    depend on (task, recipe, examples, queries, subsets, seeds), so a second run of the same
    protocol, e.g. to add methods, reuses the retrains instead of redoing them.
    """
    path = None
    if cache is not None:
        path = Path(cache) / f"ground_truth_{_truth_key(task, subsets, seeds, first_seed)}.npz"
        if path.exists():
            with np.load(path) as stored:
                return {split: stored[split] for split in stored.files}
    runs = [task.retrain_losses(subsets, seed=first_seed + s) for s in range(seeds)]
    truth = {split: np.mean([r[split] for r in runs], axis=0) for split in runs[0]}
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **truth)
    return truth


def _truth_key(task: Task, subsets: np.ndarray, seeds: int, first_seed: int) -> str:
    h = hashlib.sha256()
    for part in (task.name, repr(getattr(task, "recipe", None)), repr(getattr(task, "max_length", None)),
                 repr(task.example_ids), repr(task.query_ids), str(seeds), str(first_seed)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(np.packbits(subsets.astype(bool)).tobytes())
    h.update(str(subsets.shape).encode())
    return h.hexdigest()[:16]


def noise_ceiling(task: Task, subsets: np.ndarray, losses_a: np.ndarray, seed_b: int,
                  cache: Path | None = None) -> dict[str, Any]:
    """Seed-to-seed agreement of retrained test losses on the same subsets: ``losses_a`` (one seed)
    against a retrain of the same subsets with ``seed_b``."""
    b = ground_truth(task, subsets, 1, seed_b, cache=cache)["test"]
    return {**seed_agreement(losses_a, b).as_dict(), "subsets": len(subsets)}


def leave_out_subsets(n: int, m: int, fraction: float, seed: int) -> np.ndarray:
    """m kept sets (m, n) bool, each all examples but a block of round(fraction * n) (at least 1).

    The blocks cut a seeded permutation into consecutive pieces (a new permutation when one runs
    out), so they are disjoint within each pass over the data: Bergson's non-overlapping draw when
    m * fraction <= 1. Deterministic given the seed.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"leave-out fraction must be in (0, 1), got {fraction}")
    size = max(1, int(round(fraction * n)))
    per_pass = max(1, n // size)
    rng = np.random.default_rng(seed)
    kept = np.ones((m, n), dtype=bool)
    for j in range(m):
        if j % per_pass == 0:
            order = rng.permutation(n)
        block = j % per_pass
        kept[j, order[block * size : (block + 1) * size]] = False
    return kept


def _truth_and_ceiling(task: Task, subsets: np.ndarray, p: Protocol, noise_subsets: int,
                       cache: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Ground truth of ``subsets`` and the noise ceiling on its first ``noise_subsets``."""
    truth = ground_truth(task, subsets, p.seeds, p.model_seed, cache=cache)
    noisy = subsets[:noise_subsets]
    single = truth["test"][:noise_subsets] if p.seeds == 1 else ground_truth(
        task, noisy, 1, p.model_seed, cache=cache)["test"]
    return truth, noise_ceiling(task, noisy, single, p.noise_seed, cache=cache)


def leave_out_truth(task: Task, p: Protocol, base_losses: np.ndarray,
                    cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The leave-out protocol's kept sets, test losses (m, Q), and its noise ceiling, with the mean
    rise of the test loss over the base model (how much a left-out block moves a query)."""
    lo = p.leave_out
    kept = leave_out_subsets(task.n, lo.m, lo.fraction, lo.seed)
    truth, ceiling = _truth_and_ceiling(task, kept, p, lo.noise_subsets, cache)
    rise = truth["test"] - base_losses[None, :]
    return kept, truth["test"], {**ceiling, "left_out": int((~kept[0]).sum()),
                                 "mean_loss_rise": float(rise.mean()),
                                 "mean_abs_loss_change": float(np.abs(rise).mean())}


def _lds_of(scores: np.ndarray, subsets: np.ndarray, losses: np.ndarray) -> float:
    value = lds(scores, subsets, losses).mean
    return -np.inf if np.isnan(value) else value


def run_method(task: Task, trained: Trained, spec: MethodSpec,
               val: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Cache the method, choose its option on the validation draw, then score the test queries: the test
    scores, the stats, and the chosen option's validation scores."""
    from stride_assets.engine.evaluation.methods import METHODS

    val_subsets, val_losses = val
    with metered() as meter:
        method = METHODS[spec.registry_name](**spec.settings)
        method.cache(task, trained)
        choices, best, best_val, val_scores = [], None, -np.inf, None
        for option in spec.grid:
            scored = method.attribute("val", **option).scores
            choices.append((_lds_of(scored, val_subsets, val_losses), option))
            if best is None or choices[-1][0] > best_val:  # the first of equals, as max() would
                best_val, best, val_scores = choices[-1][0], option, scored
        res = method.attribute("test", **best)
    stats = {"seconds": meter.seconds, "peak_rss_mb": meter.peak_rss_mb, "one_time_seconds": res.one_time_seconds,
             "per_query_seconds": res.per_query_seconds, "chosen": best, "val_lds": best_val,
             "grid": [{"setting": o, "val_lds": v} for v, o in choices], **res.info}
    return np.asarray(res.scores, dtype=np.float64), stats, np.asarray(val_scores, dtype=np.float64)


def calibrated(scores: np.ndarray, stats: dict[str, Any], val_scores: np.ndarray,
               val: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """``scores`` with per-example gains fitted on the validation draw (``val``: its subsets and losses), and the
    row's stats: the method's, plus the calibration's fit and seconds."""
    from stride_assets.engine.evaluation import calibration

    with metered() as meter:
        cal = calibration.choose(val_scores, *val)
        out = cal.apply(scores)
    return out, {**{k: stats[k] for k in ("one_time_seconds", "per_query_seconds", "chosen") if k in stats},
                 "seconds": stats["seconds"] + meter.seconds, "peak_rss_mb": max(stats["peak_rss_mb"], meter.peak_rss_mb),
                 "calibration": {**cal.as_dict(), "retrains": int(len(val[0])), "seconds": meter.seconds}}


def removal_test(task: Task, named_scores: dict[str, np.ndarray], p: Protocol, log: Log,
                 cache: Path | None = None) -> dict[str, Any]:
    """Loss rise of a few test queries when each method's top-k (or k random) examples are removed."""
    rng = np.random.default_rng(p.seed + 17)
    n, Q = task.n, len(task.query_ids["test"])
    queries = sorted(rng.choice(Q, size=min(p.removal_queries, Q), replace=False).tolist())
    rows, keep = [], []
    for q in queries:
        for k in p.removal_ks:
            if k >= n:
                continue
            for method, scores in [*named_scores.items(), *[(f"random#{r}", None) for r in range(p.removal_random)]]:
                drop = np.argsort(-scores[q])[:k] if scores is not None else rng.choice(n, size=k, replace=False)
                mask = np.ones(n, dtype=bool)
                mask[drop] = False
                keep.append(mask)
                rows.append((q, k, method.split("#")[0]))
    full = ground_truth(task, np.ones((1, n), dtype=bool), 1, p.model_seed, cache=cache)["test"][0]
    log(f"removal: {len(keep)} retrains")
    losses = ground_truth(task, np.stack(keep), 1, p.model_seed, cache=cache)["test"]
    frame = pl.DataFrame({"query": [r[0] for r in rows], "k": [r[1] for r in rows], "method": [r[2] for r in rows],
                          "rise": [float(losses[j, q] - full[q]) for j, (q, _, _) in enumerate(rows)]})
    table = frame.group_by(["method", "k"]).agg(pl.col("rise").mean()).sort(["k", "rise"], descending=[False, True])
    return {"queries": [task.query_ids["test"][q] for q in queries], "ks": p.removal_ks,
            "mean_loss_rise": {f"{m}@{k}": float(r) for m, k, r in table.iter_rows()}}


def scores_frame(scores: np.ndarray, task: Task) -> pl.DataFrame:
    """A (queries x examples) score matrix as the interchange table: query_id, example_id, score (non-zeros)."""
    q, i = np.nonzero(scores)
    return pl.DataFrame({"query_id": np.asarray(task.query_ids["test"], dtype=object)[q].tolist(),
                         "example_id": np.asarray(task.example_ids, dtype=object)[i].tolist(),
                         "score": scores[q, i].astype(np.float32)})


def scores_matrix(frame: pl.DataFrame, queries: dict[str, int], examples: dict[str, int]) -> np.ndarray:
    """The interchange table back as a dense (queries x examples) matrix, rows and columns by the given indices."""
    scores = np.zeros((len(queries), len(examples)))
    scores[[queries[q] for q in frame["query_id"]], [examples[e] for e in frame["example_id"]]] = frame["score"]
    return scores


def run_benchmark(task: Task, specs: list[MethodSpec], out: Path, protocol: Protocol | None = None,
                  log: Log = print, removal: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run the whole protocol and write its files under ``out``; returns the report.

    Retrained losses are cached under ``out/cache``: re-running into the same folder (e.g. with
    more methods) skips the retrains already done, and the report keeps the methods of earlier runs
    on the same protocol that this run did not score (``earlier_methods``). The report is rewritten after each
    method, so a run stopped between methods keeps the ones it finished. With ``resume``, a method
    the folder's report already has (without error, same protocol) is not scored again.
    """
    p = protocol or Protocol()
    out = Path(out)
    folder = BenchFolder(out)
    started = time.perf_counter()
    log(f"[{task.name}] base model on n={task.n}")
    with metered() as base_meter:
        trained = task.train(None, seed=p.model_seed, checkpoints=10)
    base_test = task.query_losses(trained.model, "test")
    base = {split: float(task.query_losses(trained.model, split).mean()) for split in task.query_ids}
    subsets = draw_subsets(task.n, p.m, p.fraction, p.seed)
    val_subsets = draw_subsets(task.n, p.m_val, p.fraction, p.val_seed)
    log(f"[{task.name}] ground truth: {p.m} + {p.m_val} retrains x {p.seeds} seed(s)"
        + (f", leave-out: {p.leave_out.m} retrains without {p.leave_out.fraction:.0%}" if p.leave_out else ""))
    with metered() as gt_meter:
        truth, ceiling = _truth_and_ceiling(task, subsets, p, p.noise_subsets, folder.file("cache"))
        val_truth = ground_truth(task, val_subsets, p.seeds, p.model_seed, cache=folder.file("cache"))
        leave = leave_out_truth(task, p, base_test, folder.file("cache")) if p.leave_out else None
    ex_ids = np.asarray(task.example_ids, dtype=object)
    write_parquet(pl.DataFrame({"subset_id": np.repeat(np.arange(p.m), subsets.sum(1)),
                                "example_id": ex_ids[np.nonzero(subsets)[1]].tolist()}), folder.file("eval_subsets"))
    Q = len(task.query_ids["test"])
    write_parquet(pl.DataFrame({"subset_id": np.repeat(np.arange(p.m), Q),
                                "query_id": np.tile(np.asarray(task.query_ids["test"], dtype=object), p.m).tolist(),
                                "loss": truth["test"].ravel()}), folder.file("retrained_losses"))
    before = _read_report(folder.file("report"))  # the report as earlier runs left it
    scored = earlier_methods(before, _protocol_of(task, p), {}) if resume else {}
    methods: dict[str, Any] = {}
    all_scores: dict[str, np.ndarray] = {}
    sections = {"noise_ceiling": ceiling, **({"noise_ceiling_leave_out": leave[2]} if leave is not None else {}),
                "base_model": {f"{split}_loss": v for split, v in base.items()} | {
                    "train_seconds": base_meter.seconds,
                    **{k: v for k, v in trained.info.items() if isinstance(v, (int, float))}}}

    def write(extra: dict[str, Any]) -> dict[str, Any]:
        """The report so far (this run's methods, ``extra``, earlier runs' methods), written atomically: a run
        stopped between methods keeps the ones it finished, and ``resume`` skips them."""
        protocol = {**_protocol_of(task, p), "ground_truth_seconds": gt_meter.seconds,
                    "total_seconds": time.perf_counter() - started}
        report = {**methods, **extra, **sections, "protocol": protocol}
        earlier = earlier_methods(before, protocol, report)
        if earlier:  # the report grows from earlier runs: their ground-truth and total time stay counted
            report["protocol"] = _accumulated(before["protocol"], protocol)
            report["base_model"] = {**report["base_model"], "train_seconds": before.get("base_model", {}).get(
                "train_seconds", report["base_model"]["train_seconds"])}
        if leave is not None:
            earlier = {k: _with_leave_out(v, k, folder, task, leave) for k, v in earlier.items()}
        report = {**earlier, **report}
        write_json(report, folder.file("report"))
        return report

    val = (val_subsets, val_truth["val"])
    for spec in specs:
        names = [spec.name] + ([f"{spec.name}{CALIBRATED}"] if p.calibrate else [])
        if all("lds_mean" in scored.get(name, {}) for name in names):
            log(f"[{task.name}] method {spec.name}: in the report already (resume)")
            continue
        log(f"[{task.name}] method {spec.name}")
        try:
            scores, stats, val_scores = run_method(task, trained, spec, val)
            rows = {spec.name: (scores, stats)}
            if p.calibrate:
                rows[names[1]] = calibrated(scores, stats, val_scores, val)
        except Exception as exc:  # one broken method must not sink the others; it is reported
            methods[spec.name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"[{task.name}]   {spec.name} failed: {exc}")
            write({})
            continue
        for name, (scores, stats) in rows.items():
            result = lds(scores, subsets, truth["test"])
            methods[name] = {**result.as_dict(), **stats}
            if leave is not None:
                methods[name]["leave_out"] = lds(scores, leave[0], leave[1]).as_dict()
            all_scores[name] = scores
            write_parquet(scores_frame(scores, task), folder.file("scores", name))
            log(f"[{task.name}]   {name}: LDS {result.mean:.3f} ± {result.std:.3f} ({stats['seconds']:.1f}s)"
                + (f", leave-out LDS {methods[name]['leave_out']['lds_mean']:.3f}" if leave is not None else ""))
        write({})
    extra: dict[str, Any] = {}
    if removal and all_scores:
        chosen = {k: v for k, v in all_scores.items() if p.removal_methods is None or k in p.removal_methods}
        extra["removal"] = removal_test(task, chosen, p, log, cache=folder.file("cache"))
    return write(extra)


def _accumulated(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``now``'s protocol with the seconds of the earlier runs that made the same report: the ground truth
    as long as it took when it was computed (a later run reads it from the cache), totals summed."""
    return {**now, "ground_truth_seconds": max(earlier.get("ground_truth_seconds", 0.0), now["ground_truth_seconds"]),
            "total_seconds": earlier.get("total_seconds", 0.0) + now["total_seconds"]}


def _protocol_of(task: Task, p: Protocol) -> dict[str, Any]:
    return {**asdict(p), "task": task.name, "n": task.n, "queries": {s: len(ids) for s, ids in task.query_ids.items()}}


def _with_leave_out(entry: dict[str, Any], name: str, folder: BenchFolder, task: Task,
                    leave: tuple[np.ndarray, np.ndarray, dict[str, Any]]) -> dict[str, Any]:
    """An earlier method's entry with its leave-out LDS, computed from its stored scores when it lacks one."""
    path = folder.file("scores", name)
    if "leave_out" in entry or "error" in entry or not path.exists():
        return entry
    scores = scores_matrix(pl.read_parquet(path), {q: j for j, q in enumerate(task.query_ids["test"])},
                           {e: i for i, e in enumerate(task.example_ids)})
    return {**entry, "leave_out": lds(scores, leave[0], leave[1]).as_dict()}


_PROTOCOL_KEYS = ("task", "n", "queries", "m", "fraction", "seed", "seeds", "m_val", "val_seed", "model_seed")


def _read_report(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def earlier_methods(earlier: dict[str, Any], protocol: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The method entries of an ``earlier`` report made on the same protocol (same task, data, subsets and
    seeds, so the same ground truth) that ``report`` does not have; {} otherwise."""
    same = bool(earlier) and all(earlier.get("protocol", {}).get(k) == protocol.get(k) for k in _PROTOCOL_KEYS)
    same_leave_out = earlier.get("protocol", {}).get("leave_out") == protocol.get("leave_out")
    skip = {"protocol", "noise_ceiling", "noise_ceiling_leave_out", "base_model"}
    return {k: v if same_leave_out else {f: x for f, x in v.items() if f != "leave_out"}
            for k, v in earlier.items() if same and k not in skip and k not in report}
