"""The ``stride`` command: run the pipeline through Dagster, attribute new texts, open the UIs.

``stride run`` executes the layer jobs over every shard and query batch in this process against the persistent Dagster
instance in ``<repo>/.stride/dagster_home``, so its runs show up later in ``stride ui``.
The profile and storage chosen here reach the resources through ``STRIDE_PROFILE`` and
``STRIDE_HOME`` (read by ``stride_assets.resources.build_resources``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
STRIDE_DIR = REPO_ROOT / ".stride"
DAGSTER_HOME = STRIDE_DIR / "dagster_home"
INSTANCE_TEMPLATE = REPO_ROOT / "resources" / "dagster.yaml"
HOST = "127.0.0.1"
DAGSTER_PORT = 3000
MLFLOW_PORT = 5000


class CliError(Exception):
    """A problem to report in one line, with a non-zero exit."""


def _apply_common(args: argparse.Namespace) -> None:
    """Hand --profile/--store to the resources (via the environment) and turn telemetry off."""
    if getattr(args, "profile", None):
        os.environ["STRIDE_PROFILE"] = args.profile
    if getattr(args, "store", None):
        os.environ["STRIDE_HOME"] = str(Path(args.store).expanduser().resolve())
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def prepare_dagster_home() -> Path:
    """An absolute DAGSTER_HOME holding the instance template (telemetry off, one run at a time)."""
    home = Path(os.environ.get("DAGSTER_HOME") or DAGSTER_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def storage_root() -> Path:
    from stride_assets.tracking import default_storage_root

    return Path(default_storage_root()).expanduser().resolve()


def tracking_uri() -> str:
    from stride_assets.tracking import default_tracking_uri

    return default_tracking_uri()


# --- stride run -------------------------------------------------------------------------------


class _ProgressHandler(logging.Handler):
    """Prints stage start/end (with seconds) and the engine's messages, without Dagster's noise."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)  # Dagster events (step start/end, checks) are DEBUG records
        from stride_assets.engine.pipeline import STAGES

        self._stages = set(STAGES)  # check steps report through their evaluation instead
        self._started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        from dagster._core.log_manager import get_log_record_metadata, has_log_record_metadata

        if not has_log_record_metadata(record):
            return
        meta = get_log_record_metadata(record)
        step = meta.get("step_key") or ""
        event = meta.get("dagster_event")
        if event is None:
            message = meta["orig_message"]
            if message.startswith("Dependencies for step"):
                if step in self._stages:
                    print(f"- {step} skipped (an upstream step or blocking check failed)", flush=True)
            elif record.levelno >= logging.INFO and step:
                print(f"  [{step}] {message}", flush=True)
            return
        kind = event.event_type_value
        if kind == "STEP_START" and step in self._stages:
            self._started[step] = time.monotonic()
            print(f"> {step} ...", flush=True)
        elif kind == "STEP_SUCCESS" and step in self._stages:
            seconds = time.monotonic() - self._started.get(step, time.monotonic())
            print(f"< {step} done in {seconds:.1f} s", flush=True)
        elif kind == "STEP_FAILURE":
            error = event.event_specific_data.error
            print(f"! {step} FAILED: {_root_cause(error) if error else meta['orig_message']}", flush=True)
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            status = "passed" if data.passed else f"FAILED ({data.severity.value.lower()})"
            print(f"  check {data.check_name} on {data.asset_key.to_user_string()}: {status}", flush=True)


def _progress_logger() -> Any:
    import dagster as dg

    @dg.logger(description="Concise stage progress for the stride CLI")
    def stride_progress(_init_context: Any) -> logging.Logger:
        logger = logging.Logger("stride", level=logging.DEBUG)
        logger.addHandler(_ProgressHandler())
        return logger

    return stride_progress


def _root_cause(error: Any) -> str:
    """The innermost error of a Dagster step failure (the engine's own exception, not the wrapper)."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()  # already "module.ClassName: message"


def _failure_messages(result: Any) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.step_failure_data.error
            messages.append(f"{event.step_key}: {_root_cause(error) if error else event.message}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            data = event.event_specific_data
            messages.append(f"check {data.check_name} on {data.asset_key.to_user_string()} failed")
        elif event.event_type_value == "RUN_FAILURE" and not messages:
            messages.append(event.message or "run failed")
    return messages


def cmd_run(args: argparse.Namespace) -> int:
    home = prepare_dagster_home()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import dagster as dg

    import definitions
    from stride_assets.engine import pipeline
    from stride_assets.engine.artifacts import Store

    from stride_assets.resources import build_resources

    build_resources()["stride"].config()  # a bad profile or override fails here, before any run starts
    store_root = storage_root()
    print(f"stride run: profile {os.environ.get('STRIDE_PROFILE', 'default')!r}, store {store_root}")
    print(f"Dagster instance: {home}")
    from stride_assets.orchestration import run_pipeline

    cfg = build_resources()["stride"].config()
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        # Only loggers named in the run config are used; every event still goes to the instance's event log.
        results = run_pipeline(definitions.defs(), instance, cfg, only_changed=args.incremental,
                               loggers={"progress": _progress_logger()}, run_config={"loggers": {"progress": {}}},
                               log=lambda m: print(m, flush=True))
    elapsed = time.monotonic() - started
    failed = [r for r in results if not r.success]
    if failed:
        print(f"\nstride run FAILED after {elapsed:.1f} s (Dagster run {failed[0].run_id}):", file=sys.stderr)
        for message in _failure_messages(failed[0]) or ["see the run's logs in `stride ui`"]:
            print(f"  {message}", file=sys.stderr)
        return 1
    print(f"\nstride run finished in {elapsed:.1f} s ({len(results)} Dagster runs)\n")
    print(pipeline.summary(cfg, Store(store_root)))
    print(
        f"\nOutputs: {store_root} (one folder per stage)\n"
        f"Dagster UI (runs, lineage, metadata): stride ui  ->  http://{HOST}:{DAGSTER_PORT}\n"
        f"MLflow UI (params, metrics, curves):  stride mlflow-ui  ->  http://{HOST}:{MLFLOW_PORT}"
    )
    return 0


# --- stride attribute ---------------------------------------------------------------------------


def cmd_attribute(args: argparse.Namespace) -> int:
    root = storage_root()
    if not root.is_dir():
        raise CliError(f"no stride store at {root}: run `stride run` first (or pass --store DIR)")
    import polars as pl

    from stride_assets.engine import pipeline
    from stride_assets.engine.artifacts import Store

    table = pipeline.attribute(list(args.texts), Store(root), top_k=args.top_k)
    flat = [pl.col(c).str.replace_all(r"\s+", " ").str.slice(0, 60) for c in ("query", "text")]
    with pl.Config(
        tbl_rows=-1,
        fmt_str_lengths=60,
        tbl_width_chars=220,
        tbl_formatting="ASCII_MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
    ):
        print(table.with_columns(flat))
    return 0


# --- stride bench ------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    import warnings

    from stride_assets.engine.evaluation import bench, report, suites

    # per-example gradients of GPT-2 under vmap take a slow (correct) path for CPU attention
    warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
    if args.name == "contamination":
        return _bench_contamination(args)
    if args.name == "incremental":
        return _bench_incremental(args)

    suite = suites.build(args.name, quick=args.quick, label=args.label, text=args.text, seed=args.seed,
                         stride_seeds=args.stride_seeds)
    specs = suite.specs
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")}
        unknown = wanted - {s.name for s in specs}
        if unknown:
            raise CliError(f"unknown or inapplicable methods {sorted(unknown)}; available: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in wanted]
    protocol = suite.protocol
    if args.removal_methods:
        protocol = replace(protocol, removal_methods=[m.strip() for m in args.removal_methods.split(",")])
    if args.removal_ks:
        protocol = replace(protocol, removal_ks=[int(k) for k in args.removal_ks.split(",")])
    out = Path(args.out).expanduser().resolve()
    print(f"stride bench {args.name} ({'quick' if args.quick else 'full'} protocol) -> {out}", flush=True)
    result = bench.run_benchmark(suite.task, specs, out, protocol, log=lambda m: print(m, flush=True),
                                 removal=not args.no_removal)
    print("\n" + report.table(result))
    return _finish_bench(args, report.log_to_mlflow, result, out, f"report: {out / 'report.json'}")


def _finish_bench(args: argparse.Namespace, log_to_mlflow, result: dict, out: Path, summary: str) -> int:
    """Every ``stride bench``: the MLflow run (unless --no-mlflow), then where the report is."""
    if not args.no_mlflow:
        run_id = log_to_mlflow(result, out, tracking_uri())
        print(f"\nMLflow run {run_id} (experiment stride-bench, {tracking_uri()})")
    print(summary)
    return 0


def _bench_contamination(args: argparse.Namespace) -> int:
    """``stride bench contamination``: recall of planted query copies per method (see contamination_bench)."""
    from stride_assets.engine.evaluation import contamination_bench

    out = Path(args.out).expanduser().resolve()
    print(f"stride bench contamination ({'quick' if args.quick else 'full'}) -> {out}", flush=True)
    scenario = contamination_bench.Scenario(seed=args.seed)
    result = contamination_bench.run(out, args.quick, scenario, log=lambda m: print(m, flush=True))
    print("\n" + contamination_bench.table(result))
    return _finish_bench(args, contamination_bench.log_to_mlflow, result, out,
                         f"report: {out / 'report.json'}; suspected leaks: {out / 'audit.md'}")


def _bench_incremental(args: argparse.Namespace) -> int:
    """``stride bench incremental``: appending 10% of the data vs a full re-attribution (see incremental_bench)."""
    from stride_assets.engine.evaluation import incremental_bench

    out = Path(args.out).expanduser().resolve()
    print(f"stride bench incremental ({'quick' if args.quick else 'full'}) -> {out}", flush=True)
    result = incremental_bench.run(out, quick=args.quick, log=lambda m: print(m, flush=True))
    return _finish_bench(args, incremental_bench.log_to_mlflow, result, out,
                         f"incremental_ratio {result['incremental_ratio']:.3f}; report: {out / 'report.json'}")


# --- stride ui / mlflow-ui ----------------------------------------------------------------------


def _exec(argv: list[str]) -> int:
    print(" ".join(argv), flush=True)
    os.execvp(argv[0], argv)
    return 1  # not reached


def cmd_ui(args: argparse.Namespace) -> int:
    prepare_dagster_home()
    os.chdir(REPO_ROOT)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    return _exec([dagster, "dev", "-w", "workspace.yaml", "-h", HOST, "-p", str(args.port)])


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from stride_assets.tracking import default_artifact_root, sqlite_path

    uri = tracking_uri()
    if db := sqlite_path(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = default_artifact_root(uri)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return _exec(
        [mlflow, "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(args.port)]
        + (["--default-artifact-root", artifacts] if artifacts else [])
    )


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stride",
        description="STRIDE training-data attribution as a Dagster pipeline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store_help = "storage root of the stage artifacts (default: $STRIDE_HOME or <repo>/.stride/store)"
    run = sub.add_parser("run", help="run the whole pipeline (every shard and query batch, as Dagster runs) in this process")
    run.add_argument("--profile", help="profile name in resources/profiles or a YAML path (default: default)")
    run.add_argument("--store", metavar="DIR", help=store_help)
    run.add_argument("--incremental", action="store_true",
                     help="only new or changed shards and query batches (and what depends on them)")
    run.set_defaults(func=cmd_run)

    attr = sub.add_parser("attribute", help="attribute new texts with the stored operators (no retraining)")
    attr.add_argument("texts", nargs="+", metavar="TEXT", help="query text(s)")
    attr.add_argument("--top-k", type=int, default=10, help="examples per query (default: 10)")
    attr.add_argument("--store", metavar="DIR", help=store_help)
    attr.set_defaults(func=cmd_attribute)

    b = sub.add_parser("bench", help="measure attribution quality (LDS against real retraining) on a benchmark")
    b.add_argument("name", metavar="NAME", help="digits-mlp, pydoc-gpt, contamination (recall of planted query copies; "
                   "takes --out, --quick, --seed, --no-mlflow), incremental (cost of appending 10%% of the data "
                   "vs a full re-attribution; --out, --quick, --no-mlflow), or a data file (with --label or --text)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (report.json, scores/, ...)")
    b.add_argument("--quick", action="store_true", help="reduced protocol for smoke tests")
    b.add_argument("--label", metavar="COL", help="label column of a tabular file (numeric features)")
    b.add_argument("--text", metavar="COL", help="text column of a text file")
    b.add_argument("--methods", help="comma-separated subset of methods (default: all applicable)")
    b.add_argument("--seed", type=int, default=0, help="data split seed (default: 0)")
    b.add_argument("--stride-seeds", type=int, default=1, help="repeat STRIDE with this many seeds (default: 1)")
    b.add_argument("--no-removal", action="store_true", help="skip the counterfactual-removal retrains")
    b.add_argument("--removal-methods", help="comma-separated methods for the removal test (default: all scored)")
    b.add_argument("--removal-ks", help="comma-separated k of the removal test (default: 10,50; quick: 10)")
    b.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    b.set_defaults(func=cmd_bench)

    ui = sub.add_parser("ui", help=f"the Dagster UI (dagster dev) on http://{HOST}:{DAGSTER_PORT}")
    ui.add_argument("--port", type=int, default=DAGSTER_PORT)
    ui.add_argument("--profile", help="profile for runs launched from the UI")
    ui.add_argument("--store", metavar="DIR", help=store_help)
    ui.set_defaults(func=cmd_ui)

    mlui = sub.add_parser("mlflow-ui", help=f"the MLflow UI on http://{HOST}:{MLFLOW_PORT}")
    mlui.add_argument("--port", type=int, default=MLFLOW_PORT)
    mlui.set_defaults(func=cmd_mlflow_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        print("stride: error: --top-k must be at least 1", file=sys.stderr)
        return 2
    _apply_common(args)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"stride: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # engine errors name the problem; show it without a traceback
        from stride_assets.engine.errors import StrideError

        if isinstance(exc, StrideError):
            print(f"stride: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
