"""Named benchmarks: a task, the methods to compare on it, and the protocol (full or quick).

    digits-mlp            scikit-learn's load_digits, MLP classifier, STRIDE in logit form, on the hidden layer, and
                          on the first layer's pre-activations (damping chosen on validation)
    breast-cancer-mlp     scikit-learn's load_breast_cancer (569 rows, 2 classes), as digits-mlp
    wine-mlp              scikit-learn's load_wine (178 rows, 3 classes), as digits-mlp
    pydoc-gpt             the embedded Python docs, a small GPT-2 trained here, STRIDE in activation (and logit) form
    numpy-docs-gpt        the installed numpy's docstrings (its version in the task name), as pydoc-gpt
    PATH --label COL      any tabular parquet/csv: numeric features + label column, MLP
    PATH --text COL       any text parquet/jsonl: a small GPT-2 trained on it

Every one is offline (scikit-learn's loaders read files it ships). ``--quick`` is quick for each:
the quick protocol, and for the LM tasks and user tables a smaller training set and model; the
STRIDE settings give the operators at least ``MIN_OPERATOR_EPOCHS`` passes over the member pairs
of the task's training set (``steps`` raised where the default would give fewer), and subsets of
``MIN_SUBSET_MEMBERS`` examples on average at least (K lowered on small training sets).

``BENCHES`` is what ``stride bench NAME`` can run: those suites (any other NAME is a data file), and
the ``contamination`` and ``incremental`` scenarios, and ``scale`` (cost over model and corpus sizes);
``run_bench`` runs one and hands what to log to a ``track`` callback (the harness never imports MLflow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any

from stride_assets.engine.config import StrideConfig
from stride_assets.engine.training import steps_for_epochs
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation import report
from stride_assets.engine.evaluation.bench import LeaveOut, MethodSpec, Protocol
from stride_assets.engine.evaluation.report import TrackedRun
from stride_assets.engine.evaluation.task import Task
from stride_assets.engine.store import BenchFolder

MIN_OPERATOR_EPOCHS = 3.0  # the suites' operator training: at least this many passes over the member pairs
MIN_SUBSET_MEMBERS = 8  # and K at most n * d / this: a design for few examples (wine: 100) keeps no empty subset
LAMBDA_GRID = [{"lambda_ratio": r} for r in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)]
RIDGE_GRID = [{"lambda_ratio": r, "solver": "ridge"} for r in (0.01, 0.1, 0.5, 0.9)]
# damped operators measure a dense influence: smaller Lasso penalties, and ridge as well
WIDE_GRID = [{"lambda_ratio": r} for r in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)] + RIDGE_GRID
FIRST_LAYER_DAMPING = (0.01, 0.1, 1.0)  # stride_pre_activation's damping weights, one operator training each
DAMPING_GRID = [{"damping": d} for d in (1e-3, 1e-2, 1e-1, 1.0)]
# logra's damping is relative to trace / min(n, k); its best values sat at the top of the grid above
# on every benchmark (benchmarks/notes_logra.md)
LOGRA_DAMPING_GRID = [{"damping": d} for d in (0.1, 0.3, 1.0, 3.0, 10.0)]


@dataclass
class Suite:
    task: Task
    specs: list[MethodSpec]
    protocol: Protocol


def baseline_specs(task: Task, model_probe=None) -> list[MethodSpec]:
    """Every applicable baseline, with the settings it may choose on validation."""
    from stride_assets.engine.evaluation.methods import BERGSON_GRIDS, KRONFLUENCE_DAMPING, PEERS, applicable

    grids = {"logra": LOGRA_DAMPING_GRID, "if_exact": DAMPING_GRID, **{name: KRONFLUENCE_DAMPING for name in PEERS},
             **BERGSON_GRIDS,  # Bergson's damping factor (and TrackStar's unit normalisation)
             "tfidf": [{"on": "words"}, {"on": "token_ids"}] if hasattr(task, "token_ids") else [{"on": "words"}]}
    return [MethodSpec(name, grid=grids.get(name, [{}])) for name in applicable(task, model_probe)]


def _fit_to(base: StrideConfig, n: int | None) -> StrideConfig:
    """``base`` for a training set of ``n`` examples (None: as it is): K lowered, where needed, to
    n * d / ``MIN_SUBSET_MEMBERS``, and training.steps raised to ``MIN_OPERATOR_EPOCHS`` epochs of the
    n * d member pairs."""
    if n is None:
        return base
    t, d = base.training, base.design.d
    K = min(base.design.K, max(d + 1, n * d // MIN_SUBSET_MEMBERS))
    need = steps_for_epochs(MIN_OPERATOR_EPOCHS, t.batch_size, n, d)
    return base.with_(design={"K": K}, training={"steps": max(t.steps, need)})


def classifier_stride(quick: bool, n: int | None = None) -> dict[str, StrideConfig | dict[str, StrideConfig]]:
    """STRIDE on an MLP classifier (``n`` training examples): logit form, the hidden-layer (activation) form, and
    ``stride_pre_activation``: operators on the first layer (a low-rank change of W1, form ``pre_activation``)
    with the damping term, one training per weight of ``FIRST_LAYER_DAMPING``, the weight chosen on validation
    with the recovery (``WIDE_GRID``). The first layer carries most of an MLP's attribution signal
    (``benchmarks/layer_signal.py``: the output layer alone tops out at 0.52-0.60 LDS, the first layer damped
    at 0.66-0.72), and damping keeps each operator's weight change small, as an influence function's does.

    K, d and rank were chosen on the digits validation draw (benchmarks/ablation_digits.json):
    rank 16 -> 64 raised validation LDS 0.48 -> 0.53, K 512/d 16 -> K 1024/d 32 to 0.56.
    """
    base = _fit_to(StrideConfig().with_(
        design={"K": 256 if quick else 1024, "d": 16 if quick else 32},
        operators={"form": "logit", "rank": 64},
        training={"steps": 100 if quick else 250, "batch_size": 2048, "lr": 1e-2, "stability_weight": 1.0},
        recovery={"n_jobs": -1},
    ), n)
    first_layer = base.with_(operators={"form": "pre_activation"})
    return {"stride_logit": base, "stride_hidden": base.with_(operators={"form": "activation"}),
            "stride_pre_activation": {f"damping{w:g}": first_layer.with_(training={"damping_weight": w})
                                      for w in FIRST_LAYER_DAMPING}}


def lm_stride(quick: bool, n: int | None = None) -> dict[str, StrideConfig]:
    """STRIDE on a small GPT-2 (``n`` training passages): activation form at the default layer, the logit form,
    the head form (the head's input: operators of r x d_model instead of r x vocabulary) and the logit form
    on each operator's member tokens (``operators.columns``: r x at most 1,024; rank 48, as the default
    profile: rank 16 gave 0.497 LDS on pydoc-gpt, 48 gave 0.559, 64 gave 0.560; the default profile keeps
    512 columns, 4 epochs and 8 non-member pairs per step for less than half the training time: 0.547 over 3
    seeds, and on twice the subsets with each passage in 6 (its design) 0.592, ``benchmarks/stride_attempts.py``).
    The suite keeps its design (K 256, d 8) so that its rows stay comparable with the earlier runs."""
    base = _fit_to(StrideConfig().with_(
        design={"K": 64 if quick else 256, "d": 4 if quick else 8},
        operators={"form": "activation", "rank": 16},
        training={"steps": 100 if quick else 1000, "batch_size": 32},
        recovery={"n_jobs": -1},
    ), n)
    return {"stride": base, "stride_logit": base.with_(operators={"form": "logit"}),
            "stride_head": base.with_(operators={"form": "head"}),
            "stride_logit_members": base.with_(operators={"form": "logit", "columns": 1024, "rank": 48})}


def _reseeded(config: StrideConfig, seed: int) -> StrideConfig:
    return config.with_(design={"seed": seed}, training={"seed": seed}) if seed else config


def stride_spec(name: str, settings: StrideConfig | dict[str, StrideConfig], seed: int = 0) -> MethodSpec:
    """One STRIDE config (lambda chosen on validation), or a sweep of configs (label -> config: one operator
    training each, the label chosen on validation with the recovery over ``WIDE_GRID``), reseeded."""
    if isinstance(settings, StrideConfig):
        return MethodSpec(name, {"config": _reseeded(settings, seed)}, grid=LAMBDA_GRID, method="stride")
    return MethodSpec(name, {"configs": {label: _reseeded(c, seed) for label, c in settings.items()}},
                      grid=[{"variant": label, **option} for label in settings for option in WIDE_GRID],
                      method="stride_sweep")


def _specs(task: Task, stride: dict[str, StrideConfig | dict[str, StrideConfig]],
           stride_seeds: int) -> list[MethodSpec]:
    """STRIDE variants (one per seed when stride_seeds > 1: name_s0, name_s1, ...) and the baselines."""
    strides = [stride_spec(f"{name}_s{seed}" if stride_seeds > 1 else name, settings, seed)
               for name, settings in stride.items() for seed in range(stride_seeds)]
    return strides + baseline_specs(task)


QUICK = Protocol(m=16, m_val=8, noise_subsets=4, removal_queries=2, removal_ks=[10], removal_random=1)


def build(name: str, *, quick: bool = False, label: str | None = None, text: str | None = None,
          seed: int = 0, stride_seeds: int = 1) -> Suite:
    """The suite for a benchmark name or a user data path (STRIDE repeated over ``stride_seeds`` seeds)."""
    protocol = replace(QUICK) if quick else Protocol()
    task, stride = SUITES[name](quick, seed) if name in SUITES else _file_task(name, label, text, quick, seed)
    return Suite(task, _specs(task, stride, stride_seeds), protocol)


SuiteBuilder = Callable[[bool, int], tuple[Task, dict[str, StrideConfig]]]


def _classifier_suite(builder: str) -> SuiteBuilder:
    """``tabular.<builder>(seed=)``, the same task full or quick (it is small), with ``classifier_stride``."""

    def make(quick: bool, seed: int) -> tuple[Task, dict[str, StrideConfig]]:
        task = getattr(import_module("stride_assets.engine.evaluation.tabular"), builder)(seed=seed)
        return task, classifier_stride(quick, task.n)

    return make


def _lm_suite(builder: str) -> SuiteBuilder:
    """``lm_task.<builder>(seed=, quick=)`` (quick: fewer passages, smaller GPT-2) with ``lm_stride``."""

    def make(quick: bool, seed: int) -> tuple[Task, dict[str, StrideConfig]]:
        task = getattr(import_module("stride_assets.engine.evaluation.lm_task"), builder)(seed=seed, quick=quick)
        return task, lm_stride(quick, task.n)

    return make


def _data_file(name: str) -> Path:
    """A benchmark name that is not registered must be a data file."""
    if not Path(name).exists():
        raise StrideInputError(f"unknown benchmark {name!r}: use {', '.join(BENCHES)}, or a data file path")
    return Path(name)


def _file_task(name: str, label: str | None, text: str | None, quick: bool,
               seed: int) -> tuple[Task, dict[str, StrideConfig]]:
    """A user file: tabular with ``label`` (an MLP), or text with ``text`` (a small GPT-2); ``quick``: a
    smaller training set and model (``tabular.QUICK_ROWS``, ``lm_task.QUICK_SIZES`` and their recipes)."""
    path = _data_file(name)
    if (label is None) == (text is None):
        raise StrideInputError("benchmark on a file needs exactly one of --label COL (tabular) or --text COL (text)")
    if label is not None:
        from stride_assets.engine.evaluation.tabular import tabular_task

        task = tabular_task(path, label, seed=seed, quick=quick)
        return task, classifier_stride(quick, task.n)
    from stride_assets.engine.evaluation.lm_task import text_task

    task = text_task(path, text, seed=seed, quick=quick)
    return task, lm_stride(quick, task.n)


SUITES: dict[str, SuiteBuilder] = {
    "digits-mlp": _classifier_suite("digits_task"), "breast-cancer-mlp": _classifier_suite("breast_cancer_task"),
    "wine-mlp": _classifier_suite("wine_task"), "pydoc-gpt": _lm_suite("pydoc_task"),
    "numpy-docs-gpt": _lm_suite("numpy_docs_task")}


# --- the ``stride bench`` registry ---------------------------------------------------------------

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """What ``stride bench`` was asked for; each benchmark reads the options that apply to it."""

    quick: bool = False
    seed: int = 0
    label: str | None = None  # a user file: its label column (tabular) ...
    text: str | None = None  # ... or its text column
    stride_seeds: int = 1
    methods: list[str] | None = None  # None: every applicable method
    removal: bool = True
    removal_methods: list[str] | None = None
    removal_ks: list[int] | None = None
    leave_out: int | None = None  # leave-out protocol retrains (0: 32, quick 12); None: halves only
    leave_out_fraction: float | None = None  # share each leave-out retrain drops (None: 5%; implies leave_out)
    resume: bool = False  # skip the methods the output folder's report already has on the same protocol
    calibrate: bool = False  # also every method calibrated on the validation draw's retrains
    scenario: str = "easy"  # contamination: "easy" (exact / lightly edited copies) or "hard"


def _report_path(result: dict[str, Any], out: Path) -> str:
    return f"report: {BenchFolder(out).file('report')}"


@dataclass(frozen=True)
class Bench:
    """One ``stride bench NAME``: how it runs (into ``out``, returning its report), the table printed
    after it (None: none), what experiment-tracking run it asks for, and its closing line."""

    run: Callable[[str, Path, BenchOptions, Log], dict[str, Any]]
    tracked_run: Callable[[dict[str, Any], Path], TrackedRun]
    table: Callable[[dict[str, Any]], str] | None = None
    summary: Callable[[dict[str, Any], Path], str] = _report_path
    modes: tuple[str, str] = ("full protocol", "quick protocol")  # the header's word for full and --quick


def with_leave_out(protocol: Protocol, quick: bool, m: int | None, fraction: float | None) -> Protocol:
    """``protocol`` with the leave-out protocol when asked for (``m`` retrains, 0: 32, quick 12; ``fraction``
    None: 5%); unchanged when both are None. A run into a folder must ask as the run that made it did, or the
    resumed report drops the leave-out values."""
    if m is None and fraction is None:
        return protocol
    leave = LeaveOut(m=12, noise_subsets=4) if quick else LeaveOut()
    return replace(protocol, leave_out=replace(leave, m=m or leave.m, fraction=fraction or leave.fraction))


def _lds(name: str, out: Path, options: BenchOptions, log: Log) -> dict[str, Any]:
    """LDS against real retraining: a named suite or a user file, the chosen methods and removal protocol,
    and the leave-out protocol when asked for."""
    from stride_assets.engine.evaluation.bench import run_benchmark

    suite = build(name, quick=options.quick, label=options.label, text=options.text, seed=options.seed,
                  stride_seeds=options.stride_seeds)
    specs = suite.specs
    if options.methods:
        unknown = set(options.methods) - {s.name for s in specs}
        if unknown:
            raise StrideInputError(f"unknown or inapplicable methods {sorted(unknown)}; "
                                   f"available: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in options.methods]
    protocol = suite.protocol
    if options.removal_methods:
        protocol = replace(protocol, removal_methods=list(options.removal_methods))
    if options.removal_ks:
        protocol = replace(protocol, removal_ks=list(options.removal_ks))
    protocol = with_leave_out(protocol, options.quick, options.leave_out, options.leave_out_fraction)
    protocol = replace(protocol, calibrate=options.calibrate)
    return run_benchmark(suite.task, specs, out, protocol, log=log, removal=options.removal, resume=options.resume)


def _late(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported when called (the scenario modules import this one at load time)."""

    def call(*args: Any) -> Any:
        return getattr(import_module(f"stride_assets.engine.evaluation.{module}"), name)(*args)

    return call


def _contamination(name: str, out: Path, options: BenchOptions, log: Log) -> dict[str, Any]:
    from stride_assets.engine.evaluation import contamination_bench

    scenario = contamination_bench.Scenario.named(options.scenario, seed=options.seed)
    return contamination_bench.run(out, options.quick, scenario, log=log)


def _incremental(name: str, out: Path, options: BenchOptions, log: Log) -> dict[str, Any]:
    from stride_assets.engine.evaluation import incremental_bench

    return incremental_bench.run(out, quick=options.quick, log=log)


def _scale(name: str, out: Path, options: BenchOptions, log: Log) -> dict[str, Any]:
    from stride_assets.engine.evaluation import scale_bench

    return scale_bench.run(out, quick=options.quick, log=log)


LDS = Bench(_lds, report.tracked_run, report.table)  # the named suites, and any data file (--label / --text)
BENCHES: dict[str, Bench] = {
    **{name: LDS for name in SUITES},
    "contamination": Bench(_contamination, _late("contamination_bench", "tracked_run"),
                           _late("contamination_bench", "table"), modes=("full", "quick"),
                           summary=lambda r, out: f"{_report_path(r, out)}; suspected leaks: "
                                                  f"{BenchFolder(out).file('audit_summary')}"),
    "incremental": Bench(_incremental, _late("incremental_bench", "tracked_run"), modes=("full", "quick"),
                         summary=lambda r, out: f"incremental_ratio {r['incremental_ratio']:.3f}; "
                                                f"{_report_path(r, out)}"),
    "scale": Bench(_scale, _late("scale_bench", "tracked_run"), _late("scale_bench", "table"), modes=("full", "quick"),
                   summary=lambda r, out: f"n_slope {r['n_slope']:.3f}; {_report_path(r, out)}"),
}


def run_bench(name: str, out: Path, options: BenchOptions, log: Log = print,
              track: Callable[[TrackedRun], Any] | None = None) -> dict[str, Any]:
    """``stride bench NAME`` (a registry name, else a data file): run it into ``out`` and log its table;
    ``track`` (e.g. an MLflow logger) receives what to record; the closing line is logged last."""
    if name not in BENCHES:
        _data_file(name)  # fails now, before the header, for a name that is neither registered nor a file
    bench = BENCHES.get(name, LDS)
    log(f"stride bench {name} ({bench.modes[int(options.quick)]}) -> {out}")
    result = bench.run(name, out, options, log)
    if bench.table is not None:
        log("\n" + bench.table(result))
    if track is not None:
        track(bench.tracked_run(result, out))
    log(bench.summary(result, out))
    return result
