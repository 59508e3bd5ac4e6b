"""Keeping current under the real ``dagster-daemon`` (not the testing APIs): on a temporary instance
with the micro settings and a folder of shard files, `stride run` attributes the corpus, then the
daemon runs the code location's own sensors. Dropping a shard file and editing one each lead to
exactly the runs that change needs (the shard's operators, its measurement block, the batch's
recovery, one curation), and the curated dataset changes once per change. With
``attribution.method: ekfac`` a dropped shard refits the (unpartitioned) influence factors on every
shard, then re-scores the query batch and curates once.

Slow (each run is a subprocess that loads the code location): about 4-6 minutes on 2 cores for the
STRIDE test, about 4 for the EK-FAC one (one change only).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from stride_assets.engine.config import CorpusConfig
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.store import Store

REPO = Path(__file__).resolve().parents[1]
PHASE_TIMEOUT = 480  # seconds for one change to be curated
SETTLE = 30  # seconds without new runs after the curated dataset changed: 2+ ticks of each sensor
CURATION = frozenset({"curated_dataset", "selected_dataset", "contamination_report", "curation_report"})
RECOVERY = frozenset({"influence_scores", "attribution_report"})  # a batch's scores and their page: one run

pytestmark = pytest.mark.slow


def _runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return sorted(instance.get_runs(), key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def _what(run: dg.DagsterRun) -> tuple[frozenset[str] | str, str | None]:
    """(the assets an automation run selected, or the job a sensor started; the partition)."""
    assets = frozenset(k.to_user_string() for k in (run.asset_selection or ()))
    return assets or run.job_name, run.tags.get("dagster/partition")


def _version(store: Path) -> str | None:
    pointer = store / "curated_dataset" / "current.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def _busy(instance: dg.DagsterInstance) -> bool:
    return any(not r.is_finished for r in instance.get_runs())


def _await_change(instance: dg.DagsterInstance, store: Path, before: str | None, log: Path) -> float:
    """Seconds until the curated version changed and nothing is running or queued any more for SETTLE s."""
    start = time.monotonic()
    quiet_since = None
    while time.monotonic() - start < PHASE_TIMEOUT:
        time.sleep(2)
        if _version(store) != before and not _busy(instance):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= SETTLE:
                return quiet_since - start
        else:
            quiet_since = None
    pytest.fail(f"no curated refresh within {PHASE_TIMEOUT} s; daemon log:\n{log.read_text()[-4000:]}")


def _expected(shard: str) -> list[tuple[frozenset[str] | str, str | None]]:
    return [("stride_shard_job", shard),  # started by corpus_sensor; the rest by the automation sensor
            (frozenset({"perturbation_matrix"}), f"default|{shard}"),
            (RECOVERY, "default"),
            (CURATION, None)]


@dataclass
class Corpus:
    """The shard folder, the store and the passages the shards are cut from."""
    passages: pl.DataFrame
    data: Path
    store: Path


def _attributed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sections: dict) -> Corpus:
    """Shards a and b (80 passages each) as files, the micro profile on that folder (``sections``
    override profile sections), the environment the daemon reads, and a finished `stride run`."""
    passages = load_passages(CorpusConfig(chunk_chars=300, max_examples=200)).select("text")
    data, store, home = tmp_path / "shards", tmp_path / "store", tmp_path / "home"
    data.mkdir()
    home.mkdir()
    passages[:80].write_parquet(data / "a.parquet")
    passages[80:160].write_parquet(data / "b.parquet")
    profile = yaml.safe_load((REPO / "resources" / "profiles" / "micro.yaml").read_text())
    profile["corpus"].update(source="files", paths=[str(data)], max_examples=None)
    profile.update(sections)
    (tmp_path / "files.yaml").write_text(yaml.safe_dump(profile))
    shutil.copyfile(REPO / "resources" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {"DAGSTER_HOME": str(home), "STRIDE_PROFILE": str(tmp_path / "files.yaml"),
                       "STRIDE_HOME": str(store), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    first = subprocess.run([sys.executable, "-m", "stride_assets.cli", "run"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return Corpus(passages, data, store)


@contextmanager
def _daemon(tmp_path: Path) -> Iterator[tuple[dg.DagsterInstance, Path]]:
    """The real ``dagster-daemon`` on the workspace, and the instance; asserts that its first ticks on
    the unchanged corpus start nothing."""
    log = tmp_path / "daemon.log"
    daemon_bin = Path(sys.executable).with_name("dagster-daemon")
    with log.open("w") as out:
        daemon = subprocess.Popen([str(daemon_bin), "run", "-w", str(REPO / "workspace.yaml")], cwd=REPO,
                                  stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        with dg.DagsterInstance.get() as instance:
            known = len(instance.get_runs())
            time.sleep(SETTLE)  # the daemon's first ticks on an unchanged corpus start nothing
            assert len(instance.get_runs()) == known, [_what(r) for r in _runs(instance)[known:]]
            yield instance, log
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def _scores_cover(store: Path, shard: str) -> int:
    """How many of ``shard``'s training examples have a score in influence_scores[default]."""
    scores = pl.read_parquet(store / "influence_scores" / "default" / "scores.parquet")
    train = pl.read_parquet(store / "training_corpus" / shard / "train.parquet")
    return scores.join(train, on="example_id").select("example_id").n_unique()


def test_daemon_attributes_a_dropped_and_an_edited_shard(tmp_path: Path, mlflow_uri: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _attributed(tmp_path, monkeypatch)
    passages, data, store = corpus.passages, corpus.data, corpus.store
    with _daemon(tmp_path) as (instance, log):
        known = len(instance.get_runs())
        seconds = {}
        for change, shard in (("drop", "c"), ("edit", "b")):
            before = _version(store)
            if change == "drop":
                passages[160:180].write_parquet(data / "c.parquet")
            else:
                passages[100:180].write_parquet(data / "b.parquet")
            seconds[change] = _await_change(instance, store, before, log)
            new = _runs(instance)[known:]
            known += len(new)
            assert [_what(r) for r in new] == _expected(shard), change
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in new), change
        assert _scores_cover(store, "c")
        print(f"drop-to-fresh seconds under the daemon: {seconds}")


def test_daemon_refits_ekfac_factors_for_a_dropped_shard(tmp_path: Path, mlflow_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``attribution.method: ekfac`` the corpus sensor's shard job builds the dropped shard's
    training_corpus block (no STRIDE stage), then the automation refits the factors on every shard,
    re-scores the query batch and curates once; every example of shard c gets scores."""
    corpus = _attributed(tmp_path, monkeypatch, attribution={"method": "ekfac"})
    store = corpus.store
    fitted = Store(store).read_args("influence_factors")
    assert fitted["shards"] == ["a", "b"]
    with _daemon(tmp_path) as (instance, log):
        known = len(instance.get_runs())
        before = _version(store)
        corpus.passages[160:180].write_parquet(corpus.data / "c.parquet")
        seconds = _await_change(instance, store, before, log)
        new = _runs(instance)[known:]
        assert [_what(r) for r in new] == [("stride_shard_job", "c"),  # the corpus sensor
                                           (frozenset({"influence_factors"}), None),  # the automation sensor
                                           (RECOVERY, "default"),
                                           (CURATION, None)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in new)
        refitted = Store(store).read_args("influence_factors")
        assert refitted["shards"] == ["a", "b", "c"] and refitted["n"] > fitted["n"]
        assert _scores_cover(store, "c") == pl.read_parquet(store / "training_corpus" / "c" / "train.parquet").height
        print(f"ekfac drop-to-fresh seconds under the daemon: {seconds}")
