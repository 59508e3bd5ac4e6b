"""EK-FAC influence functions through Kronfluence (Grosse et al. 2023), for any model stride attributes.

STRIDE's strongest peer, and the second attribution method of the pipeline (``attribution.method:
ekfac``). Kronfluence does the work (covariances, eigendecomposition, corrected eigenvalues,
preconditioned pairwise scores); this module only tells it what the model's loss is, which modules
to track, and where its factors live, so the pipeline and the quality harness share one path.

    influence = Influence(model, lm_objective, strategy="ekfac")
    influence.fit(train_batch, into=folder)          # once: the factors, into a folder
    scores = influence.scores(query_batch, train_batch, folder, damping=None)   # (Q, n)

An ``Objective`` turns a model and a batch into logits, targets and per-position weights (an LM:
one position per predicted token, weighted by the padding mask; a classifier: one position). The
training loss of an example is its weighted mean token NLL (as the base model was trained); the
Fisher uses targets sampled from the model (Kronfluence's true-Fisher default); the measurement is
the query's mean NLL. Sign: ``scores[q, i] > 0`` when upweighting example ``i`` lowers query ``q``'s
loss (stride's convention, and Kronfluence's).

Strategies: ``ekfac``, ``kfac``, ``diagonal`` (Kronfluence's names; ``identity`` is plain gradient
dot products). ``damping=None`` is Kronfluence's heuristic (0.1 x the mean eigenvalue).
GPT-2's ``Conv1D`` layers are converted to ``nn.Linear`` on a copy of the model (Kronfluence tracks
Linear and Conv2d only; the outputs are unchanged).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stride_assets.engine.backbone import Batch, BatchRows
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.losses import shift_targets

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
FACTORS_NAME = "factors"

Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _cropped(batch: Batch) -> Batch:
    """A token batch cut to its longest real sequence (right padding)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}


def lm_objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token prediction: logits (N, T-1, V), targets (N, T-1), weights (padding mask; with a
    ``loss_mask``, only the scored completion tokens)."""
    batch = _cropped(batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets, weights = shift_targets(ids, mask, batch.get("loss_mask"))
    return logits, targets, weights.to(logits.dtype)


def classifier_objective(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classification of ``x`` into ``y``: one position per example."""
    logits = model(batch["x"]).unsqueeze(1)
    return logits, batch["y"].unsqueeze(1), torch.ones(logits.shape[:2], dtype=logits.dtype)


def _mean_nll(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each example's weighted mean token NLL, (N,)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
    return (nll * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _kronfluence_task(objective: Objective, modules: list[str] | None):
    from kronfluence.task import Task

    class _Task(Task):
        def compute_train_loss(self, batch: Batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
            logits, targets, weights = objective(model, batch)
            if sample:
                with torch.no_grad():
                    targets = torch.distributions.Categorical(logits=logits.detach().float()).sample()
            return _mean_nll(logits, targets, weights).sum()

        def compute_measurement(self, batch: Batch, model: nn.Module) -> torch.Tensor:
            return _mean_nll(*objective(model, batch)).sum()

        def get_influence_tracked_modules(self) -> list[str] | None:
            return modules

        def get_attention_mask(self, batch: Batch) -> torch.Tensor | None:
            return _cropped(batch)["attention_mask"] if "attention_mask" in batch else None

    return _Task()


def linearized(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` with transformers' ``Conv1D`` layers (GPT-2) as ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    out = copy.deepcopy(model).eval()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, dtype=child.weight.dtype, device=child.weight.device)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


MAX_FACTOR_SIDE = 16_384  # a tracked layer's larger covariance side: 16k x 16k float32 = 1 GiB per factor


def tracked_modules(model: nn.Module, include_head: bool = True, strategy: str = "ekfac") -> list[str]:
    """Names of the ``nn.Linear`` layers Kronfluence will track (the output head too, unless excluded).

    EK-FAC keeps an (in x in) and an (out x out) covariance and their eigenvectors per layer: a layer
    with a side above ``MAX_FACTOR_SIDE`` (an output head over a real vocabulary: 50,257 for GPT-2,
    40 GB of factors) is refused with the setting to change, before any work."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and (include_head or m is not head)]
    if not chosen:
        raise StrideConfigError(f"{type(model).__name__} has no nn.Linear layer for EK-FAC to track")
    for name, m in chosen if strategy in ("ekfac", "kfac") else ():
        if max(m.in_features, m.out_features) > MAX_FACTOR_SIDE:
            fix = "set attribution.include_head: false" if m is head else "use attribution.strategy: diagonal"
            raise StrideConfigError(
                f"EK-FAC on layer {name!r} ({m.in_features} -> {m.out_features}) needs covariances of side "
                f"{max(m.in_features, m.out_features):,} (over {MAX_FACTOR_SIDE:,}: several GB each): {fix}")
    return [name for name, _ in chosen]


@dataclass
class Influence:
    """Kronfluence on one frozen model: ``fit`` writes its factors into a folder, ``scores`` reads them."""

    model: nn.Module
    objective: Objective
    strategy: str = "ekfac"
    include_head: bool = True
    batch_size: int = 32
    query_batch_size: int = 16
    seed: int = 0  # the Fisher's sampled targets

    def __post_init__(self) -> None:
        from kronfluence.analyzer import prepare_model

        if self.strategy not in STRATEGIES:
            raise StrideConfigError(f"influence strategy {self.strategy!r} not one of {STRATEGIES}")
        model = linearized(self.model)
        self._task = _kronfluence_task(self.objective, tracked_modules(model, self.include_head, self.strategy))
        self._model = prepare_model(model, self._task)

    def _analyzer(self, workdir: Path):
        from kronfluence.analyzer import Analyzer

        device = next(self._model.parameters()).device
        return Analyzer(analysis_name=ANALYSIS, model=self._model, task=self._task, cpu=device.type == "cpu",
                        disable_tqdm=True, output_dir=str(workdir), log_level=logging.WARNING)

    def fit(self, train: Batch, into: Path) -> Path:
        """Fit the factors on ``train`` (covariances, eigenbasis, corrected eigenvalues) into folder ``into``.

        The Fisher's targets are sampled from the model with ``seed``: without it they came from the process's
        global RNG, so the same run gave different factors depending on what ran before (breast cancer: EK-FAC
        LDS 0.768 in one bench run, 0.727 in another)."""
        from kronfluence.arguments import FactorArguments

        into = Path(into)
        device = next(self._model.parameters()).device
        with tempfile.TemporaryDirectory(prefix="kronfluence_", dir=into.parent) as work, _quiet(), \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the same factors whatever ran before; the caller's RNG is left as it was
            self._analyzer(Path(work)).fit_all_factors(
                factors_name=FACTORS_NAME, dataset=BatchRows(train), per_device_batch_size=self.batch_size,
                factor_args=FactorArguments(strategy=self.strategy), overwrite_output_dir=True)
            if into.exists():
                shutil.rmtree(into)
            shutil.move(str(_factors_in(Path(work))), str(into))
        return into

    def scores(self, queries: Batch, train: Batch, factors: Path, damping: float | None = None) -> np.ndarray:
        """Pairwise influence (Q, n) of every training example on every query, with the factors in ``factors``."""
        from kronfluence.arguments import ScoreArguments

        factors = Path(factors)
        if not (factors / "factor_arguments.json").exists():
            raise StrideConfigError(f"no Kronfluence factors in {factors}: fit them first")
        with tempfile.TemporaryDirectory(prefix="kronfluence_scores_") as work, _quiet():
            link = _factors_in(Path(work))
            link.parent.mkdir(parents=True)
            link.symlink_to(factors.resolve(), target_is_directory=True)
            analyzer = self._analyzer(Path(work))
            analyzer.compute_pairwise_scores(
                scores_name="scores", factors_name=FACTORS_NAME, query_dataset=BatchRows(queries),
                train_dataset=BatchRows(train), per_device_query_batch_size=self.query_batch_size,
                per_device_train_batch_size=self.batch_size, score_args=ScoreArguments(damping_factor=damping),
                overwrite_output_dir=True)
            return analyzer.load_pairwise_scores("scores")["all_modules"].double().cpu().numpy()


ANALYSIS = "stride"


def _factors_in(workdir: Path) -> Path:
    """Where Kronfluence puts the factors of an analysis under its output folder."""
    return workdir / ANALYSIS / f"factors_{FACTORS_NAME}"


@contextmanager
def _quiet() -> Iterator[None]:
    """Kronfluence 1.0.1 calls the deprecated torch.cuda.amp.GradScaler: silence that FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
