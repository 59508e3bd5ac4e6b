"""Shared fixtures: isolated storage, a pre-migrated MLflow SQLite store, micro-profile resources."""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Nothing a test does may touch <repo>/.stride: storage and MLflow default into tmp_path. The
    environment is restored afterwards, also what ``cli.main`` sets for its child processes."""
    saved = dict(os.environ)
    monkeypatch.setenv("STRIDE_HOME", str(tmp_path / "store"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'unused-mlflow.db'}")
    for name in ("STRIDE_PROFILE", "DAGSTER_HOME", "STRIDE_TRACKING"):
        monkeypatch.delenv(name, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser of the report and Dagster UI tests (``make setup`` installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make setup` (it installs Debian's chromium with apt-get), "
                    "or `apt-get install chromium`")
    return found


@pytest.fixture(scope="module")
def one_torch_thread() -> Any:
    """One torch thread for tiny models: on a shared 2-core machine, 2-thread barriers stall 5-15x
    under contention, and tiny ops gain nothing from a second thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite DB migrated once per session (a fresh DB costs 3-6 s of Alembic)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path: Path, _mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def make_micro_resources(tmp_path: Path, mlflow_uri: str) -> dict[str, Any]:
    """The resources of the code location, on the micro profile, everything under tmp_path."""
    from stride_assets.resources import MlflowTracking, StrideResource

    return {
        "stride": StrideResource(profile="micro", storage_root=str(tmp_path / "store")),
        "mlflow": MlflowTracking(
            tracking_uri=mlflow_uri,
            experiment_name="stride-test",
            artifact_root=(tmp_path / "mlartifacts").as_uri(),
        ),
    }


@pytest.fixture
def micro_resources(tmp_path: Path, mlflow_uri: str) -> dict[str, Any]:
    return make_micro_resources(tmp_path, mlflow_uri)


def make_defs(resources: dict[str, Any], profile: str = "micro"):
    """The code location's definitions with the given resources (instead of the environment's)."""
    import dagster as dg

    from stride_assets.defs import build_defs

    return build_defs(profile, resources=resources, executor=dg.in_process_executor)


@dataclass
class MicroRun:
    """One materialization of the whole micro graph, shared by the tests that only read it.

    ``root`` holds ``store`` (the engine's artifacts), ``mlflow.db`` with ``mlartifacts`` and
    ``dagster_home`` (a persistent Dagster instance: reopen it with ``instance()``, or point a
    webserver's ``DAGSTER_HOME`` at it). Treat all of it as read-only."""

    root: Path
    mlflow_uri: str
    resources: dict[str, Any]
    cfg: Any
    results: list[Any] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def instance(self):
        """The run's Dagster instance, reopened (a context manager)."""
        import dagster as dg
        from dagster._core.instance.ref import InstanceRef

        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.dagster_home)))


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory, _mlflow_template_db: Path) -> MicroRun:
    """The micro profile's whole asset graph materialized once per session (about a minute on 2
    cores) into a persistent instance, its own store and its own MLflow SQLite store. Its
    environment is set here, as ``_isolated_env`` and ``mlflow_uri`` would for one test, and
    restored before any test runs."""
    import dagster as dg

    from stride_assets.orchestration import run_pipeline

    root = tmp_path_factory.mktemp("micro-run")
    db = root / "mlflow.db"
    shutil.copyfile(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    saved = dict(os.environ)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STRIDE_HOME", str(root / "store"))
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            for name in ("STRIDE_PROFILE", "DAGSTER_HOME", "STRIDE_TRACKING"):
                mp.delenv(name, raising=False)
            resources = make_micro_resources(root, uri)
            run = MicroRun(root=root, mlflow_uri=uri, resources=resources, cfg=resources["stride"].config())
            run.dagster_home.mkdir()
            # what a webserver on this DAGSTER_HOME reads; the tests' instance sets the same
            (run.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            with dg.instance_for_test(temp_dir=str(run.dagster_home)) as instance:
                run.results = run_pipeline(make_defs(resources), instance, run.cfg, log=lambda _: None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return run
