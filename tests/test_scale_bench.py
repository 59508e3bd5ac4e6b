"""``stride bench scale --quick``: the cost ladder's report schema, on the default size at n 1k and 3k."""

import json
import math
from pathlib import Path

from stride_assets import cli
from stride_assets.engine.evaluation import scale_bench
from stride_assets.engine.evaluation.suites import BENCHES

METHOD_KEYS = ("one_time_s", "per_query_s", "peak_rss_mb", "bank_bytes")


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_scale_quick_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "scale"
    assert cli.main(["bench", "scale", "--quick", "--no-mlflow", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert not any(p.name.startswith(".scale-work-") for p in out.iterdir())  # models and factors cleaned up
    sizes = report["sizes"]
    assert [(s["model"], s["n"]) for s in sizes] == [("default", 1000), ("default", 3000)]
    for s in sizes:
        assert s["params"] > 1e6 and s["vocab"] == 2048 and s["queries"] == scale_bench.QUERIES
        for method in ("stride", "stride_logit_dense", *scale_bench.BASELINES):
            cost = s[method]
            assert all(_positive(cost[k]) for k in METHOD_KEYS), (method, cost)
            for stage in cost["stages"].values():
                assert stage["per"] in ("one_time", "per_query") and stage["how"] and stage["seconds"] >= 0
                assert stage["how"].startswith(("measured", "scaled"))
        stride = s["stride"]
        assert _positive(stride["bank_bytes_predicted"]) and stride["shards"] == math.ceil(s["n"] / 256)
        assert set(s["ratio_end_to_end"]) == {"logra", "kronfluence_ekfac"}
        assert all(_positive(v) for v in s["ratio_end_to_end"].values())
        expected = (stride["one_time_s"] + 1000 * stride["per_query_s"]) / (
            s["logra"]["one_time_s"] + 1000 * s["logra"]["per_query_s"])
        assert math.isclose(s["ratio_end_to_end"]["logra"], expected, rel_tol=1e-9)
        assert s["kronfluence_ekfac"]["include_head"] is True  # a 2,048-token head is tracked
    # cost grows with n: the fit is per shard (3k has 12 shards to 1k's 4), the gradient passes per example
    assert sizes[1]["stride"]["stages"]["fit"]["seconds"] > sizes[0]["stride"]["stages"]["fit"]["seconds"]
    assert sizes[1]["logra"]["stages"]["train_grads"]["seconds"] > sizes[0]["logra"]["stages"]["train_grads"]["seconds"]
    assert isinstance(report["n_slope"], float) and math.isfinite(report["n_slope"])
    assert report["text"]["synthetic"] is False
    printed = capsys.readouterr().out
    assert "| default |" in printed and "n_slope" in printed


def test_scale_is_registered() -> None:
    assert "scale" in BENCHES and BENCHES["scale"].table is not None


def test_shard_sizes_and_ratio_refusal() -> None:
    assert scale_bench._shard_sizes(1000, 256) == [256, 256, 256, 232]
    assert scale_bench._shard_sizes(512, 256) == [256, 256]
    entry = {"stride": {"refused": "too wide"}, "logra": {"end_to_end_s": 2.0}}
    assert scale_bench._ratios(entry, "stride") is None
    entry["stride"] = {"end_to_end_s": 1.0}
    assert scale_bench._ratios(entry, "stride") == {"logra": 0.5}
