"""Faults with the real CLI and Dagster instance: a `stride run` killed with SIGKILL mid-stage, a second
`stride run` on the same store while the first runs. Nothing half-written is used, the dead run does
not stay STARTED, and the rerun resumes without retraining what was finished."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "STRIDE_TRACKING": "off", "OMP_NUM_THREADS": "1"}


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stride_assets.cli", "run", "--profile", "micro", "--store",
                             str(tmp_path / "store"), *extra], cwd=REPO, env=_env(tmp_path), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _until(proc: subprocess.Popen, marker: str) -> str:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"{marker!r} never printed:\n{''.join(seen)[-3000:]}")


KILL_AT = {  # stage -> (the job of its run, the partition of its first block)
    "base_model": ("stride_model_job", None),
    "steering_operators": ("stride_shard_job", "part-0000"),
    "perturbation_matrix": ("stride_measure_job", "default|part-0000"),
    "influence_scores": ("stride_recovery_job", "default"),
}


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_killed_run_is_marked_failed_and_the_rerun_resumes(stage: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    job, partition = KILL_AT[stage]
    first = _start(tmp_path)
    _until(first, f"> {stage} ...")  # the stage is running: kill it there
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    store = tmp_path / "store"
    leftover = store / "steering_operators" / ".part-0000.abc123.tmp"  # what a killed atomic write leaves
    leftover.mkdir(parents=True, exist_ok=True)

    rerun = subprocess.run([sys.executable, "-m", "stride_assets.cli", "run", "--profile", "micro", "--store",
                            str(store), "--incremental"], cwd=REPO, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "marked Dagster run" in rerun.stdout and f"removed {leftover}" in rerun.stdout
    assert not leftover.exists()
    assert ("run stride_model_job" in rerun.stdout) == (stage == "base_model")  # a finished model is not retrained
    assert f"run {job}" + (f" [{partition}]" if partition else "") in rerun.stdout, rerun.stdout  # done again
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert not [r for r in runs if not r.is_finished]
        killed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        assert len(killed) == 1 and killed[0].job_name == job
        assert killed[0].tags.get("dagster/partition") == partition
    assert (store / "curated_dataset" / "current.json").is_file()


def test_a_second_writer_on_the_same_store_is_refused(tmp_path: Path) -> None:
    from stride_assets.engine.store import Store

    with Store(tmp_path / "store").lock():  # as a running `stride run` holds it
        second = subprocess.run([sys.executable, "-m", "stride_assets.cli", "run", "--profile", "micro", "--store",
                                 str(tmp_path / "store")], cwd=REPO, env=_env(tmp_path), capture_output=True,
                                text=True, timeout=300)
    assert second.returncode == 1 and "is in use by another stride process" in second.stderr, second.stderr
    assert f"pid {os.getpid()}" in second.stderr
    assert not (tmp_path / "store" / "base_model").exists()  # nothing was written


def _write_versions(args: tuple[str, int]) -> None:
    from stride_assets.engine.artifacts import atomic_dir

    target, writer = args
    for i in range(400):
        with atomic_dir(Path(target)) as tmp:
            for part in range(3):
                (tmp / f"part{part}.txt").write_text(f"{writer}:{i}")


def test_concurrent_writers_of_one_folder_leave_one_complete_version(tmp_path: Path) -> None:
    import multiprocessing

    target = tmp_path / "model"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_write_versions, [(str(target), 0), (str(target), 1)])
    contents = {p.read_text() for p in target.iterdir()}
    assert len(contents) == 1 and sorted(p.name for p in target.iterdir()) == ["part0.txt", "part1.txt", "part2.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or old folders left
