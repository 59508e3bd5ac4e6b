"""Column banks on the logit site, old path vs new in one run (issue 11):

- a training step (fidelity on 32 member pairs of a drawn design + stability on 8 random pairs, backward,
  fused AdamW as ``training.train_operators``) with the base probabilities computed from the head every step
  (``cache_bytes=0``), kept for the whole shard (the default when they fit: a small vocabulary), and kept for
  the member pairs only (the default when only they fit: a big vocabulary);
- a shard's first-order responses per query: the full-vocabulary gradient by autograd (as before) vs the
  gradient at the bank's columns only from the stored log-normalisers (``column_logits.loss_gradient``).

Shapes of the default profile as it was when `column_step.json` was made (7122e7d: K 48 per shard of 256, d 8;
the profile now has K 128 and d 6), rank 48, 512 columns, T 64, query batch 16, on the
tiny default's head (vocab 2,048, d 128) and GPT-2 124M's (50,257, 768); random features and weights (the
cost does not depend on their values); each operator's columns drawn from one pool of 4,096 tokens
(an assumption standing for the tokens a shard's passages predict; on real text the union is what
``stride bench scale`` meets, and the response cost grows with it). Prints ms and ratios measured in this same
run (each step variant timed in turns, the mean of each turn's steps).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_column_step.py --out benchmarks/reports/column_step.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from stride_assets.engine.backbone import make_site, take
from stride_assets.engine.column_logits import ColumnLogits, loss_gradient
from stride_assets.engine.design import draw_design
from stride_assets.engine.operators import OperatorBank
from stride_assets.engine.training import PairSampler

HEADS = {"tiny default": (2048, 128), "GPT-2 124M": (50257, 768)}
K, D, RANK, COLUMNS, T, N, BATCH, STABILITY, QB = 48, 8, 48, 512, 64, 256, 32, 8, 16
STEPS_PER_TURN = 10
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


def step_ms(site, feats, batch, bank, repeat: int) -> dict[str, float]:
    """Mean ms per training step with the probabilities computed and as the default keeps them (for the shard,
    or, where those do not fit, for the member pairs: on a small vocabulary the shard's are the smaller)."""
    design = draw_design(N, K, D, seed=0)
    pairs = tuple(torch.as_tensor(a) for a in design.member_table())
    default = ColumnLogits(site, bank, feats, pairs=pairs)
    kept = "kept for the shard" if default.p is not None else "kept for the member pairs" if default.pair_p is not None \
        else "computed (over the cache limit)"
    variants = {"computed": ColumnLogits(site, bank, feats, 0), kept: default}
    opt = torch.optim.AdamW([p for p in bank.parameters() if p.requires_grad], 1e-3, fused=True)
    sampler = PairSampler(design, seed=1)

    def step(losses) -> None:
        k, i = (torch.as_tensor(a) for a in sampler.members(BATCH))
        k2, j = (torch.as_tensor(a) for a in sampler.non_members(STABILITY))
        loss = (losses.fidelity(feats[i], take(batch, i), i, k) + losses.stability(feats[j], take(batch, j), j, k2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {name: [] for name in variants}
    for _ in range(repeat):
        for name, losses in variants.items():
            step(losses)  # warm-up
            start = time.perf_counter()
            for _ in range(STEPS_PER_TURN):
                step(losses)
            times[name].append(1e3 * (time.perf_counter() - start) / STEPS_PER_TURN)
    return {name: sum(t) / len(t) for name, t in times.items()}


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
              torch.get_num_threads(), "shapes": dict(K=K, d=D, rank=RANK, columns=COLUMNS, T=T, shard=N, batch=BATCH,
                                                      stability_batch=STABILITY, query_batch=QB, column_pool=POOL),
              "steps_per_turn": STEPS_PER_TURN, "turns": args.repeat, "heads": {}}
    for name, (V, d) in HEADS.items():
        site, feats, batch, bank = setup(V, d)
        steps = step_ms(site, feats, batch, bank, args.repeat)
        (kept, after), before = list(steps.items())[1], steps["computed"]
        vocab_q, cols_q, diff = responses_ms(site, feats, batch, bank, args.repeat)
        row = {"vocab": V, "d_model": d, "step_ms_computed": before, "step_ms_default": after,
               "probabilities": kept, "step_ratio": before / after, "responses_ms_per_query_vocabulary":
               vocab_q, "responses_ms_per_query_columns": cols_q, "responses_ratio": vocab_q / cols_q,
               "responses_max_rel_difference": diff}
        report["heads"][name] = row
        print(f"{name} (V {V:,}, d {d}): training step {before:.1f} ms computed -> {after:.1f} ms {kept} "
              f"({before / after:.2f}x); responses per query per shard {vocab_q:.2f} ms over the vocabulary -> "
              f"{cols_q:.2f} ms at the columns ({vocab_q / cols_q:.2f}x, max relative difference {diff:.1e})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
