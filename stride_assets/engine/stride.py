"""STRIDE in four explicit phases on a frozen model, each timed:

    cache_features  the frozen model's activations at the steering site, once per example
    fit_operators   one operator per subset of the design, trained on the cached features
    measure         the response (perturbation) matrix Y[q, k] = loss_base(q) - loss_k(q)
    recover         per-query sparse recovery (Lasso) of per-example influence from Y and M

    from stride_assets.engine.stride import Stride
    stride = Stride(site, cfg)                      # site: backbone.make_site(model, form, layer)
    feats = stride.cache_features(batch)
    bank, log = stride.fit_operators(feats, batch, design)
    Y = stride.measure(bank, query_batch)
    influence = stride.recover(Y, design.membership).influence
    stride.seconds                                  # {"cache": ..., "fit": ..., "measure": ..., "recover": ...}

The pipeline stages, ``stride attribute``, the quality harness and the cost benchmark all run
STRIDE through this class; they differ only in where the batches come from and where the
results go.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from stride_assets.engine.backbone import Batch, Site, encode_all, take
from stride_assets.engine.config import StrideConfig, TrainConfig
from stride_assets.engine.design import SubsetDesign
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.losses import shift_targets
from stride_assets.engine.measure import responses
from stride_assets.engine.operators import OperatorBank, member_columns, top_direction_energy
from stride_assets.engine.recovery import Recovery, recover
from stride_assets.engine.training import TrainLog, train_operators

PHASES = ("cache", "fit", "measure", "recover")
DIAGNOSTIC_PROBES = 64


@contextmanager
def accumulate(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Adds the wall seconds of the block to ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] += time.perf_counter() - start


MAX_DENSE_OUTPUTS = 16_384  # a dense logit-form operator over more outputs than this is refused


def check_dense_size(site: Site, oc) -> None:
    """The vocabulary-sized form (an r x V matrix per operator) only below ``MAX_DENSE_OUTPUTS`` outputs."""
    if site.form == "logit" and oc.output_rank is None and site.out_dim > MAX_DENSE_OUTPUTS:
        raise StrideConfigError(
            f"operators.form: logit without operators.columns makes every operator {oc.rank} x {site.out_dim} (the "
            f"vocabulary), over the {MAX_DENSE_OUTPUTS:,} outputs allowed: set operators.columns (e.g. 1024: each "
            "operator on the tokens its members predict) or operators.form: head")


def targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's target outputs and their mask: next tokens of an LM batch, the label of a classifier's."""
    if "input_ids" in batch:
        return shift_targets(batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))
    y = batch["y"].reshape(-1, 1)
    return y, torch.ones_like(y)


@dataclass
class Stride:
    """STRIDE on one steering site of a frozen model, with the settings of a ``StrideConfig``.

    ``training`` overrides ``cfg.training`` (the pipeline gives each shard its own seed and steps).
    ``site`` may be None for the recover phase alone, which needs no model.
    """

    site: Site | None
    cfg: StrideConfig
    training: TrainConfig | None = None
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def __post_init__(self) -> None:
        self.training = self.training or self.cfg.training

    def phase(self, name: str):
        """A block timed into ``seconds[name]``."""
        return accumulate(self.seconds, name)

    def cache_features(self, batch: Batch) -> torch.Tensor:
        """Phase 1: the site's features of every example (the frozen layers below never run again)."""
        with self.phase("cache"):
            return encode_all(self.site, batch)

    def columns(self) -> int | None:
        """Outputs each operator keeps: ``operators.columns`` in the logit form (at most C), else all (None)."""
        oc = self.cfg.operators
        return min(oc.columns, self.site.out_dim) if oc.columns and self.site.form == "logit" else None

    def new_bank(self, K: int, columns: int | None = None) -> OperatorBank:
        oc = self.cfg.operators
        return OperatorBank(K, self.site.in_dim, self.site.out_dim, oc.rank, oc.basis, oc.mlp_hidden, oc.init_scale,
                            self.training.seed, columns, oc.output_rank, oc.background and columns is not None)

    def _bank_for(self, design: SubsetDesign, batch: Batch) -> OperatorBank:
        """A new bank for ``design``; with columns, each operator on the tokens its members predict most."""
        cap = self.columns()
        if cap is None:
            check_dense_size(self.site, self.cfg.operators)
            return self.new_bank(design.K)
        index = member_columns(design.membership, *targets(batch), self.site.out_dim, cap)
        return self.new_bank(design.K, index.shape[1]).set_columns(index)

    def fit_operators(self, feats: torch.Tensor, batch: Batch, design: SubsetDesign,
                      log: Callable[[str], None] = print) -> tuple[OperatorBank, TrainLog]:
        """Phase 2: one operator per subset of ``design`` (shared basis + per-subset matrices)."""
        with self.phase("fit"):
            bank = self._bank_for(design, batch).to(feats.device)
            bank.set_feature_stats(feats, batch.get("attention_mask"))
            trainlog = train_operators(self.site, bank, feats, batch, design, self.training, log)
        return bank, trainlog

    def measure(self, bank: OperatorBank, batch: Batch, progress: Callable[[int, int], None] | None = None,
                feats: torch.Tensor | None = None, lse: torch.Tensor | None = None) -> np.ndarray:
        """Phase 3: the (queries x K) response matrix of ``batch`` to the bank's operators (``feats``: the
        queries' features at the site, ``cache_features``, and ``lse`` their base log-normalisers on the
        logit site, ``base_pass``: both shared by every shard's bank)."""
        mc = self.cfg.measure
        with self.phase("measure"):
            return responses(self.site, bank, batch, mc.mode, mc.query_batch, mc.operator_chunk, progress=progress,
                             feats=feats, lse=lse)

    def recover(self, Y: np.ndarray, membership: sp.csr_matrix, recovery=None) -> Recovery:
        """Phase 4: per-query Lasso of ``Y`` against the membership matrix (``recovery`` overrides the settings)."""
        with self.phase("recover"):
            return recover(Y, membership, recovery or self.cfg.recovery)

    def base_losses(self, batch: Batch, feats: torch.Tensor | None = None) -> np.ndarray:
        """Each example's loss under the frozen model (``base_pass``)."""
        return self.base_pass(batch, feats)[0]

    @torch.no_grad()
    def base_pass(self, batch: Batch, feats: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor | None]:
        """Each example's loss under the frozen model and, on the logit site, every token's log-normaliser
        (N, T) (what a column bank's first-order responses read), in the measurement's query chunks (all
        logits at once can take GBs), from the examples' features at the site when given."""
        chunk, site = self.cfg.measure.query_batch, self.site
        n = batch["input_ids"].shape[0]
        losses, lse = [], []
        for start in range(0, n, chunk):
            index = torch.arange(start, min(start + chunk, n), device=batch["input_ids"].device)
            sub = take(batch, index)
            f = site.encode(sub) if feats is None else feats[index]
            logits = site.logits(f, sub)
            losses.append(site.example_loss(logits, sub).cpu())
            if site.form == "logit":
                lse.append(torch.logsumexp(logits, dim=-1))
        return torch.cat(losses).numpy(), torch.cat(lse) if lse else None

    def diagnostics(self, bank: OperatorBank, batch: Batch, design: SubsetDesign, seed: int) -> dict[str, float]:
        """Collapse and fit diagnostics on a probe of training examples (not timed as a phase).

        member_gap_z: mean over probes of (mean response of member operators - mean of the others)
        in units of the probe's response std; > 0 means operators favour their own members.
        """
        mc = self.cfg.measure
        rng = np.random.default_rng(seed)
        probe = np.sort(rng.choice(design.n, size=min(DIAGNOSTIC_PROBES, design.n), replace=False))
        Y = responses(self.site, bank, take(batch, torch.as_tensor(probe, device=batch["input_ids"].device)),
                      mc.mode, mc.query_batch, mc.operator_chunk)
        member = design.membership[:, probe].T.toarray().astype(bool)
        std = Y.std(axis=1) + 1e-12
        gap = np.array([Y[i, member[i]].mean() - Y[i, ~member[i]].mean() for i in range(len(probe))]) / std
        cv = float(np.mean(Y.std(axis=1) / (np.abs(Y.mean(axis=1)) + 1e-12)))
        return {"member_gap_z": float(gap.mean()), "top_direction_energy": top_direction_energy(bank),
                "response_cv": cv}
