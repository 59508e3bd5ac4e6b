"""The benchmark harness end to end on small real data: files, report, sane LDS, CLI on a user csv."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.bench import MethodSpec, Protocol, run_benchmark
from stride_assets.engine.evaluation.classifier import MLPRecipe
from stride_assets.engine.evaluation.tabular import tabular_task
from stride_assets.engine.config import StrideConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = Protocol(m=12, m_val=6, noise_subsets=3, removal_queries=2, removal_ks=[5], removal_random=1)


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True).frame
    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    pl.from_pandas(data).write_csv(path)
    return path


def test_run_benchmark_writes_the_interchange_files(tmp_path: Path, wine_csv: Path) -> None:
    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=32, steps=150))
    stride = StrideConfig().with_(design={"K": 48, "d": 6}, operators={"form": "logit", "rank": 8},
                                    training={"steps": 60, "batch_size": 256, "lr": 1e-2}, recovery={"n_jobs": 1})
    specs = [MethodSpec("stride_logit", {"config": stride}, grid=suites.LAMBDA_GRID[:3], method="stride"),
             MethodSpec("grad_dot"), MethodSpec("logra", grid=suites.DAMPING_GRID[:2])]
    report = run_benchmark(task, specs, tmp_path, SMALL, log=lambda _: None)

    assert (tmp_path / "report.json").is_file() and json.loads((tmp_path / "report.json").read_text()) == report
    subsets = pl.read_parquet(tmp_path / "eval_subsets.parquet")
    assert subsets.columns == ["subset_id", "example_id"] and subsets["subset_id"].n_unique() == SMALL.m
    assert subsets.group_by("subset_id").len()["len"].unique().to_list() == [round(0.5 * task.n)]
    losses = pl.read_parquet(tmp_path / "retrained_losses.parquet")
    assert losses.columns == ["subset_id", "query_id", "loss"]
    assert losses.height == SMALL.m * len(task.query_ids["test"]) and losses["loss"].is_finite().all()
    for name in ("stride_logit", "grad_dot", "logra"):
        scores = pl.read_parquet(tmp_path / "scores" / f"{name}.parquet")
        assert scores.columns == ["query_id", "example_id", "score"]
        stats = report[name]
        assert {"lds_mean", "lds_std", "n_nan", "seconds", "peak_rss_mb", "one_time_seconds",
                "per_query_seconds"} <= set(stats)
        # a query whose Lasso solution is all zeros has an undefined LDS: counted, and rare here
        assert np.isfinite(stats["lds_mean"]) and 0 <= stats["n_nan"] <= len(task.query_ids["test"]) // 4
    # the settings grid was searched on the validation draw and the choice recorded
    assert report["logra"]["chosen"] in [{"damping": 1e-3}, {"damping": 1e-2}]
    assert len(report["stride_logit"]["grid"]) == 3
    # gradient methods carry real signal on this task (the sign convention holds)
    assert report["grad_dot"]["lds_mean"] > 0.1
    assert report["protocol"]["m"] == SMALL.m and report["protocol"]["n"] == task.n
    assert -1 <= report["noise_ceiling"]["lds_mean"] <= 1
    assert set(report["removal"]["mean_loss_rise"]) >= {"grad_dot@5", "random@5"}


def test_a_failing_method_is_reported_not_fatal(tmp_path: Path, wine_csv: Path) -> None:
    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=50))
    specs = [MethodSpec("grad_dot"), MethodSpec("logra", settings={"damping": -1.0})]
    report = run_benchmark(task, specs, tmp_path, replace(SMALL, m=4, m_val=3), log=lambda _: None, removal=False)
    assert "error" in report["logra"] and "lds_mean" in report["grad_dot"]


def test_cli_bench_on_a_user_csv(tmp_path: Path, wine_csv: Path, mlflow_uri: str, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from stride_assets import cli

    out = tmp_path / "bench"
    assert cli.main(["bench", str(wine_csv), "--label", "target", "--quick", "--out", str(out),
                     "--methods", "grad_dot,repsim", "--no-removal"]) == 0
    printed = capsys.readouterr().out
    assert "| grad_dot |" in printed and "noise ceiling" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"grad_dot", "repsim", "protocol", "noise_ceiling", "base_model"}
    exp = MlflowClient(tracking_uri=mlflow_uri).get_experiment_by_name("stride-bench")
    runs = MlflowClient(tracking_uri=mlflow_uri).search_runs([exp.experiment_id])
    assert len(runs) == 1 and "grad_dot.lds_mean" in runs[0].data.metrics


def test_cli_bench_rejects_bad_requests(tmp_path: Path, wine_csv: Path) -> None:
    from stride_assets import cli

    assert cli.main(["bench", "no-such-benchmark", "--out", str(tmp_path)]) != 0
    assert cli.main(["bench", str(wine_csv), "--out", str(tmp_path)]) != 0  # neither --label nor --text
    assert cli.main(["bench", str(wine_csv), "--label", "nope", "--quick", "--out", str(tmp_path)]) != 0


def test_ground_truth_cache_reuses_retrains_and_keys_on_the_subsets(tmp_path: Path, wine_csv: Path) -> None:
    from stride_assets.engine.evaluation.bench import ground_truth
    from stride_assets.engine.evaluation.task import draw_subsets

    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=40))
    calls = []
    real = task.retrain_losses
    task.retrain_losses = lambda subsets, seed: calls.append(len(subsets)) or real(subsets, seed=seed)
    subsets = draw_subsets(task.n, 3, 0.5, 1)
    first = ground_truth(task, subsets, 1, 0, cache=tmp_path)
    again = ground_truth(task, subsets, 1, 0, cache=tmp_path)
    assert calls == [3] and all(np.array_equal(first[s], again[s]) for s in first)
    ground_truth(task, draw_subsets(task.n, 3, 0.5, 2), 1, 0, cache=tmp_path)  # other subsets: retrained
    ground_truth(task, subsets, 1, 1, cache=tmp_path)  # other seed: retrained
    assert calls == [3, 3, 3] and len(list(tmp_path.glob("ground_truth_*.npz"))) == 3


def test_resume_skips_methods_already_in_the_report(tmp_path: Path, wine_csv: Path) -> None:
    """A rerun with resume keeps grad_dot's row as it was and scores only the method that is new."""
    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=50))
    small = replace(SMALL, m=4, m_val=3)
    first = run_benchmark(task, [MethodSpec("grad_dot")], tmp_path, small, log=lambda _: None, removal=False)
    seen: list[str] = []
    second = run_benchmark(task, [MethodSpec("grad_dot"), MethodSpec("repsim")], tmp_path, small, log=seen.append,
                           removal=False, resume=True)
    assert any("grad_dot: in the report already" in line for line in seen)
    assert second["grad_dot"] == first["grad_dot"] and "lds_mean" in second["repsim"]
    # the ground truth was computed by the first run (the second read it from the cache): its time stays counted
    assert second["protocol"]["ground_truth_seconds"] == first["protocol"]["ground_truth_seconds"]
    assert second["protocol"]["total_seconds"] > first["protocol"]["total_seconds"]
    assert second["base_model"]["train_seconds"] == first["base_model"]["train_seconds"]
    later: list[str] = []
    third = run_benchmark(task, [MethodSpec("grad_dot")], tmp_path, replace(small, seed=5), log=later.append,
                          removal=False, resume=True)  # another protocol: nothing is reused
    assert "repsim" not in third and third["protocol"]["seed"] == 5
    assert not any("in the report already" in line for line in later)


def test_a_stride_sweep_chooses_its_training_setting_on_validation(tmp_path: Path, wine_csv: Path) -> None:
    """A sweep of two operator trainings (one damped until its operators barely move) picks the other on the
    validation draw, scores the test queries exactly as that config alone does, and counts both trainings'
    one-time cost."""
    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=100))
    good = StrideConfig().with_(design={"K": 48, "d": 6}, operators={"form": "pre_activation", "rank": 4},
                                training={"steps": 40, "batch_size": 256, "lr": 1e-2}, recovery={"n_jobs": 1})
    crushed = good.with_(training={"damping_weight": 1e4})
    grid = suites.LAMBDA_GRID[:2]
    specs = [MethodSpec("alone", {"config": good}, grid=grid, method="stride"),
             MethodSpec("sweep", {"configs": {"crushed": crushed, "good": good}},
                        grid=[{"variant": v, **o} for v in ("crushed", "good") for o in grid], method="stride_sweep")]
    report = run_benchmark(task, specs, tmp_path, replace(SMALL, m=8, m_val=6), log=lambda _: None, removal=False)
    sweep, alone = report["sweep"], report["alone"]
    assert sweep["chosen"]["variant"] == "good" and len(sweep["grid"]) == 4
    crushed_val = max(g["val_lds"] for g in sweep["grid"] if g["setting"]["variant"] == "crushed")
    assert crushed_val < sweep["val_lds"]
    assert sweep["lds_mean"] == pytest.approx(alone["lds_mean"], abs=1e-9)
    from stride_assets.engine.evaluation.methods import StrideSweep

    # both trainings' one-time cost, checked within one sweep (two runs' wall times compared would be a timed test)
    both = StrideSweep({"crushed": crushed, "good": good})
    both.cache(task, task.train(None, seed=0))
    parts = [run.one_time_seconds for run in both.runs.values()]
    assert min(parts) > 0 and both.attribute("val", variant="good", **grid[0]).one_time_seconds == pytest.approx(
        sum(parts))
    with pytest.raises(ValueError, match="unknown STRIDE variant"):
        StrideSweep({"good": good}).attribute("val", variant="nope")


def test_an_ensemble_attributes_each_member_option_once(wine_csv: Path) -> None:
    """Over a grid of weights x the second member's damping, each member runs once per split and option, and
    every blend equals the blend of fresh member results."""
    from stride_assets.engine.attribution import blend
    from stride_assets.engine.evaluation.methods import METHODS

    task = tabular_task(wine_csv, "target", seed=0, recipe=MLPRecipe(hidden=16, steps=100))
    trained = task.train(None, seed=0)
    method = METHODS["ensemble"](first=("grad_dot", {}), second=("logra", {}))
    method.cache(task, trained)
    calls = []
    for member in method.members:
        inner = member.attribute
        member.attribute = lambda split, _inner=inner, **o: calls.append((split, o)) or _inner(split, **o)
    grid = [{"weight": w, "second": {"damping": d}} for w in (0.25, 0.75) for d in (0.1, 1.0)]
    results = [method.attribute("val", **option) for option in grid]
    assert len(calls) == 1 + 2  # grad_dot once, logra once per damping
    fresh = METHODS["logra"]()
    fresh.cache(task, trained)
    first = METHODS["grad_dot"]()
    first.cache(task, trained)
    a = first.attribute("val").scores
    for option, res in zip(grid, results):
        expected = blend(a, fresh.attribute("val", **option["second"]).scores, option["weight"]).toarray()
        np.testing.assert_allclose(res.scores, expected)
    assert not np.allclose(results[0].scores, results[1].scores)  # the damping reaches the blend
