"""Seconds per operator-training step: AdamW over the whole operator tensor (baseline) vs lazy
(row-wise) Adam over the operators a step uses, interleaved in the same run.

A small GPT-2 on the pydoc passages (untrained: cost does not depend on the weights), logit and
activation forms, K operators of rank r over the vocabulary. Prints ms/step and the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_optimizer.py [--K 256] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from stride_assets.engine import lm
from stride_assets.engine.backbone import encode_all, make_site
from stride_assets.engine.config import CorpusConfig, TinyModelConfig, TrainConfig
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.design import draw_design
from stride_assets.engine.operators import OperatorBank
from stride_assets.engine.training import train_operators


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    texts = load_passages(CorpusConfig(max_examples=args.n))["text"].to_list()
    tokenizer = lm.train_tokenizer(texts, 2048)
    model = lm.build_tiny_gpt2(tokenizer, TinyModelConfig(n_layer=2, n_embd=64, n_head=2), 64)
    ids, mask = lm.encode(tokenizer, texts, 64)
    batch = {"input_ids": ids, "attention_mask": mask}
    design = draw_design(len(texts), args.K, 8, 0)
    print(f"threads={torch.get_num_threads()} n={len(texts)} K={args.K} rank={args.rank} vocab={len(tokenizer)}")
    print("| form | AdamW ms/step | lazy Adam ms/step | lazy / AdamW |\n|---|---|---|---|")
    for form in ("logit", "activation"):
        site = make_site(model, form, None)
        feats = encode_all(site, batch)
        best: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, best of repeats: the machine is shared
            for optimizer in ("adamw", "lazy_adam"):
                bank = OperatorBank(args.K, site.in_dim, site.out_dim, args.rank)
                bank.set_feature_stats(feats, batch["attention_mask"])
                cfg = TrainConfig(steps=args.steps, optimizer=optimizer, log_every=10**6)
                start = time.perf_counter()
                train_operators(site, bank, feats, batch, design, cfg, log=lambda _: None)
                per_step = (time.perf_counter() - start) / args.steps * 1000
                best[optimizer] = min(best.get(optimizer, float("inf")), per_step)
        print(f"| {form} | {best['adamw']:.1f} | {best['lazy_adam']:.1f} | {best['lazy_adam'] / best['adamw']:.2f} |")


if __name__ == "__main__":
    main()
