"""Cost of measurement per query: plain forward (baseline), first-order and exact responses.

Uses a finished stride run (its stored model, operators and queries), so the numbers are for
the real default setting. Prints seconds per query and ratios to a plain forward, measured
in this same run, and the agreement of the two modes (Pearson r over all responses).

    .venv/bin/python benchmarks/bench_measure.py --store .stride/store [--queries 24] [--K 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stride_assets.engine import lm
from stride_assets.engine.store import Store
from stride_assets.engine.backbone import make_site
from stride_assets.engine.measure import responses


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=".stride/store")
    ap.add_argument("--queries", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    store = Store(args.store)
    model, tokenizer = store.load_base_model()
    shard = sorted(p.name for p in store.stage("steering_operators").iterdir() if p.is_dir())[0]
    bank, op_args = store.load_bank(shard)
    site = make_site(model, op_args["operators"]["form"], op_args["layer"])
    texts = store.read_queries("default")["text"].head(args.queries).to_list()
    batch = lm.encode_batch(tokenizer, texts, store.model_ref()["max_length"])
    n = len(texts)

    def forward() -> None:
        with torch.no_grad():
            model(**batch)

    t_fwd = timed(forward)
    t_fo = timed(lambda: responses(site, bank, batch, "first_order", query_batch=16))
    t_ex = timed(lambda: responses(site, bank, batch, "exact", query_batch=16, operator_chunk=args.chunk), repeat=1)
    fo = responses(site, bank, batch, "first_order")
    ex = responses(site, bank, batch, "exact", operator_chunk=args.chunk)
    r = float(np.corrcoef(fo.ravel(), ex.ravel())[0, 1])
    rank_r = float(np.mean([np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1] for a, b in zip(fo, ex)]))
    print(f"form={site.form} K={bank.K} queries={n} threads={torch.get_num_threads()}")
    print(f"{'mode':<14}{'s/query':>10}{'x forward':>11}")
    for name, t in (("forward", t_fwd), ("first_order", t_fo), ("exact", t_ex)):
        print(f"{name:<14}{t / n:>10.5f}{t / t_fwd:>11.1f}")
    print(f"exact / first_order = {t_ex / t_fo:.1f}x; agreement: pearson {r:.3f}, mean per-query spearman {rank_r:.3f}")


if __name__ == "__main__":
    main()
