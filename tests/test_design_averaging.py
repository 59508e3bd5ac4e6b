"""benchmarks/design_averaging.py on a planted bench folder: averaging independent noisy runs of one influence
matrix scores closer to the truth than any single run, and the folder's files are read the way
``run_benchmark`` writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from stride_assets.engine.evaluation.lds import lds

REPO = Path(__file__).resolve().parents[1]


def _planted_folder(root: Path, runs: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    n, Q, m = 60, 8, 40
    truth = rng.standard_normal((Q, n)) * (rng.random((Q, n)) < 0.3)
    subsets = rng.random((m, n)) < 0.5
    losses = -(subsets @ truth.T) + 0.1 * rng.standard_normal((m, Q))  # higher influence sum -> lower loss
    ex = np.array([f"ex/{i:03d}" for i in range(n)], dtype=object)
    qs = np.array([f"q/{j:02d}" for j in range(Q)], dtype=object)
    (root / "scores").mkdir(parents=True)
    pl.DataFrame({"subset_id": np.repeat(np.arange(m), subsets.sum(1)),
                  "example_id": ex[np.nonzero(subsets)[1]].tolist()}).write_parquet(root / "eval_subsets.parquet")
    pl.DataFrame({"subset_id": np.repeat(np.arange(m), Q), "query_id": np.tile(qs, m).tolist(),
                  "loss": losses.ravel()}).write_parquet(root / "retrained_losses.parquet")
    noisy = []
    for r in range(runs):
        X = truth + 1.5 * rng.standard_normal((Q, n))
        noisy.append(X)
        q, i = np.nonzero(X)
        name = "planted" if r == 0 else f"planted_s{r}"
        pl.DataFrame({"query_id": qs[q].tolist(), "example_id": ex[i].tolist(),
                      "score": X[q, i].astype(np.float32)}).write_parquet(root / "scores" / f"{name}.parquet")
    return truth, subsets, losses, noisy


def test_averaging_noisy_runs_beats_each_run(tmp_path):
    truth, subsets, losses, noisy = _planted_folder(tmp_path)
    out = tmp_path / "avg.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "design_averaging.py"), "--out", str(tmp_path),
                    "--method", "planted", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    rows = {r["designs"]: r for r in result["rows"]}
    assert sorted(rows) == [1, 2, 3] and rows[3]["combinations"] == 1
    single = [lds(X, subsets, losses).mean for X in noisy]
    # the script's single-run and all-run numbers are the LDS of those matrices on the folder's ground truth
    assert np.isclose(rows[1]["lds_mean"], np.mean(single), atol=1e-4)
    assert np.isclose(rows[3]["lds_mean"], lds(sum(noisy), subsets, losses).mean, atol=1e-4)
    assert rows[3]["lds_mean"] > rows[2]["lds_mean"] > rows[1]["lds_max"]
    assert rows[3]["lds_mean"] < lds(truth, subsets, losses).mean  # the planted truth stays the ceiling
    # the fitted limit of averaging ever more runs lies above what three runs reached
    assert result["limit_fit"]["a"] > rows[3]["lds_mean"] and result["limit_fit"]["b"] < 0
