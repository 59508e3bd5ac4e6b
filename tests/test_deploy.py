"""Scale-out: the executor chosen by STRIDE_EXECUTOR, the cluster instance profiles under
resources/cluster, and a real run of shard partitions with Dagster's multiprocess executor.

What runs here: executor selection, the instance YAMLs against Dagster's instance schema (and the
run launcher / compute log manager against their own schemas where dagster-k8s, dagster-docker
and dagster-aws are importable; skipped otherwise), and a multiprocess run on the micro profile.
Nothing here talks to Kubernetes, Docker, Postgres or S3.
"""

import importlib
import os
import re
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import class_from_code_pointer

from conftest import REPO_ROOT
from stride_assets.engine.errors import StrideConfigError
from stride_assets.executors import executor_from_env

CLUSTER = REPO_ROOT / "resources" / "cluster"
PROFILES = ["dagster.yaml", "dagster-docker.yaml"]


@pytest.fixture(autouse=True)
def _no_executor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIDE_EXECUTOR", raising=False)
    monkeypatch.delenv("STRIDE_MAX_CONCURRENT", raising=False)


def _executor_config(executor: dg.ExecutorDefinition) -> dict[str, Any]:
    resolved = executor.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    return resolved.value["config"] if resolved.value else {}


# --- executor_from_env -------------------------------------------------------------------------

def test_default_is_in_process() -> None:
    assert executor_from_env().name == "in_process"


def test_in_process_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIDE_EXECUTOR", "in_process")
    assert executor_from_env() is dg.in_process_executor


@pytest.mark.parametrize(("env", "expected"), [(None, 2), ("5", 5)])
def test_multiprocess_max_concurrent(monkeypatch: pytest.MonkeyPatch, env: str | None, expected: int) -> None:
    monkeypatch.setenv("STRIDE_EXECUTOR", "multiprocess")
    if env is not None:
        monkeypatch.setenv("STRIDE_MAX_CONCURRENT", env)
    executor = executor_from_env()
    assert executor.name == "multiprocess"
    assert _executor_config(executor)["max_concurrent"] == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_max_concurrent(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("STRIDE_EXECUTOR", "multiprocess")
    monkeypatch.setenv("STRIDE_MAX_CONCURRENT", bad)
    with pytest.raises(StrideConfigError, match="STRIDE_MAX_CONCURRENT"):
        executor_from_env()


def test_unknown_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIDE_EXECUTOR", "celery-ish")
    with pytest.raises(StrideConfigError, match="celery-ish.*in_process, multiprocess, docker, k8s"):
        executor_from_env()


@pytest.mark.parametrize(("name", "module", "package"), [("k8s", "dagster_k8s", "dagster-k8s"),
                                                         ("docker", "dagster_docker", "dagster-docker")])
def test_cluster_executor(monkeypatch: pytest.MonkeyPatch, name: str, module: str, package: str) -> None:
    """Without the cluster extra: an error naming the package; with it: the integration's executor."""
    monkeypatch.setenv("STRIDE_EXECUTOR", name)
    try:
        importlib.import_module(module)
    except ImportError:
        expected = re.escape(f"{package} package") + r".*pip install -e \.\[cluster\]"
        with pytest.raises(StrideConfigError, match=expected):
            executor_from_env()
        return
    assert executor_from_env().name == name
    monkeypatch.setenv("STRIDE_MAX_CONCURRENT", "7")
    assert _executor_config(executor_from_env())["max_concurrent"] == 7


def test_definitions_use_the_env_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    import definitions

    monkeypatch.setenv("STRIDE_EXECUTOR", "multiprocess")
    assert definitions.defs().resolve_job_def("stride_shard_job").executor_def.name == "multiprocess"


# --- the cluster instance profiles -------------------------------------------------------------

def _env_names(node: Any) -> set[str]:
    """Every NAME in an ``{env: NAME}`` of a loaded YAML."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_names(v) for v in node))
    return set()


def _raw(profile: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / profile).read_text())


def _set_env(monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    for name in _env_names(_raw(profile)):
        monkeypatch.setenv(name, "5432" if name.endswith("_PORT") else f"test-{name.lower()}")


@pytest.mark.parametrize("profile", PROFILES)
def test_cluster_instance_yaml_validates(monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    """The profile passes Dagster's own instance-config validation; its env vars resolve."""
    _set_env(monkeypatch, profile)
    config, instance_class = dagster_instance_config(str(CLUSTER), profile)
    assert instance_class is None
    assert config["telemetry"] == {"enabled": False}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 2
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    assert config["run_launcher"]["class"] in {"K8sRunLauncher", "DockerRunLauncher"}
    # Postgres storage, with every {env: ...} resolved (validation alone does not read the environment)
    from dagster._core.storage.config import pg_config

    pg = process_config(pg_config(), config["storage"]["postgres"])
    assert pg.success, pg.errors
    assert pg.value["postgres_db"]["hostname"] == "test-dagster_pg_host"
    assert pg.value["postgres_db"]["port"] == 5432
    # the queued run coordinator is in dagster itself: check its config against its class
    coordinator = config["run_coordinator"]
    klass = class_from_code_pointer(coordinator["module"], coordinator["class"])
    assert process_config(klass.config_type(), coordinator.get("config") or {}).success


def test_cluster_yaml_fails_without_its_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an unset DAGSTER_PG_HOST does not resolve."""
    _set_env(monkeypatch, "dagster.yaml")
    monkeypatch.delenv("DAGSTER_PG_HOST")
    from dagster._core.storage.config import pg_config

    config, _ = dagster_instance_config(str(CLUSTER), "dagster.yaml")
    assert not process_config(pg_config(), config["storage"]["postgres"]).success


@pytest.mark.parametrize(("profile", "key"), [(p, k) for p in PROFILES for k in ("run_launcher", "compute_logs")])
def test_cluster_classes_accept_their_config(monkeypatch: pytest.MonkeyPatch, profile: str, key: str) -> None:
    """Run launcher and compute log manager config against the integration's schema (needs `.[cluster]`)."""
    entry = _raw(profile)[key]
    pytest.importorskip(entry["module"], reason=f"{entry['module']} not installed (pip install -e .[cluster])")
    _set_env(monkeypatch, profile)
    klass = class_from_code_pointer(entry["module"], entry["class"])
    result = process_config(klass.config_type(), entry["config"])
    assert result.success, result.errors


@pytest.mark.parametrize("profile", PROFILES)
def test_cluster_readme_names_every_env_var(profile: str) -> None:
    readme = (CLUSTER / "README.md").read_text()
    assert not {name for name in _env_names(_raw(profile)) if name not in readme}


# --- a real multiprocess run -------------------------------------------------------------------

def stride_job_from_env(name: str) -> dg.JobDefinition:
    """A job of the code location as the environment configures it (executor, profile, storage)."""
    import definitions

    return definitions.defs().resolve_job_def(name)


def _reconstructable(name: str) -> Any:
    """``stride_job_from_env(name)``, rebuilt by each step's child process from this module."""
    return dg.build_reconstructable_job(__name__, stride_job_from_env.__name__, (name,),
                                        reconstructor_working_directory=str(Path(__file__).parent))


# the shard steps that need no base model: two child processes instead of four (about 2x faster)
SHARD_STEPS = ["training_corpus", "subset_design"]


@pytest.mark.timeout(300)
def test_shard_partition_runs_with_multiprocess_executor(tmp_path: Path, mlflow_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One shard partition of stride_shard_job through a persistent instance, each step in a child process."""
    monkeypatch.setenv("STRIDE_EXECUTOR", "multiprocess")
    monkeypatch.setenv("STRIDE_PROFILE", "micro")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions("shards", ["part-0000", "part-0001"])
        result = dg.execute_job(_reconstructable("stride_shard_job"), instance=instance,
                                tags={"dagster/partition": "part-0000"},
                                asset_selection=[dg.AssetKey(key) for key in SHARD_STEPS])
        assert result.success
        pids = {e.dagster_event.pid for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)}
        assert len(pids) == len(SHARD_STEPS) and os.getpid() not in pids  # one child process per step
        materialized = result.get_asset_materialization_events()
        assert sorted(e.asset_key.to_user_string() for e in materialized) == sorted(SHARD_STEPS)
        assert {e.partition for e in materialized} == {"part-0000"}
    store = tmp_path / "store"
    assert (store / "subset_design" / "part-0000" / "membership.parquet").is_file()
    assert not (store / "subset_design" / "part-0001").exists()
