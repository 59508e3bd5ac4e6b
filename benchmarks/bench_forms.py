"""Operator training cost of one shard per operator form, as ratios against the dense logit form in the same run.

One shard as the default profile makes it (n = 256 examples of T = 64 tokens, K = 48 subsets, d = 8,
3 epochs of member pairs, batch 32), on GPT-2 heads of the default tiny model (vocabulary 2,048,
width 128) and of GPT-2 124M (50,257 x 768). Only the head runs during operator training, so the
model below it is not built: the cached features are random and the head is a random tied embedding
(seconds per step do not depend on the weights). Forms:

- ``logit``: the dense logit form (r = 16, an r x V matrix per operator; the default until 2026-12-02);
- ``columns``: the logit form on each operator's member tokens (``operators.columns: 1024``, r = 48,
  the default profile now), trained from gathered logits (``engine/column_logits.py``);
- ``head``: the head form (r = 16, r x d_model per operator).

Seconds are CPU seconds of this process (run it single-threaded): the set-up (a 0-step training)
plus the seconds per step, measured on ``--steps`` steps, times the shard's step count; bank and
optimizer bytes are exact.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_forms.py --out benchmarks/reports/forms_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from stride_assets.engine.backbone import HeadSite, LogitSite
from stride_assets.engine.config import TrainConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.operators import OperatorBank, member_columns
from stride_assets.engine.stride import targets
from stride_assets.engine.training import steps_for_epochs, train_operators

HEADS = {"default tiny (2,048 x 128)": (2048, 128), "GPT-2 124M (50,257 x 768)": (50257, 768)}
FORMS = {"logit": ("logit", None, 16), "columns": ("logit", 1024, 48), "head": ("head", None, 16)}
N, T, K, D, BATCH, EPOCHS = 256, 64, 48, 8, 32, 3.0


class _Head(nn.Module):
    """Just an output head (``get_output_embeddings``), the only part of the model operator training runs."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head


def shard(vocab: int, width: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = (torch.randint(0, vocab, (N, T), generator=g).float() ** 2 / vocab).long()  # a skewed token distribution
    return torch.randn(N, T, width, generator=g), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def one(vocab: int, width: int, form: str, columns: int | None, rank: int, steps: int) -> dict[str, float]:
    feats, batch = shard(vocab, width)
    head = _Head(vocab, width)
    site = HeadSite(head) if form == "head" else LogitSite(head)
    design = draw_design(N, K, D, seed=0)
    if columns:
        index = member_columns(design.membership, *targets(batch), site.out_dim, columns)
        bank = OperatorBank(K, site.in_dim, site.out_dim, rank, columns=index.shape[1]).set_columns(index)
    else:
        bank = OperatorBank(K, site.in_dim, site.out_dim, rank)
    bank.set_feature_stats(feats)
    def timed(n_steps: int) -> float:
        start = time.process_time()
        train_operators(site, bank, feats, batch, design, TrainConfig(steps=n_steps, batch_size=BATCH, log_every=10**9),
                        log=lambda _: None)
        return time.process_time() - start

    setup = timed(0)  # what does not repeat per step (the column form's base log-normalisers: one pass of the head)
    per_step = (timed(steps) - setup) / steps
    full = steps_for_epochs(EPOCHS, BATCH, N, D)
    params = sum(p.numel() for p in bank.parameters())
    return {"setup_seconds": setup, "seconds_per_step": per_step, "shard_seconds": setup + per_step * full,
            "shard_steps": full,
            "bank_bytes": bank.A.numel() * 4, "bank_and_adam_bytes": params * 4 * 4,
            "columns": bank.A.shape[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", type=int, default=8, help="steps measured per form (scaled to the shard's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="operator training sees")  # short timing runs, on purpose
    report = {"command": "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_forms.py", "heads": {}}
    for label, (vocab, width) in HEADS.items():
        rows = {name: one(vocab, width, *spec, args.steps) for name, spec in FORMS.items()}
        for name, row in rows.items():
            row["time_vs_logit"] = row["shard_seconds"] / rows["logit"]["shard_seconds"]
            row["memory_vs_logit"] = row["bank_and_adam_bytes"] / rows["logit"]["bank_and_adam_bytes"]
            print(f"{label:28s} {name:8s} {row['shard_seconds']:8.1f} s/shard ({row['time_vs_logit']:.2f}x logit) "
                  f"bank {row['bank_bytes'] / 1e6:8.1f} MB ({row['memory_vs_logit']:.3f}x with Adam) "
                  f"columns {row['columns']}")
        report["heads"][label] = rows
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
