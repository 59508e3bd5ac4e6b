"""What each ``stride`` subcommand does, one function each (``stride_assets.cli`` only parses arguments).

``run`` executes the layer jobs over every shard and query batch in this process against the persistent
Dagster instance in ``<repo>/.stride/dagster_home``, so its runs show up later in ``stride ui``.
The profile and storage reach the resources through ``STRIDE_PROFILE`` and ``STRIDE_HOME`` (read by
``stride_assets.resources.build_resources``). Each function returns the process exit status.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stride_assets.engine.config import StrideConfig
    from stride_assets.engine.evaluation.report import TrackedRun
    from stride_assets.engine.evaluation.suites import BenchOptions
    from stride_assets.engine.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
STRIDE_DIR = REPO_ROOT / ".stride"
DAGSTER_HOME = STRIDE_DIR / "dagster_home"
INSTANCE_TEMPLATE = REPO_ROOT / "resources" / "dagster.yaml"
HOST = "127.0.0.1"
DAGSTER_PORT = 3000
MLFLOW_PORT = 5000


class CliError(Exception):
    """A problem to report in one line, with a non-zero exit."""


def say(message: str) -> None:
    print(message, flush=True)


def default_dagster_home() -> Path:
    """``$DAGSTER_HOME``; else the repo's instance for the default store, and ``<store>/.dagster_home``
    for any other store (each store has its own instance, so their runs never mix)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    default_store = (STRIDE_DIR / "store").resolve()
    return DAGSTER_HOME if storage_root() == default_store else storage_root() / ".dagster_home"


def prepare_dagster_home() -> Path:
    """An absolute DAGSTER_HOME holding the instance template (telemetry off, one run at a time), bound to
    the profile and store of this process (``location.bind``)."""
    from stride_assets.location import bind
    from stride_assets.resources import profile_from_env

    home = default_dagster_home().expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    bind(home, profile_from_env(), storage_root())
    return home


def storage_root() -> Path:
    from stride_assets.tracking import default_storage_root

    return Path(default_storage_root()).expanduser().resolve()


def tracking_uri() -> str:
    from stride_assets.tracking import default_tracking_uri

    return default_tracking_uri()


def report_paths(cfg: StrideConfig, store: Store) -> list[Path]:
    """The HTML pages of a finished run that are in the store: one per query batch, then the curated outputs'."""
    from stride_assets.engine.shards import batch_names

    pages = [store.file("attribution_report", b) for b in batch_names(cfg)]
    return [p for p in pages + [store.file("curation_page"), store.file("contamination_page")] if p.exists()]


def run(only_changed: bool = False) -> int:
    """``stride run``: every layer job in order (or only what changed), with concise progress."""
    home = prepare_dagster_home()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import dagster as dg

    import definitions
    from stride_assets.engine import pipeline
    from stride_assets.engine.store import Store
    from stride_assets.resources import build_resources

    from stride_assets.engine.preflight import preflight

    cfg = build_resources()["stride"].config()  # a bad profile or override fails here, before any run starts
    store_root = storage_root()
    say(f"stride run: profile {os.environ.get('STRIDE_PROFILE', 'default')!r}, store {store_root}")
    # bad shards (K too large, duplicate ids, ...) and a run over the memory/disk budget fail here, before the
    # model trains; the predicted memory and disk of every stage are printed first
    sizes = preflight(cfg, store_root=store_root, log=say)
    say(f"corpus: {len(sizes)} shard(s), {sum(sizes.values())} training examples")
    say(f"Dagster instance: {home}")
    from stride_assets.orchestration import fail_dead_runs, run_pipeline
    from stride_assets.progress import failure_messages, progress_logger

    started = time.monotonic()
    store = Store(store_root)
    with store.lock(), dg.DagsterInstance.get() as instance:
        for path in store.remove_temporaries():
            say(f"removed {path} (left by a writer that was killed)")
        for run_id in fail_dead_runs(instance):
            say(f"marked Dagster run {run_id} failed: the stride run executing it was killed")
        # Only loggers named in the run config are used; every event still goes to the instance's event log.
        results = run_pipeline(definitions.defs(), instance, cfg, only_changed=only_changed,
                               loggers={"progress": progress_logger(instance, pipeline.stage_names(cfg), say)},
                               run_config={"loggers": {"progress": {}}}, store=store, log=say)
    elapsed = time.monotonic() - started
    failed = [r for r in results if not r.success]
    if failed:
        print(f"\nstride run FAILED after {elapsed:.1f} s (Dagster run {failed[0].run_id}):", file=sys.stderr)
        for message in failure_messages(failed[0]) or ["see the run's logs in `stride ui`"]:
            print(f"  {message}", file=sys.stderr)
        return 1
    print(f"\nstride run finished in {elapsed:.1f} s ({len(results)} Dagster runs)\n")
    print(pipeline.summary(cfg, store))
    if reports := report_paths(cfg, store):
        print("\nReports (self-contained HTML, open in a browser):\n" + "\n".join(f"  {p}" for p in reports))
    if untracked := store.untracked_runs():
        print(f"\n{len(untracked)} stage run(s) are UNTRACKED (MLflow was unreachable): `stride mlflow-sync` "
              "logs them once it is back")
    print(
        f"\nOutputs: {store_root} (one folder per stage)\n"
        f"Dagster UI (runs, lineage, metadata): stride ui  ->  http://{HOST}:{DAGSTER_PORT}\n"
        f"MLflow UI (params, metrics, curves):  stride mlflow-ui  ->  http://{HOST}:{MLFLOW_PORT}"
    )
    return 0


def attribute(texts: Sequence[str], top_k: int = 10, tokens: int = 0) -> int:
    """``stride attribute``: the top examples of new texts, from the stored operators (no retraining);
    with ``tokens``, also the ``tokens`` query tokens each example helps most."""
    root = storage_root()
    if not root.is_dir():
        raise CliError(f"no stride store at {root}: run `stride run` first (or pass --store DIR)")
    import polars as pl

    from stride_assets.engine import pipeline
    from stride_assets.engine.store import Store

    from stride_assets.engine.formats import parse_query_arg

    queries = [parse_query_arg(t) for t in texts]
    if tokens:
        from stride_assets.engine.token_attribution import attribute_tokens

        print_tokens(attribute_tokens(queries, Store(root), top_k=top_k), tokens)
        return 0
    table = pipeline.attribute(queries, Store(root), top_k=top_k)
    flat = [pl.col(c).str.replace_all(r"\s+", " ").str.slice(0, 60) for c in ("query", "text")]
    with pl.Config(tbl_rows=-1, fmt_str_lengths=60, tbl_width_chars=220, tbl_formatting="ASCII_MARKDOWN",
                   tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True):
        print(table.with_columns(flat))
    return 0


def print_tokens(found, n: int) -> None:
    """Each query's top examples, each with the query's ``n`` tokens it helps most [bracketed] and their scores."""
    import polars as pl

    from stride_assets.engine.token_attribution import bracketed

    def flat(text: str, width: int = 70) -> str:
        return " ".join(text.split())[:width]

    for query in dict.fromkeys(found.top["query"].to_list()):
        print(f"\nquery: {flat(query, 200)}")
        for row in found.top.filter(pl.col("query") == query).iter_rows(named=True):
            best = (found.tokens.filter((pl.col("query") == query) & (pl.col("rank") == row["rank"]))
                    .sort("token_score", descending=True).head(n))
            print(f"  #{row['rank']} {row['example_id']}  score {row['score']:.4g}  {flat(row['text'])!r}")
            print(f"     helps most: {flat(bracketed(found.texts[query], best['position'].to_list()), 200)}")
            print("     " + "  ".join(f"{t.strip() or repr(t)!s}: {v:+.3g}" for t, v in
                                      zip(best["token"].to_list(), best["token_score"].to_list())))
    if found.top.is_empty():
        print("no example has a positive score on these queries")


def mlflow_tracker(uri: str) -> Callable[[TrackedRun], str]:
    """The callback that logs a benchmark's ``TrackedRun`` as an MLflow run and says where it went."""

    def track(run: TrackedRun) -> str:
        from stride_assets.tracking import log_bench

        run_id = log_bench(run, uri)
        print(f"\nMLflow run {run_id} (experiment stride-bench, {uri})")
        return run_id

    return track


def bench(name: str, out: str | Path, options: BenchOptions, mlflow: bool = True) -> int:
    """``stride bench NAME``: a benchmark of the suites registry (or a data file), logged to MLflow."""
    import warnings

    from stride_assets.engine.evaluation.suites import run_bench

    # per-example gradients of GPT-2 under vmap take a slow (correct) path for CPU attention
    warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
    run_bench(name, Path(out).expanduser().resolve(), options, log=say,
              track=mlflow_tracker(tracking_uri()) if mlflow else None)
    return 0


def make_model(name: str, out: str | Path, layers: int | None = None, train_steps: int = 0, seed: int = 0) -> int:
    """``stride make-model NAME``: a real architecture (``engine.architectures``) with weights made here, its
    tokenizer learned on the profile's corpus, saved into OUT for ``model.path``."""
    from stride_assets.engine import architectures
    from stride_assets.engine.config import load_config
    from stride_assets.engine.corpus import load_passages
    from stride_assets.resources import profile_from_env

    cfg = load_config(profile_from_env())
    texts = load_passages(cfg.corpus)["text"].to_list()
    say(f"{name}: {architectures.param_count(name, layers):,} parameters; tokenizer on {len(texts)} passages")
    path = architectures.build(name, Path(out).expanduser().resolve(), texts, layers=layers, seed=seed,
                               train_steps=train_steps, max_length=cfg.model.max_length, log=say)
    say(f"wrote {path}: set model.path to it (operators.form: head keeps operators r x d_model)")
    return 0


def _exec(argv: list[str]) -> int:
    say(" ".join(argv))
    os.execvp(argv[0], argv)
    return 1  # not reached


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def dagster_ui(port: int = DAGSTER_PORT) -> int:
    """``stride ui``: ``dagster dev`` on the repo's workspace, bound to loopback."""
    prepare_dagster_home()
    os.chdir(REPO_ROOT)
    return _exec([_tool("dagster"), "dev", "-w", "workspace.yaml", "-h", HOST, "-p", str(port)])


def mlflow_ui(port: int = MLFLOW_PORT) -> int:
    """``stride mlflow-ui``: the MLflow UI on the tracking store, bound to loopback."""
    from stride_assets.tracking import default_artifact_root, sqlite_path

    uri = tracking_uri()
    if db := sqlite_path(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = default_artifact_root(uri)
    return _exec([_tool("mlflow"), "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]
                 + (["--default-artifact-root", artifacts] if artifacts else []))


def mlflow_sync() -> int:
    """``stride mlflow-sync``: log the stage runs kept while MLflow was unreachable, then forget them."""
    from stride_assets.engine.store import Store
    from stride_assets.tracking import default_artifact_root, log_pending

    pending = Store(storage_root()).untracked_runs()
    if not pending:
        say(f"no untracked runs in {storage_root()}")
        return 0
    uri = tracking_uri()
    ids = log_pending(pending, uri, default_artifact_root(uri))
    say(f"logged {len(ids)} untracked run(s) to {uri}")
    return 0
