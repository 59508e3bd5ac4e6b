"""EleutherAI's Bergson (2.5.1) as harness peers: its EK-FAC influence function and its TrackStar.

Bergson is an optional dependency, imported only when one of these methods runs. Its declared
dependencies (torchvision, torchaudio, bitsandbytes, ...) would replace the CPU torch build, so it is
installed without them (``pyproject.toml``'s ``bergson`` extra; nothing here imports those packages)::

    uv pip install --no-deps bergson==2.5.1 peft==0.21.2 torchopt==0.7.3 optree jaxtyping \\
        wadler-lindig ml-dtypes natsort petname simple-parsing graphviz==0.21

Bergson's pipelines (``bergson ekfac``, ``bergson trackstar``) load a Hugging Face causal LM and a
dataset by name and write every step to disk. Here its library pieces run in-process on the task's
trained model (a private copy) and token ids (a ``datasets.Dataset`` of ``input_ids``/``length``),
with the factors in a temporary folder, so that one fit serves every setting of the grid:

- gradients: ``InMemoryCollector`` + ``CollectorComputer`` over Bergson's batches of at most
  ``token_batch_size`` tokens; the loss of a document is its mean next-token NLL
  (``loss_reduction="mean"``, the task's per-sequence loss; Bergson's default is the sum);
- ``bergson_ekfac``: ``fit_factored_hessians`` (KFAC covariances + eigenvalue correction, labels
  sampled from the model, Bergson's default), then ``H^-1`` applied to the query gradients by its
  ``FactoredPreconditioner`` and scored against the unprojected training gradients by its ``Scorer``;
- ``bergson_trackstar``: gradients randomly projected per module (16 x 16, Bergson's TrackStar
  default), the autocorrelation Hessian of the training gradients, ``H^-1/2`` on both sides and unit
  normalisation (cosine), as ``bergson trackstar``'s scoring. Not reproduced: the query/train Hessian
  mixing (here the queries are drawn from the training distribution and few, the case Bergson's
  ``mix_hessians=False`` is for) and the Adam second-moment normaliser (the task's training keeps
  no optimizer state).

Bergson tracks the modules of ``model.base_model`` only: on GPT-2 the attention and MLP blocks, not
the (tied) output head, which Kronfluence's peers include (``../shared/docs/peers.md``).
``damping`` is Bergson's ``damping_factor`` of its ``damped_inverse``: ``1 / (lambda + damping x
mean(lambda))``, its default 0.1; it is chosen on the validation draw without refitting.

Only language-model tasks whose model is a Hugging Face causal LM are supported (Bergson feeds
``input_ids`` and reads ``.logits``); classifiers are left out of ``applicable``. Bergson's score is
positive for a proponent (training on the example lowers the query's loss): the harness's sign.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import tempfile
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.evaluation.methods.base import Clock, MethodResult
from stride_assets.engine.evaluation.task import Task, Trained

INSTALL_HINT = ("the bergson peers need the optional dependency bergson 2.5.1, installed without its dependencies "
                "(they would replace torch): uv pip install --no-deps bergson==2.5.1 peft==0.21.2 torchopt==0.7.3 "
                "optree jaxtyping wadler-lindig ml-dtypes natsort petname simple-parsing graphviz==0.21")
STRATEGIES = ("ekfac", "trackstar")
# 0.1 is Bergson's default; on pydoc-gpt validation LDS falls above 1e-3 (0.416 at 1e-3, 0.364 at 0.1, 0.316 at 1)
# and is flat below it (0.420 at 1e-5)
DAMPING_GRID = [{"damping": d} for d in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)]
# TrackStar as Bergson scores it (cosine) and without the unit normalisation (H^-1 inner product)
TRACKSTAR_GRID = [{"damping": d, "unit_normalize": u} for u in (True, False) for d in (1e-3, 1e-2, 1e-1, 1.0)]
GRIDS = {"bergson_ekfac": DAMPING_GRID, "bergson_trackstar": TRACKSTAR_GRID}


def bergson_available() -> bool:
    """Whether bergson is installed; it is not imported (its import reconfigures the root logger)."""
    return importlib.util.find_spec("bergson") is not None


def supports(task: Any) -> bool:
    """Bergson runs on language-model tasks (token ids, a Hugging Face causal LM); not on classifiers."""
    return getattr(task, "kind", None) == "lm" and hasattr(task, "token_ids")


@contextmanager
def _quiet_bergson() -> Iterator[None]:
    """Import and run bergson without its side effects on the caller's output.

    Its ``utils.logger`` calls ``logging.basicConfig(..., force=True)`` at import, which would replace
    the root logger's handlers: the first import runs with ``basicConfig`` disabled. Its INFO logs,
    tqdm bars and prints are silenced for the block.
    """
    if not bergson_available():
        raise ImportError(INSTALL_HINT)
    original = logging.basicConfig
    logging.basicConfig = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        import bergson  # noqa: F401
        import bergson.collector.collector as collector_module
        import bergson.hessians.eigenvectors as eigen_module
    finally:
        logging.basicConfig = original
    modules = (collector_module, eigen_module)  # the ones that draw tqdm bars on the paths used here
    bars = [module.tqdm for module in modules]
    for module in modules:
        module.tqdm = _no_bar
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # bergson's INFO logs and transformers' no-attention-mask warning
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
        for module, bar in zip(modules, bars):
            module.tqdm = bar


def _no_bar(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
    return iterable if iterable is not None else range(kwargs.get("total") or 0)


def _dataset(token_ids: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": token_ids, "length": [len(ids) for ids in token_ids]})


class BergsonMethod:
    """One Bergson strategy (``ekfac`` or ``trackstar``) on one LM task; its files live in a
    temporary folder while it exists. ``attribute`` takes ``damping`` (and, for TrackStar,
    ``unit_normalize``) as options."""

    def __init__(self, strategy: str = "ekfac", damping: float = 0.1, unit_normalize: bool | None = None,
                 projection_dim: int = 16, loss_reduction: str = "mean", token_batch_size: int = 2048,
                 seed: int = 0):
        if strategy not in STRATEGIES:
            raise StrideConfigError(f"bergson strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "ekfac" and unit_normalize:
            raise StrideConfigError("bergson_ekfac: Bergson does not unit-normalise with a factored Hessian")
        self.strategy, self.damping, self.seed = strategy, float(damping), int(seed)
        self.unit_normalize = (strategy == "trackstar") if unit_normalize is None else bool(unit_normalize)
        self.projection_dim = int(projection_dim) if strategy == "trackstar" else 0
        self.loss_reduction, self.token_batch_size = loss_reduction, int(token_batch_size)
        self.clock = Clock()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bergson_{strategy}_")
        self._root = Path(self._tmp.name)
        self._task: Task | None = None
        self._model = None
        self._train_grads: dict[str, torch.Tensor] = {}
        self._processor = None  # trackstar: the projection and the autocorrelation Hessian
        self._hessian = self._root / "hessian.part"  # ekfac: the fitted factors
        self._runs = 0

    # --- bergson's pieces -------------------------------------------------------------------------

    def _config(self):
        """A fresh IndexConfig with its own (existing) partial run folder: collectors write there."""
        from bergson import IndexConfig
        from bergson.config.config import DistributedConfig

        self._runs += 1
        cfg = IndexConfig(run_path=str(self._root / f"run{self._runs}"), projection_dim=self.projection_dim,
                          loss_reduction=self.loss_reduction, token_batch_size=self.token_batch_size,
                          distributed=DistributedConfig(nnode=1, nproc_per_node=1))
        cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
        return cfg

    def _batches(self, data) -> list[list[int]]:
        from bergson.data import allocate_batches

        return allocate_batches(data["length"][:], self.token_batch_size)

    def _gradients(self, data, *, hessian: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
        """Per-example gradients {module: (N, dim)} of ``data`` and their ``GradientProcessor`` (its
        projection; with ``hessian``, the autocorrelation Hessian of these gradients). Each pass has
        its own processor: a collector's teardown rescales any Hessian its processor holds."""
        from bergson import CollectorComputer, InMemoryCollector
        from bergson.utils.worker_utils import processor_for

        cfg = self._config()
        processor = processor_for(cfg)  # the projection is seeded by module name: the same for every pass
        collector = InMemoryCollector(model=self._model.base_model, cfg=cfg, processor=processor, data=data,
                                      target_modules=None, attention_cfgs={}, skip_hessians=not hessian)
        CollectorComputer(self._model, data, collector=collector, batches=self._batches(data),
                          cfg=cfg).run_with_collector_hooks(desc="gradients")
        return {name: g.clone() for name, g in collector.gradients.items()}, processor

    def _fit_ekfac(self, data) -> None:
        from bergson.config.config import HessianConfig
        from bergson.hessians.hessian_approximations import fit_factored_hessians

        cfg = self._config()
        self._hessian = cfg.partial_run_path  # fit_factored_hessians reads total_processed.pt from there
        torch.manual_seed(self.seed)  # the Fisher's labels are sampled from the model
        fit_factored_hessians(self._model, data, cfg, HessianConfig(method="kfac", ev_correction=True),
                              target_modules=None, attention_cfgs={}, batches=self._batches(data),
                              path=str(self._hessian), do_eigendecomposition=True)

    def _preconditioner(self, damping: float, unit_normalize: bool):
        from bergson.config.config import InversionConfig
        from bergson.hessians.preconditioner import DensePreconditioner, load_preconditioner

        inversion = InversionConfig(damping_factor=float(damping))
        power = -0.5 if unit_normalize else -1.0
        if self.strategy == "ekfac":
            return load_preconditioner(str(self._hessian), inversion_cfg=inversion, power=power, ev_correction=True)
        return DensePreconditioner.from_processor(self._processor, inversion_cfg=inversion, power=power)

    # --- the harness interface --------------------------------------------------------------------

    def cache(self, task: Task, trained: Trained) -> None:
        if not supports(task) or not hasattr(trained.model, "base_model"):
            raise StrideConfigError(f"bergson_{self.strategy}: only language-model tasks with a Hugging Face causal "
                                    f"LM are supported (task kind {getattr(task, 'kind', None)!r})")
        with _quiet_bergson(), self.clock("one_time"):
            model = copy.deepcopy(trained.model).float().eval()
            # as Bergson's model setup: no parameter gradients, only the activations' (the hooks read them)
            model.requires_grad_(False)
            model.get_input_embeddings().requires_grad_(True)
            self._model = model
            data = _dataset(task.token_ids(None))
            if self.strategy == "ekfac":
                self._fit_ekfac(data)
            self._train_grads, self._processor = self._gradients(data, hessian=self.strategy == "trackstar")
        self._task = task

    def attribute(self, split: str, **option: Any) -> MethodResult:
        if self._task is None:
            raise RuntimeError(f"BergsonMethod({self.strategy!r}): call cache(task, trained) before attribute")
        damping = float(option.get("damping", self.damping))
        unit_normalize = bool(option.get("unit_normalize", self.unit_normalize))
        if self.strategy == "ekfac" and unit_normalize:
            raise StrideConfigError("bergson_ekfac: Bergson does not unit-normalise with a factored Hessian")
        self.clock.seconds["per_query"] = 0.0
        with _quiet_bergson(), self.clock("per_query"):
            scores = self._scores(split, damping, unit_normalize)
        settings = {"strategy": self.strategy, "damping": damping, "unit_normalize": unit_normalize,
                    "projection_dim": self.projection_dim, "loss_reduction": self.loss_reduction}
        return self.clock.result(scores, settings)

    def _scores(self, split: str, damping: float, unit_normalize: bool) -> np.ndarray:
        """Bergson's scoring (as its ``create_scorer``): the query gradients preconditioned (H^-1, or
        H^-1/2 on both sides with unit normalisation), against the cached training gradients."""
        from bergson import Scorer
        from bergson.process_grads import normalize_and_aggregate_grads
        from bergson.score.score_writer import InMemorySequenceScoreWriter

        query, _ = self._gradients(_dataset(self._task.token_ids(split)))
        modules = list(self._train_grads)
        preconditioner = self._preconditioner(damping, unit_normalize)
        query = normalize_and_aggregate_grads(preconditioner.apply(query), modules, unit_normalize=unit_normalize,
                                              device=torch.device("cpu"), dtype=torch.float32)
        writer = InMemorySequenceScoreWriter(self._task.n, len(query[modules[0]]))
        scorer = Scorer(query, modules, writer, torch.device("cpu"), torch.float32, unit_normalize=unit_normalize,
                        index_transform=preconditioner.apply if unit_normalize else None)
        for start in range(0, self._task.n, 256):
            rows = list(range(start, min(start + 256, self._task.n)))
            scorer(rows, {m: g[rows[0]:rows[-1] + 1] for m, g in self._train_grads.items()})
        return writer.scores.T.double().numpy()  # (n, Q) -> (Q, n)
