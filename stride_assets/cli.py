"""The ``stride`` command: run the pipeline through Dagster, attribute new texts, benchmark, open the UIs.

Argument parsing only: each subcommand calls one function of ``stride_assets.commands``; ``stride bench``
runs the benchmarks registered in ``stride_assets.engine.evaluation.suites.BENCHES``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stride_assets import commands
from stride_assets.commands import DAGSTER_PORT, HOST, MLFLOW_PORT, CliError, prepare_dagster_home

__all__ = ["main", "build_parser", "prepare_dagster_home", "CliError"]


def _apply_common(args: argparse.Namespace) -> None:
    """Hand --profile/--store to the resources (via the environment) and turn telemetry off."""
    if getattr(args, "profile", None):
        os.environ["STRIDE_PROFILE"] = args.profile
    if getattr(args, "store", None):
        os.environ["STRIDE_HOME"] = str(Path(args.store).expanduser().resolve())
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def cmd_run(args: argparse.Namespace) -> int:
    if args.no_mlflow:
        os.environ["STRIDE_TRACKING"] = "off"
    return commands.run(only_changed=args.incremental)


def cmd_attribute(args: argparse.Namespace) -> int:
    return commands.attribute(args.texts, top_k=args.top_k, tokens=args.tokens)


def cmd_bench(args: argparse.Namespace) -> int:
    from stride_assets.engine.evaluation.suites import BenchOptions

    options = BenchOptions(quick=args.quick, seed=args.seed, label=args.label, text=args.text,
                           stride_seeds=args.stride_seeds, methods=args.methods, removal=not args.no_removal,
                           removal_methods=args.removal_methods, removal_ks=args.removal_ks,
                           leave_out=args.leave_out, leave_out_fraction=args.leave_out_fraction,
                           scenario="hard" if args.hard else "easy", resume=args.resume, calibrate=args.calibrate)
    return commands.bench(args.name, args.out, options, mlflow=not args.no_mlflow)


def cmd_make_model(args: argparse.Namespace) -> int:
    return commands.make_model(args.name, args.out, layers=args.layers, train_steps=args.train_steps, seed=args.seed)


def cmd_ui(args: argparse.Namespace) -> int:
    return commands.dagster_ui(args.port)


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    return commands.mlflow_ui(args.port)


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    return commands.mlflow_sync()


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",")]


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",")]


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
    run.add_argument("--no-mlflow", action="store_true", help="do not track the run in MLflow (STRIDE_TRACKING=off)")
    run.set_defaults(func=cmd_run)

    attr = sub.add_parser("attribute", help="attribute new texts with the stored operators (no retraining)")
    attr.add_argument("texts", nargs="+", metavar="TEXT", help="query text(s)")
    attr.add_argument("--top-k", type=int, default=10, help="examples per query (default: 10)")
    attr.add_argument("--tokens", type=int, nargs="?", const=3, default=0, metavar="N",
                      help="also show the N query tokens each example helps most, with per-token scores that "
                           "average to its score (default N: 3)")
    attr.add_argument("--store", metavar="DIR", help=store_help)
    attr.set_defaults(func=cmd_attribute)

    b = sub.add_parser("bench", help="measure attribution quality (LDS against real retraining) on a benchmark")
    b.add_argument("name", metavar="NAME", help="digits-mlp, breast-cancer-mlp, wine-mlp (scikit-learn's bundled "
                   "tables), pydoc-gpt, numpy-docs-gpt (the installed numpy's docstrings), contamination (recall of "
                   "planted query copies; takes --out, --quick, --seed, --no-mlflow), incremental (cost of appending 10%% of the data "
                   "vs a full re-attribution; --out, --quick, --no-mlflow), or a data file (with --label or --text)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (report.json, scores/, ...)")
    b.add_argument("--quick", action="store_true", help="reduced protocol for smoke tests (and, for LM tasks and "
                   "data files, a smaller training set and model)")
    b.add_argument("--label", metavar="COL", help="label column of a tabular file (numeric features)")
    b.add_argument("--text", metavar="COL", help="text column of a text file")
    b.add_argument("--methods", type=_names, help="comma-separated subset of methods (default: all applicable)")
    b.add_argument("--seed", type=int, default=0, help="data split seed (default: 0)")
    b.add_argument("--stride-seeds", type=int, default=1, help="repeat STRIDE with this many seeds (default: 1)")
    b.add_argument("--no-removal", action="store_true", help="skip the counterfactual-removal retrains")
    b.add_argument("--resume", action="store_true",
                   help="skip methods that OUT's report already has on the same protocol (retrains are always reused)")
    b.add_argument("--removal-methods", type=_names,
                   help="comma-separated methods for the removal test (default: all scored)")
    b.add_argument("--removal-ks", type=_ints, help="comma-separated k of the removal test (default: 10,50; quick: 10)")
    b.add_argument("--leave-out", type=int, nargs="?", const=0, metavar="M",
                   help="also score the leave-a-few-out protocol (as Bergson's validate): M retrains, each "
                        "without a block of the data (default M: 32; quick: 12)")
    b.add_argument("--leave-out-fraction", type=float, metavar="F",
                   help="share of the training set each leave-out retrain drops (default: 0.05; implies --leave-out)")
    b.add_argument("--calibrate", action="store_true",
                   help="also score every method with per-example gains fitted on the validation draw's retrains "
                   "(rows NAME_calibrated; evaluation.calibration)")
    b.add_argument("--hard", action="store_true",
                   help="contamination: the hard scenario (paraphrases and partial copies inside unrelated "
                        "passages, 5%% of the queries each, beside 5%% exact copies)")
    b.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    b.set_defaults(func=cmd_bench)

    mk = sub.add_parser("make-model", help="build a real architecture (random or briefly trained weights) into a "
                        "folder for model.path")
    mk.add_argument("name", metavar="NAME", help="gpt2-124m or qwen2.5-0.5b (engine.architectures.ARCHITECTURES)")
    mk.add_argument("--out", required=True, metavar="DIR", help="folder to write (save_pretrained: model + tokenizer)")
    mk.add_argument("--layers", type=int, help="decoder layers (default: the published depth)")
    mk.add_argument("--train-steps", type=int, default=0, help="AdamW steps on the profile's corpus (default: 0, "
                    "random init)")
    mk.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    mk.add_argument("--profile", help="profile whose corpus trains the tokenizer (default: default)")
    mk.set_defaults(func=cmd_make_model)

    ui = sub.add_parser("ui", help=f"the Dagster UI (dagster dev) on http://{HOST}:{DAGSTER_PORT}")
    ui.add_argument("--port", type=int, default=DAGSTER_PORT)
    ui.add_argument("--profile", help="profile for runs launched from the UI")
    ui.add_argument("--store", metavar="DIR", help=store_help)
    ui.set_defaults(func=cmd_ui)

    mlui = sub.add_parser("mlflow-ui", help=f"the MLflow UI on http://{HOST}:{MLFLOW_PORT}")
    mlui.add_argument("--port", type=int, default=MLFLOW_PORT)
    mlui.set_defaults(func=cmd_mlflow_ui)

    sync = sub.add_parser("mlflow-sync", help="log the runs kept while MLflow was unreachable")
    sync.add_argument("--store", metavar="DIR", help=store_help)
    sync.set_defaults(func=cmd_mlflow_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        print("stride: error: --top-k must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "tokens", 0) < 0:
        print("stride: error: --tokens must be at least 1", file=sys.stderr)
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
