"""STRIDE's stages on a GPU against the same machine's CPU, in one run (the prepared device check).

For one model of ``stride bench scale``'s ladder (the profile's tiny GPT-2, or GPT-2 124M with random
weights) and one shard of the default profile: feature caching per example, the shard's operator
training per step, and responses per query per shard bank — each measured with
``scale_bench.stride_rates`` on ``--device`` (wall seconds, CUDA synchronised) and on the CPU (all
cores), and the ratio CPU / device. Writes ``OUT/gpu_check.json`` with the peak GPU memory.

On a lent GPU machine (python3 there holds torch + transformers, but not polars or pydantic; carry
them as wheels, see the device tool's README), from the repository root:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \\
        polars==2.1.0 polars-runtime-32==2.1.0 pydantic==2.14.4 pydantic-core annotated-types typing-inspection
    # device run, carry [".whl"], timeout 540:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. \\
      && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --device cuda --size gpt2-124m --out $OUT

Here, on the CPU only (a dry run of the same code path): ``.venv/bin/python benchmarks/gpu_check.py --device cpu
--size default --quick --out /tmp/gpu_check``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from stride_assets.engine.evaluation import scale_bench as sb

SIZES = {"default": sb.FULL_LADDER[0], "gpt2-124m": sb.FULL_LADDER[2]}


def synced_clock(device: str):
    """Wall seconds, after the device's queued work has finished."""
    def clock() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()
    return clock


def on(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def rates_on(device: str, cfg, model, train, queries, budgets, log) -> dict:
    sb.CLOCK = synced_clock(device)
    dcfg = cfg.with_(training={"device": device}, measure={"device": device})
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    rates = sb.stride_rates("stride", dcfg, model.to(device), on(train, device), on(queries, device), budgets, log)
    keep = {k: rates[k] for k in ("cache_per_example_s", "K_shard", "measure_per_query_per_shard_s", "query_forward_s",
                                  "operator_params")}
    keep["fit_per_step_s"] = rates["fit"]["per_step_s"]
    keep["shard_fixed_s"] = rates["shard_fixed_s"]
    keep["wall_s"] = time.perf_counter() - started
    if device.startswith("cuda"):
        keep["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        keep["gpu"] = torch.cuda.get_device_name()
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-124m")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the scale bench's quick budgets (a dry run)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here")
    budgets = sb.QUICK_BUDGETS if args.quick else sb.Budgets(cache_s=20, step_budget=20, full_steps_s=0,
                                                             measure_s=20, time_cap=60)
    cfg = sb.stride_configs("default")["stride"]
    size = SIZES[args.size]
    texts, source = sb.python_passages(1_300, cfg.corpus.chunk_chars, cfg.corpus.min_chars)
    with tempfile.TemporaryDirectory() as work:
        model, tokenizer, info = sb.build_model(size, cfg, texts[300:], Path(work), budgets, print)
        train = sb._encode(tokenizer, texts[300:300 + max(cfg.corpus.shard_size, budgets.pool // 8)],
                           cfg.model.max_length)
        queries = sb._encode(tokenizer, texts[:300], cfg.model.max_length)
        report = {"model": info, "size": args.size, "text": source, "device": args.device,
                  "threads_cpu": torch.get_num_threads(), "torch": torch.__version__}
        report[args.device] = rates_on(args.device, cfg, model, train, queries, budgets, print)
        report["cpu"] = report["cpu"] if args.device == "cpu" else rates_on("cpu", cfg, model, train, queries,
                                                                            budgets, print)
    dev, cpu = report[args.device], report["cpu"]
    report["cpu_over_device"] = {k: cpu[k] / dev[k] for k in ("cache_per_example_s", "fit_per_step_s",
                                                               "measure_per_query_per_shard_s") if dev[k] > 0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["cpu_over_device"], indent=2))


if __name__ == "__main__":
    main()
