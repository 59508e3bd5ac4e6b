"""dattri's TRAK (1 and 5 independently trained models) and dattri's own LDS, as a cross-check.

dattri is an optional dependency (``pip install dattri==0.3.0``); it is imported only when one
of these functions runs, and a clear ImportError says how to install it otherwise.

TRAK is set up as in dattri's examples: the model output is the margin
log(p / (1 - p)) with p = exp(-loss) (for a sequence, p is exp of minus its mean token loss),
used both for the training and the query gradients, and the correct-class probability gives
TRAK's 1 - p reweighting. dattri returns (n_train, n_test) scores where a positive score means
training on the example raises the query's margin, i.e. lowers its loss: our sign, transposed.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from stride_assets.engine.backbone import Batch, BatchRows
from stride_assets.engine.evaluation.methods.base import Clock, MethodResult
from stride_assets.engine.evaluation.task import Task, Trained

INSTALL_HINT = "the dattri baselines need the optional dependency dattri: pip install dattri==0.3.0"


def dattri_available() -> bool:
    try:
        import dattri  # noqa: F401
    except ImportError:
        return False
    return True


def _require_dattri() -> None:
    if not dattri_available():
        raise ImportError(INSTALL_HINT)


def _loader(batch: Batch, batch_size: int) -> DataLoader:
    return DataLoader(BatchRows(batch), batch_size=batch_size, shuffle=False)


def _margin_functions(task: Task, model: nn.Module) -> tuple[Callable, Callable]:
    """TRAK's model output (margin) and correct-class probability from the task's example loss."""
    loss_fn = task.functional_loss(model)

    def margin(params: dict[str, torch.Tensor], example: Batch) -> torch.Tensor:
        loss = loss_fn(params, example).clamp_min(1e-12)
        return -loss - torch.log(-torch.expm1(-loss))

    def probability(params: dict[str, torch.Tensor], example: Batch) -> torch.Tensor:
        return torch.exp(-loss_fn(params, example))

    return margin, probability


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """dattri's TRAK draws tqdm bars on stderr for every pass; silence them for the block."""
    import dattri.algorithm.trak as trak_module

    original = trak_module.tqdm
    trak_module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        trak_module.tqdm = original


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trak(task: Task, trained: Trained, split: str, models: int = 1, proj_dim: int = 2048, regularization: float = 0.1,
         proj_seed: int = 0, first_extra_seed: int = 101, batch_size: int = 256) -> MethodResult:
    """dattri ``TRAKAttributor`` over ``models`` independently trained models (scores averaged).

    The first model is ``trained.model``; the other ``models - 1`` are trained with
    ``task.train(seed=first_extra_seed + j)``, and their training time is one-time cost.
    ``regularization`` is dattri's ridge on Phi^T Phi, absolute (dattri scales gradients by
    1 / sqrt(#params)); with n < proj_dim, 0 leaves a singular system (digits: LDS 0.03 at 0,
    0.68 at 0.1 on validation). Tune it on validation.
    """
    _require_dattri()
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    clock = Clock()
    with clock("one_time"):
        states = [_state(trained.model)]
        for j in range(models - 1):
            states.append(_state(task.train(None, seed=first_extra_seed + j).model))
        # dattri loads every checkpoint into the task's model: give it a private copy.
        # dattri takes the parameters that require grad; trained models may come back frozen.
        work = copy.deepcopy(trained.model).eval().requires_grad_(True)
        margin, probability = _margin_functions(task, work)
        attribution_task = AttributionTask(loss_func=margin, model=work, checkpoints=states)
        projector = {"proj_dim": int(proj_dim), "proj_max_batch_size": 32, "proj_seed": int(proj_seed), "device": "cpu"}
        attributor = TRAKAttributor(attribution_task, correct_probability_func=probability,
                                    projector_kwargs=projector, device="cpu", regularization=float(regularization))
        with torch.no_grad(), _no_progress_bars():
            attributor.cache(_loader(task.train_batch(None), batch_size))
    with clock("per_query"), torch.no_grad(), _no_progress_bars():
        scores = attributor.attribute(_loader(task.query_batch(split), batch_size)).T
    settings: dict[str, Any] = {"models": models, "proj_dim": proj_dim, "regularization": regularization,
                                "proj_seed": proj_seed, "first_extra_seed": first_extra_seed, "batch_size": batch_size}
    return clock.result(scores, settings)


def dattri_trak_1(task: Task, trained: Trained, split: str, **settings: Any) -> MethodResult:
    """dattri's TRAK on the final model alone."""
    return trak(task, trained, split, models=1, **settings)


def dattri_trak_5(task: Task, trained: Trained, split: str, **settings: Any) -> MethodResult:
    """dattri's TRAK ensembled over the final model and 4 more trained with other seeds."""
    return trak(task, trained, split, models=5, **settings)


def dattri_lds(scores: np.ndarray, subsets: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Per-query LDS (Q,) by dattri's ``metric.lds`` on our arrays.

    scores (Q, n) in our sign, subsets (m, n) bool of equal sizes, retrained losses (m, Q). dattri
    correlates summed scores with a target value, so the target is -loss (as in ``lds.py``).
    """
    _require_dattri()
    from dattri.metric import lds

    subsets = np.asarray(subsets, dtype=bool)
    sizes = subsets.sum(1)
    if len(set(sizes.tolist())) != 1:
        raise ValueError(f"dattri's lds needs subsets of one size, got sizes {sorted(set(sizes.tolist()))}")
    indices = torch.as_tensor(np.stack([np.flatnonzero(row) for row in subsets]))
    target = torch.as_tensor(-np.asarray(losses, dtype=np.float64))
    corr, _ = lds(torch.as_tensor(np.asarray(scores, dtype=np.float64)).T, (target, indices))
    return corr.numpy()
