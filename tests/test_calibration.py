"""Calibration on a few real retrains (evaluation.calibration): planted per-example gains are recovered, the
identity is kept when nothing is to be gained, bad input is refused, and the harness scores both rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stride_assets.engine.evaluation import calibration
from stride_assets.engine.evaluation.bench import MethodSpec, Protocol, run_benchmark
from stride_assets.engine.evaluation.lds import lds
from stride_assets.engine.evaluation.methods import METHODS
from stride_assets.engine.evaluation.methods.base import MethodResult
from test_leave_out import AdditiveTask

N = 100


def _gains(seed: int = 3) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(size=N))  # a spread of 0.1x .. 10x


def _truth(influence: np.ndarray, subsets: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Losses (J, Q) of models 'retrained' on ``subsets`` when example i moves query q by influence[q, i]."""
    rng = np.random.default_rng(seed)
    return -(subsets.astype(float) @ influence.T) + noise * rng.normal(size=(len(subsets), len(influence)))


def _draw(J: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((J, N)) < 0.5


def test_planted_gains_are_recovered_and_raise_lds_on_unseen_retrains_and_queries() -> None:
    """A method that gets every example's influence right up to a per-example factor: 24 retrains on 28 queries
    recover the factors, and the LDS on 64 fresh retrains of 50 other queries rises from ~0.6 to near 1."""
    rng = np.random.default_rng(0)
    gains = _gains()
    val_scores, test_scores = rng.normal(size=(28, N)), rng.normal(size=(50, N))
    val_subsets, test_subsets = _draw(24, 1), _draw(64, 2)
    val_losses = _truth(gains * val_scores, val_subsets, 0.5, 4)
    test_losses = _truth(gains * test_scores, test_subsets, 0.5, 5)
    cal = calibration.choose(val_scores, val_subsets, val_losses)
    assert cal.ridge is not None and np.corrcoef(cal.gains, gains)[0, 1] > 0.9
    raw = lds(test_scores, test_subsets, test_losses).mean
    fixed = lds(cal.apply(test_scores), test_subsets, test_losses).mean
    assert raw < 0.8 and fixed > 0.95


def test_scores_already_right_are_left_as_they_are() -> None:
    """With the exact influence and noisy retrains there is nothing to repair: the cross-validation keeps the
    identity or gains close to it, and the LDS on fresh retrains does not fall."""
    rng = np.random.default_rng(1)
    val_scores, test_scores = rng.normal(size=(28, N)), rng.normal(size=(50, N))
    val_subsets, test_subsets = _draw(24, 6), _draw(64, 7)
    cal = calibration.choose(val_scores, val_subsets, _truth(val_scores, val_subsets, 3.0, 8))
    test_losses = _truth(test_scores, test_subsets, 3.0, 9)
    assert set(cal.cv_lds) == {"none", *(f"{r:g}" for r in calibration.RIDGE_GRID)}
    assert cal.ridge is None or np.abs(cal.gains - 1).mean() < 0.3
    assert lds(cal.apply(test_scores), test_subsets, test_losses).mean >= lds(
        test_scores, test_subsets, test_losses).mean - 0.02


def test_bad_input_is_refused_by_name() -> None:
    scores, subsets = np.zeros((5, N)), _draw(6, 0)
    losses = np.zeros((6, 5))
    with pytest.raises(ValueError, match="losses of shape"):
        calibration.choose(scores, subsets, losses[:, :4])
    with pytest.raises(ValueError, match="same n examples"):
        calibration.choose(scores[:, :50], subsets, losses)
    with pytest.raises(ValueError, match="at least 4 retrains"):
        calibration.choose(scores, subsets[:3], losses[:3])
    bad = losses.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibration.choose(scores, subsets, bad)
    with pytest.raises(ValueError, match="calibration for 100 examples"):
        calibration.Calibration(np.ones(N)).apply(np.zeros((2, 7)))


class Distorted:
    """The planted influence with every example's score divided by a fixed factor (the same on every split)."""

    def cache(self, task, trained) -> None:
        self.task = task
        self.factor = np.exp(np.random.default_rng(2).normal(size=task.n))

    def attribute(self, split: str, **option) -> MethodResult:
        return MethodResult(self.task.w[split] / self.factor, 0.0, 0.0, option)


def test_the_harness_scores_a_calibrated_row_beside_each_method(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Protocol(calibrate=True)``: each method gets a ``_calibrated`` row fitted on the validation draw only,
    on the same test draw and leave-out retrains; here it repairs the distortion."""
    monkeypatch.setitem(METHODS, "distorted", Distorted)
    task = AdditiveTask(n=80, queries=20, noise=0.3)
    protocol = Protocol(m=24, m_val=16, noise_subsets=3, calibrate=True)
    report = run_benchmark(task, [MethodSpec("distorted")], tmp_path, protocol, log=lambda _: None, removal=False)
    raw, fixed = report["distorted"], report["distorted_calibrated"]
    assert fixed["calibration"]["retrains"] == 16 and fixed["calibration"]["ridge"] is not None
    assert fixed["lds_mean"] > raw["lds_mean"] + 0.1
    assert (tmp_path / "scores" / "distorted_calibrated.parquet").is_file()
    # resume: both rows are in the report, so nothing is scored again
    seen: list[str] = []
    run_benchmark(task, [MethodSpec("distorted")], tmp_path, protocol, log=seen.append, removal=False, resume=True)
    assert any("in the report already" in line for line in seen)


def test_cli_calibrate_reaches_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stride bench NAME --calibrate`` sets ``BenchOptions.calibrate``, which sets ``Protocol.calibrate``."""
    from stride_assets.cli import build_parser
    from stride_assets.engine.evaluation import bench, suites

    parse = build_parser().parse_args
    assert parse(["bench", "wine-mlp", "--out", "o", "--calibrate"]).calibrate
    assert not parse(["bench", "wine-mlp", "--out", "o"]).calibrate
    seen = []
    monkeypatch.setattr(suites, "build", lambda *a, **k: suites.Suite(AdditiveTask(), [], replace(suites.QUICK)))
    monkeypatch.setattr(bench, "run_benchmark", lambda task, specs, out, protocol, **k: seen.append(protocol))
    for options in (suites.BenchOptions(quick=True), suites.BenchOptions(quick=True, calibrate=True)):
        suites._lds("wine-mlp", Path("unused"), options, lambda _: None)
    assert [p.calibrate for p in seen] == [False, True]
