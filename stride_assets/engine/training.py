"""Operator training on cached features: fidelity on members, stability on non-members.

Each step takes ``batch_size`` (subset, member) pairs in a seeded, epoch-wise shuffled order
(so every member pair is seen equally often) and as many random (subset, non-member) pairs, or
``stability_batch_size`` of them:

    loss = w_f * NLL(steered_k on members of k)
         + w_s * KL(base || steered_k on non-members of k)
         + w_l * || P y - y ||^2        (optional linearity, P = Mt (Mt^T Mt + g I)^-1 Mt^T, Mt = M R)
         + w_d * || W^T A_k ||^2        (optional damping: the weight change of the member pairs' operators,
                                          as an influence function's damping term lambda ||delta theta||^2)

The frozen model's features come from the cache; only the layers above the hook (activation
form) or the output head (logit form) run, and no gradient reaches the model's weights.

Training shorter than ``MIN_MEMBER_EPOCHS`` passes over the n * d member pairs (steps * batch_size
/ (n * d), ``member_epochs``) leaves most operators barely fitted: ``train_operators`` then warns
(``UndertrainedOperatorsWarning``, also through its log) and names the settings to raise.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from stride_assets.engine import column_logits
from stride_assets.engine.backbone import Batch, Site, take
from stride_assets.engine.config import TrainConfig
from stride_assets.engine.design import SubsetDesign
from stride_assets.engine.lm import warmup_cosine
from stride_assets.engine.losses import check_finite
from stride_assets.engine.measure import first_order
from stride_assets.engine.operators import OperatorBank

MIN_MEMBER_EPOCHS = 2.0  # fewer passes over the member pairs than this: a warning


class UndertrainedOperatorsWarning(UserWarning):
    """Operator training makes too few passes over the design's member pairs."""


def member_epochs(steps: int, batch_size: int, n: int, d: int) -> float:
    """Passes over the n * d (subset, member) pairs that ``steps`` steps of ``batch_size`` pairs make."""
    return steps * batch_size / max(1, n * d)


def steps_for_epochs(epochs: float, batch_size: int, n: int, d: int) -> int:
    """Steps of ``batch_size`` pairs that make ``epochs`` passes over the n * d member pairs (at least 1)."""
    return max(1, math.ceil(epochs * n * d / batch_size))


def warn_if_undertrained(cfg: TrainConfig, n: int, d: int, log: Callable[[str], None]) -> float:
    """The epochs of member pairs ``cfg`` gives a design of n examples in d subsets each; a warning
    (log and ``warnings``) when they are under ``MIN_MEMBER_EPOCHS``."""
    epochs = member_epochs(cfg.steps, cfg.batch_size, n, d)
    if cfg.steps > 0 and epochs < MIN_MEMBER_EPOCHS:
        need = steps_for_epochs(MIN_MEMBER_EPOCHS, cfg.batch_size, n, d)
        msg = (f"operator training sees each member pair {epochs:.2f} times (training.steps {cfg.steps} x "
               f"training.batch_size {cfg.batch_size} / (n {n} x design.d {d})), under {MIN_MEMBER_EPOCHS:g}: "
               f"the operators will underfit. Raise training.steps to at least {need}; in the pipeline, "
               f"training.epochs >= {MIN_MEMBER_EPOCHS:g} instead makes each shard's steps follow its size.")
        log(f"warning: {msg}")
        warnings.warn(msg, UndertrainedOperatorsWarning, stacklevel=3)
    return epochs


@dataclass
class TrainLog:
    """Loss curves (one row per logged step) and wall time."""

    rows: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def curve(self, key: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[key])) for r in self.rows if key in r]


class PairSampler:
    """Member pairs in shuffled epochs; non-member pairs by rejection sampling."""

    def __init__(self, design: SubsetDesign, seed: int):
        self.rng = np.random.default_rng(seed)
        self.subsets, self.examples = design.member_table()
        self.K, self.n = design.K, design.n
        self._codes = np.sort(self.subsets * self.n + self.examples)
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0
        self.epochs = 0.0

    def members(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        picked = []
        while size > 0:
            if self._pos >= len(self._order):
                self._order, self._pos = self.rng.permutation(len(self.subsets)), 0
            take_n = min(size, len(self._order) - self._pos)
            picked.append(self._order[self._pos : self._pos + take_n])
            self._pos += take_n
            size -= take_n
        idx = np.concatenate(picked)
        self.epochs += len(idx) / len(self.subsets)
        return self.subsets[idx], self.examples[idx]

    def is_member(self, subsets: np.ndarray, examples: np.ndarray) -> np.ndarray:
        codes = subsets * self.n + examples
        pos = np.clip(np.searchsorted(self._codes, codes), 0, len(self._codes) - 1)
        return self._codes[pos] == codes

    def non_members(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        examples = self.rng.integers(0, self.n, size)
        subsets = self.rng.integers(0, self.K, size)
        bad = self.is_member(subsets, examples)
        while bad.any():
            subsets[bad] = self.rng.integers(0, self.K, int(bad.sum()))
            bad = self.is_member(subsets, examples)
        return subsets, examples


class RowAdam:
    """Lazy Adam over the operator matrices: only the rows (operators) used in a step move.

    With AdamW over the whole (K, r, C) tensor, every operator moves every step (its moments keep
    it moving after its gradient is gone) and the update costs a pass over all K*r*C entries
    although a step touches at most 2 * batch_size operators. Here each operator keeps its own
    step count for bias correction and is updated only when one of its pairs was sampled.
    """

    def __init__(self, param: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.param, self.betas, self.eps, self.weight_decay = param, betas, eps, weight_decay
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=torch.long, device=param.device)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, lr: float) -> None:
        rows = torch.unique(rows.to(self.param.device))
        b1, b2 = self.betas
        g = self.param.grad[rows]
        self.t[rows] += 1
        shape = (-1,) + (1,) * (self.param.ndim - 1)
        t = self.t[rows].to(self.param.dtype).view(shape)
        m = self.m[rows].mul_(b1).add_(g, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(g, g, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)
        rows_now = self.param[rows]
        if self.weight_decay:
            rows_now.mul_(1 - lr * self.weight_decay)
        self.param[rows] = rows_now - lr * update


def linearity_projector(design: SubsetDesign, sketch: int, ridge: float, seed: int) -> torch.Tensor:
    """P = Mt (Mt^T Mt + g I)^-1 Mt^T with the JL sketch Mt = M R (K x q)."""
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((design.n, sketch)) / np.sqrt(sketch)
    Mt = np.asarray(design.membership @ R)
    P = Mt @ np.linalg.solve(Mt.T @ Mt + ridge * np.eye(sketch), Mt.T)
    return torch.as_tensor(P, dtype=torch.float32)


class SiteLosses:
    """Fidelity and stability of ``bank`` from the site's full outputs (any form; ``column_logits`` is the
    vocabulary-free twin for column banks on the logit site). ``rows`` (the examples' positions in the
    training cache) is unused here."""

    def __init__(self, site: Site, bank: OperatorBank):
        self.site, self.bank = site, bank

    def fidelity(self, feats: torch.Tensor, batch: Batch, rows: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """Mean over the pairs of the members' steered losses."""
        site = self.site
        return site.example_loss(site.logits(feats, batch, self.bank.shift(feats, ops)), batch).mean()

    def stability(self, feats: torch.Tensor, batch: Batch, rows: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
        """KL(base || steered) on the non-member pairs."""
        site = self.site
        with torch.no_grad():
            base = site.logits(feats, batch)
        return site.kl(base, site.logits(feats, batch, self.bank.shift(feats, ops)), batch)


def train_operators(
    site: Site,
    bank: OperatorBank,
    feats: torch.Tensor,
    batch: Batch,
    design: SubsetDesign,
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> TrainLog:
    """Train ``bank`` in place on the cached features of the n training examples."""
    torch.manual_seed(cfg.seed)
    sampler = PairSampler(design, cfg.seed)
    warn_if_undertrained(cfg, design.n, design.d, log)
    lazy = cfg.optimizer == "lazy_adam"
    params = [p for p in bank.parameters() if p.requires_grad and not (lazy and p is bank.A)]
    # fused: one pass per tensor instead of ~six (measured 4x on the default bank's 2.4M entries on one core)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    row_opt = RowAdam(bank.A, weight_decay=cfg.weight_decay) if lazy else None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.steps))
    projector = (
        linearity_projector(design, cfg.linearity_sketch, cfg.linearity_ridge, cfg.seed)
        if cfg.linearity_weight > 0
        else None
    )
    losses = (column_logits.ColumnLogits(site, bank, feats, batch=batch,
                                         pairs=(torch.as_tensor(sampler.subsets), torch.as_tensor(sampler.examples)))
              if column_logits.applies(site, bank) else SiteLosses(site, bank))
    out = TrainLog()
    start = time.perf_counter()
    bank.train()
    for step in range(cfg.steps):
        terms: dict[str, torch.Tensor] = {}
        k, i = (torch.as_tensor(a) for a in sampler.members(cfg.batch_size))
        touched = [k]
        terms["fidelity"] = losses.fidelity(feats[i], take(batch, i), i, k)
        if cfg.non_member_pairs:
            k2, j = (torch.as_tensor(a) for a in sampler.non_members(cfg.non_member_pairs))
            touched.append(k2)
            terms["stability"] = losses.stability(feats[j], take(batch, j), j, k2)
        if cfg.damping_weight > 0:
            terms["damping"] = bank.damping(k)
        if projector is not None:
            probe = torch.as_tensor(sampler.rng.integers(0, design.n, cfg.linearity_batch))
            y = first_order(site, bank, feats[probe], take(batch, probe), differentiable=True)  # (B, K)
            terms["linearity"] = ((y @ projector.T - y) ** 2).sum(-1).mean()
        weights = {"fidelity": cfg.fidelity_weight, "stability": cfg.stability_weight,
                   "linearity": cfg.linearity_weight, "damping": cfg.damping_weight}
        loss = check_finite(sum(weights[n] * t for n, t in terms.items()), f"operator loss at step {step}")
        opt.zero_grad(set_to_none=True)
        bank.A.grad = None
        loss.backward()
        if row_opt is not None:  # the linearity term reaches every operator: then every row is touched
            row_opt.step(torch.arange(bank.K) if projector is not None else torch.cat(touched), sched.get_last_lr()[0])
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {"step": float(step), "loss": loss.item(), "epochs": sampler.epochs}
            row.update({n: t.item() for n, t in terms.items()})
            out.rows.append(row)
            log(
                f"operators step {step + 1}/{cfg.steps}: "
                + " ".join(f"{n}={v:.4f}" for n, v in row.items() if n != "step")
            )
    bank.eval()
    out.seconds = time.perf_counter() - start
    return out
