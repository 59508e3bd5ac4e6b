"""Column banks on the logit site, old path vs new in one run (issue 11):

- a training step (fidelity + stability, backward, Adam) with the shard's base probabilities computed
  from the head every step (``cache_bytes=0``, as before) vs kept and gathered (the default when they fit);
- a shard's first-order responses per query: the full-vocabulary gradient by autograd (as before) vs the
  gradient at the bank's columns only from the stored log-normalisers (``column_logits.loss_gradient``).

Shapes of the default profile (K 48, rank 48, columns 1,024, T 64, a shard of 256, query batch 16) on the
tiny default's head (vocab 2,048, d 128) and GPT-2 124M's (50,257, 768); random features and weights (the
cost does not depend on their values); each operator's 1,024 columns drawn from one pool of 4,096 tokens
(an assumption standing for the tokens a shard's passages predict; on real text the union is what
``stride bench scale`` meets, and the response cost grows with it). Prints ms and old/new ratios measured in this same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_column_step.py --out benchmarks/reports/column_step.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from stride_assets.engine.backbone import make_site
from stride_assets.engine.column_logits import ColumnLogits, loss_gradient
from stride_assets.engine.operators import OperatorBank

HEADS = {"tiny default": (2048, 128), "GPT-2 124M": (50257, 768)}
K, RANK, COLUMNS, T, N, BATCH, QB = 48, 48, 1024, 64, 256, 32, 16
POOL = 4096  # every operator's columns drawn from one pool of this many tokens (all of a small vocabulary)


def best_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def setup(V: int, d: int):
    gen = torch.Generator().manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=d, n_layer=1, n_head=4, n_positions=T,
                                       bos_token_id=0, eos_token_id=0)).eval()
    site = make_site(model, "logit")
    feats = torch.randn(N, T, d, generator=gen)
    ids = torch.randint(0, V, (N, T), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    bank = OperatorBank(K, d, V, RANK, columns=COLUMNS, init_scale=1e-2)
    pool = torch.randperm(V, generator=gen)[:min(V, POOL)]  # the tokens a shard's members predict (an assumption)
    bank.set_columns(torch.stack([pool[torch.randperm(pool.numel(), generator=gen)[:COLUMNS]] for _ in range(K)]))
    bank.set_feature_stats(feats)
    return site, feats, batch, bank


def step_ms(site, feats, batch, bank, cache_bytes: int | None, repeat: int) -> float:
    losses = ColumnLogits(site, bank, feats) if cache_bytes is None else ColumnLogits(site, bank, feats, cache_bytes)
    opt = torch.optim.Adam(bank.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        i, j = torch.randint(0, N, (2, BATCH), generator=gen)
        k, k2 = torch.randint(0, K, (2, BATCH), generator=gen)
        sub = {name: value[i] for name, value in batch.items()}
        other = {name: value[j] for name, value in batch.items()}
        loss = losses.fidelity(feats[i], sub, i, k) + losses.stability(feats[j], other, j, k2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_ms(step, repeat), losses.p is not None


def responses_ms(site, feats, batch, bank, repeat: int) -> tuple[float, float, float]:
    f, b = feats[:QB], {name: value[:QB] for name, value in batch.items()}
    with torch.no_grad():
        lse = torch.logsumexp(site.logits(f, b), dim=-1)

    def vocabulary() -> torch.Tensor:
        shift = torch.zeros(*f.shape[:-1], site.out_dim, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(site.example_loss(site.logits(f, b, shift), b).sum(), shift)
        with torch.no_grad():
            return -bank.contract(torch.einsum("ntr,ntc->nrc", bank.codes(f), grad))

    def columns() -> torch.Tensor:
        with torch.no_grad():
            cols, grad = loss_gradient(site, bank, f, b, lse)
            return -bank.contract(torch.einsum("ntr,ntc->nrc", bank.codes(f), grad), columns=cols)

    diff = float((vocabulary() - columns()).abs().max() / vocabulary().abs().max())
    return best_ms(vocabulary, repeat) / QB, best_ms(columns, repeat) / QB, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    report = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_column_step.py", "threads":
              torch.get_num_threads(), "shapes": dict(K=K, rank=RANK, columns=COLUMNS, T=T, shard=N, batch=BATCH,
                                                      query_batch=QB, column_pool=POOL), "heads": {}}
    for name, (V, d) in HEADS.items():
        site, feats, batch, bank = setup(V, d)
        before, _ = step_ms(site, feats, batch, bank, 0, args.repeat)
        after, kept = step_ms(site, feats, batch, bank, None, args.repeat)
        vocab_q, cols_q, diff = responses_ms(site, feats, batch, bank, args.repeat)
        row = {"vocab": V, "d_model": d, "step_ms_computed": before, "step_ms_default": after,
               "probabilities_kept": kept, "step_ratio": before / after, "responses_ms_per_query_vocabulary":
               vocab_q, "responses_ms_per_query_columns": cols_q, "responses_ratio": vocab_q / cols_q,
               "responses_max_rel_difference": diff}
        report["heads"][name] = row
        print(f"{name} (V {V:,}, d {d}): training step {before:.1f} ms computed -> {after:.1f} ms "
              f"{'kept' if kept else 'computed (over the cache limit)'} ({before / after:.2f}x); responses per query "
              f"per shard {vocab_q:.2f} ms over the vocabulary -> {cols_q:.2f} ms at the columns "
              f"({vocab_q / cols_q:.2f}x, max relative difference {diff:.1e})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
