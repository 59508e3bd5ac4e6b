"""The leave-a-few-out LDS protocol (bench.LeaveOut) on a planted task whose true influence is known."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from stride_assets.engine.evaluation import report as report_mod
from stride_assets.engine.evaluation.bench import LeaveOut, MethodSpec, Protocol, leave_out_subsets, run_benchmark
from stride_assets.engine.evaluation.methods import METHODS
from stride_assets.engine.evaluation.methods.base import MethodResult
from stride_assets.engine.evaluation.task import Trained


@dataclass
class Fit:
    kept: np.ndarray  # (n,) bool: the examples this "model" was trained on
    seed: int


class AdditiveTask:
    """Query q's loss after training on S is exactly 1 - sum_{i in S} w[q, i], plus a small noise
    drawn from (seed, S): the true attribution of example i to query q is w[q, i]."""

    name = "additive"
    kind = "classifier"

    def __init__(self, n: int = 60, queries: int = 8, noise: float = 0.3):
        rng = np.random.default_rng(0)
        self.w = {s: rng.normal(size=(queries, n)) for s in ("val", "test")}
        self.noise = noise
        self.example_ids = [f"ex{i}" for i in range(n)]
        self.query_ids = {s: [f"{s}{q}" for q in range(queries)] for s in ("val", "test")}
        self.retrained: list[int] = []  # subsets retrained per call

    @property
    def n(self) -> int:
        return len(self.example_ids)

    def train(self, indices=None, seed=0, checkpoints=0) -> Trained:
        kept = np.ones(self.n, dtype=bool) if indices is None else np.isin(np.arange(self.n), indices)
        return Trained(Fit(kept, seed))

    def query_losses(self, model: Fit, split: str = "test") -> np.ndarray:
        key = int.from_bytes(hashlib.sha256(np.packbits(model.kept).tobytes()).digest()[:8], "little")
        noise = np.random.default_rng([model.seed, key]).normal(size=len(self.query_ids[split]))
        return 1.0 - self.w[split] @ model.kept + self.noise * noise

    def retrain_losses(self, subsets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        self.retrained.append(len(subsets))
        fits = [Fit(np.asarray(s, dtype=bool), seed) for s in subsets]
        return {split: np.stack([self.query_losses(f, split) for f in fits]) for split in self.query_ids}


class Planted:
    """A method that returns ``sign`` times the planted influence (plus ``blur`` noise)."""

    def __init__(self, sign: float = 1.0, blur: float = 0.0):
        self.sign, self.blur = sign, blur

    def cache(self, task, trained) -> None:
        self.task = task

    def attribute(self, split: str, **option) -> MethodResult:
        w = self.task.w[split]
        scores = self.sign * w + self.blur * np.random.default_rng(1).normal(size=w.shape)
        return MethodResult(scores, 0.0, 0.0, option)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "oracle", lambda: Planted(1.0))
    monkeypatch.setitem(METHODS, "reversed", lambda: Planted(-1.0))
    monkeypatch.setitem(METHODS, "blurred", lambda: Planted(1.0, blur=3.0))


SMALL = Protocol(m=8, m_val=4, noise_subsets=3, leave_out=LeaveOut(m=10, fraction=0.1, noise_subsets=5))
QUIET = {"log": lambda _: None, "removal": False}


def test_leave_out_subsets_drop_disjoint_blocks_of_the_fraction_deterministically() -> None:
    kept = leave_out_subsets(100, 10, 0.05, seed=3)
    assert kept.shape == (10, 100) and ((~kept).sum(1) == 5).all()
    assert (~kept).sum(0).max() == 1  # m * fraction <= 1: no example left out twice
    assert np.array_equal(kept, leave_out_subsets(100, 10, 0.05, seed=3))
    assert not np.array_equal(kept, leave_out_subsets(100, 10, 0.05, seed=4))
    more = leave_out_subsets(100, 50, 0.05, seed=3)  # 2.5 passes over the data
    assert ((~more).sum(1) == 5).all() and (~more[:20]).sum(0).max() == 1 and (~more).sum(0).max() <= 3
    assert ((~leave_out_subsets(10, 3, 0.01, seed=0)).sum(1) == 1).all()  # at least one example
    with pytest.raises(ValueError):
        leave_out_subsets(10, 3, 1.0, seed=0)


def test_leave_out_lds_ranks_the_planted_influence(tmp_path: Path, planted: None) -> None:
    task = AdditiveTask()
    specs = [MethodSpec("oracle"), MethodSpec("reversed"), MethodSpec("blurred")]
    report = run_benchmark(task, specs, tmp_path, SMALL, **QUIET)

    lo = {name: report[name]["leave_out"] for name in ("oracle", "reversed", "blurred")}
    # removing the examples that help q most must raise q's loss most: the sign of leave-out is right
    assert lo["oracle"]["lds_mean"] > 0.8 and lo["reversed"]["lds_mean"] < -0.8
    assert 0.0 < lo["blurred"]["lds_mean"] < lo["oracle"]["lds_mean"]  # a noisy estimate ranks below
    assert lo["oracle"]["n_queries"] == 8 and lo["oracle"]["n_nan"] == 0
    assert report["oracle"]["lds_mean"] > 0.8  # the halves still scored as before
    ceiling = report["noise_ceiling_leave_out"]
    assert ceiling["subsets"] == 5 and ceiling["left_out"] == 6 and 0.5 < ceiling["lds_mean"] <= 1.0
    # a block of 6 examples with w ~ N(0, 1) moves a query's loss by |N(0, 6)|, about 2 on average
    assert ceiling["mean_abs_loss_change"] > 1.0
    assert report["protocol"]["leave_out"] == {"m": 10, "fraction": 0.1, "seed": 3000, "noise_subsets": 5}
    assert json.loads((tmp_path / "report.json").read_text()) == report

    text = report_mod.table(report)
    assert "leave-out LDS" in text and "leave-out: m=10" in text
    metrics = report_mod.tracked_run(report, tmp_path).metrics
    assert metrics["oracle.leave_out.lds_mean"] == lo["oracle"]["lds_mean"] and "noise_ceiling_leave_out" in metrics


def test_leave_out_reuses_retrains_and_scores_earlier_methods_from_their_stored_scores(
        tmp_path: Path, planted: None) -> None:
    task = AdditiveTask()
    halves_only = Protocol(m=8, m_val=4, noise_subsets=3)
    first = run_benchmark(task, [MethodSpec("oracle")], tmp_path, halves_only, **QUIET)
    assert "leave_out" not in first["oracle"] and "noise_ceiling_leave_out" not in first
    assert "leave-out" not in report_mod.table(first)

    task.retrained.clear()
    second = run_benchmark(task, [MethodSpec("reversed")], tmp_path, SMALL, **QUIET)
    assert task.retrained == [10, 5]  # only the leave-out retrains (and its noise ceiling) are new
    assert second["oracle"]["leave_out"]["lds_mean"] > 0.8  # from scores/oracle.parquet
    assert second["reversed"]["leave_out"]["lds_mean"] < -0.8

    task.retrained.clear()
    other = LeaveOut(m=10, fraction=0.1, seed=1, noise_subsets=5)
    third = run_benchmark(task, [MethodSpec("blurred")], tmp_path,
                          Protocol(m=8, m_val=4, noise_subsets=3, leave_out=other), **QUIET)
    assert task.retrained == [10, 5]  # other leave-out blocks: retrained, and earlier leave-out LDS redone
    assert third["oracle"]["leave_out"]["lds_mean"] > 0.8 and {"oracle", "reversed", "blurred"} <= set(third)


class Interrupted(Planted):
    """A method whose run is stopped from outside (Ctrl-C, a killed job), not an error the bench reports."""

    def attribute(self, split: str, **option) -> MethodResult:
        raise KeyboardInterrupt


def test_a_stopped_run_keeps_the_methods_it_finished(tmp_path: Path, planted: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The report is written after each method: a run stopped mid-way keeps oracle's row (with its leave-out
    LDS), and a resumed run scores only what is missing."""
    monkeypatch.setitem(METHODS, "stopped", lambda: Interrupted())
    task = AdditiveTask()
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(task, [MethodSpec("oracle"), MethodSpec("stopped"), MethodSpec("reversed")], tmp_path,
                      SMALL, **QUIET)
    kept = json.loads((tmp_path / "report.json").read_text())
    assert kept["oracle"]["leave_out"]["lds_mean"] > 0.8 and "stopped" not in kept and "reversed" not in kept
    assert kept["protocol"]["leave_out"]["m"] == 10 and "noise_ceiling_leave_out" in kept

    seen: list[str] = []
    resumed = run_benchmark(task, [MethodSpec("oracle"), MethodSpec("reversed")], tmp_path, SMALL,
                            log=seen.append, removal=False, resume=True)
    assert any("oracle: in the report already" in line for line in seen)
    assert resumed["oracle"] == kept["oracle"] and resumed["reversed"]["lds_mean"] < -0.8
    # the stopped run's seconds are counted once, not once per partial write
    assert resumed["protocol"]["total_seconds"] >= kept["protocol"]["total_seconds"]


def test_cli_leave_out_flags() -> None:
    from stride_assets.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["bench", "digits-mlp", "--out", "o"]).leave_out is None
    assert parse(["bench", "digits-mlp", "--out", "o", "--leave-out"]).leave_out == 0
    args = parse(["bench", "digits-mlp", "--leave-out", "20", "--leave-out-fraction", "0.1", "--out", "o"])
    assert args.leave_out == 20 and args.leave_out_fraction == 0.1


def test_bench_options_set_the_leave_out_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from stride_assets.engine.evaluation import bench, suites

    seen = []
    monkeypatch.setattr(suites, "build", lambda *a, **k: suites.Suite(AdditiveTask(), [], replace(suites.QUICK)))
    monkeypatch.setattr(bench, "run_benchmark", lambda task, specs, out, protocol, **k: seen.append(protocol))
    for options in (suites.BenchOptions(quick=True), suites.BenchOptions(quick=True, leave_out=0),
                    suites.BenchOptions(leave_out=0), suites.BenchOptions(leave_out=20, leave_out_fraction=0.1),
                    suites.BenchOptions(leave_out_fraction=0.08)):
        suites._lds("digits-mlp", Path("unused"), options, lambda _: None)
    assert [p.leave_out for p in seen] == [None, LeaveOut(m=12, noise_subsets=4), LeaveOut(),
                                           LeaveOut(m=20, fraction=0.1), LeaveOut(fraction=0.08)]
