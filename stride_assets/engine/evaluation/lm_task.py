"""Language-model benchmarks: a small GPT-2 trained from scratch on text passages.

``LMTask`` implements the ``Task`` protocol (see ``task.py``) for any list of training texts
and two query splits; ``pydoc_task`` builds it on the embedded Python docs, ``numpy_docs_task``
on the installed numpy's docstrings (``docs_corpus``) and ``text_task`` on a user's parquet/jsonl
file; with ``quick`` each keeps at most ``QUICK_SIZES`` passages and trains ``QUICK_RECIPE``.
The fixed setup, shared by the base model and every retrain:

- one byte-level BPE tokenizer, trained once on the training texts (``lm.train_tokenizer``);
- every example encoded to at most ``max_length`` tokens, right padded (``lm.encode``);
- one recipe, the pipeline's own config type ``config.TinyModelConfig`` (it replaced this
  module's ``GPTRecipe``): a GPT-2 built by ``lm.build_tiny_gpt2`` and fitted by ``lm.train_lm``
  (AdamW, warmup + cosine, clipping). The harness recipes (``PYDOC_RECIPE``, ``QUICK_RECIPE``)
  set ``epochs``, so the number of steps scales with the subset and a model on half the data
  sees it as often as the base model sees all of it; without ``epochs``, ``steps`` fixes the count.

The training ``seed`` sets both the initialisation and the batch order. ``retrain_losses``
uses one seed for every subset, so models differ only through their data (common random
numbers: less seed noise across subsets); seed-to-seed noise is measured with a second seed.

Fine-tuning variant (``pretrain_texts``): a base model is trained once, with seed 0, on a
disjoint set of texts, and ``train`` fine-tunes a copy of it on the subset with the recipe.
It exists for corpora where retraining from scratch is too slow; the pydoc benchmark trains
from scratch: with the default recipe a half-data retrain (502 passages, 377 steps) took about
15 s on one thread, the full-data model reaches a held-out NLL of about 4.5 nats per token.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.func import functional_call

from stride_assets.engine import lm
from stride_assets.engine.backbone import Batch, Site, make_site, take
from stride_assets.engine.config import CorpusConfig, TinyModelConfig
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.evaluation.task import Trained
from stride_assets.engine.losses import sequence_nll

SPLITS = ("val", "test")
Log = Callable[[str], Any]


def _quiet(_: str) -> None:
    pass


MAX_LENGTH = 64  # tokens per example (longer texts are truncated)
PYDOC_RECIPE = TinyModelConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=2048, epochs=12.0, batch_size=16, lr=2e-3,
                               weight_decay=0.01)
QUICK_RECIPE = PYDOC_RECIPE.model_copy(update={"n_embd": 32, "vocab_size": 512, "epochs": 4.0})  # smoke runs only
QUICK_SIZES = {"n_val": 20, "n_test": 40, "n_train": 300}  # the quick variant of every LM task (smoke runs)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _crop(batch: Batch, device: torch.device) -> Batch:
    """Drop the all-padding columns on the right and move to ``device``."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width].to(device) for k, v in batch.items()}


class LMTask:
    """A ``Task`` over text passages: next-token NLL of a GPT-2 trained with ``recipe``.

    ``recipe`` is a ``TinyModelConfig`` (default ``PYDOC_RECIPE``); its ``seed`` is not used,
    every model takes the seed it is trained with. ``query_texts`` maps "val" and "test" to their
    texts. The tokenizer is trained on the training texts (plus ``pretrain_texts`` in the
    fine-tuning variant), never on queries, and every text is encoded once to at most
    ``max_length`` tokens: ``recipe.vocab_size`` and ``max_length`` are fixed at construction;
    ``self.recipe`` may be replaced afterwards (``model_copy``) to change the other fields.
    ``completion_starts`` ({split: character offsets}, ``engine/formats.py``) makes every loss of those
    splits (training, query losses, the harness's views) score only each text's completion.
    """

    kind = "lm"

    def __init__(
        self,
        train_texts: list[str],
        query_texts: dict[str, list[str]],
        recipe: TinyModelConfig | None = None,
        *,
        max_length: int = MAX_LENGTH,
        name: str = "lm",
        example_ids: list[str] | None = None,
        query_ids: dict[str, list[str]] | None = None,
        pretrain_texts: list[str] | None = None,
        pretrain_recipe: TinyModelConfig | None = None,
        device: str = "cpu",
        log: Log = _quiet,
        completion_starts: dict[str, list[int]] | None = None,
    ):
        if set(query_texts) != set(SPLITS):
            raise StrideInputError(f"query_texts must have exactly the splits {SPLITS}, got {sorted(query_texts)}")
        self.name = name
        self.recipe = recipe or PYDOC_RECIPE
        self.max_length = max_length
        self.device = device
        self.log = log
        self._texts: dict[str, list[str]] = {"train": list(train_texts), **{s: list(query_texts[s]) for s in SPLITS}}
        default_ids = {split: [f"{split}/{i:06d}" for i in range(len(t))] for split, t in self._texts.items()}
        self.example_ids = list(example_ids) if example_ids is not None else default_ids["train"]
        self.query_ids = {s: list(query_ids[s]) if query_ids else default_ids[s] for s in SPLITS}
        for split, texts in self._texts.items():
            ids = self.example_ids if split == "train" else self.query_ids[split]
            if len(ids) != len(texts) or not texts:
                raise StrideInputError(f"{split}: {len(texts)} texts and {len(ids)} ids (need as many, at least one)")
        self.tokenizer = lm.train_tokenizer(self._texts["train"] + list(pretrain_texts or []), self.recipe.vocab_size)
        starts = completion_starts or {}
        self._data: dict[str, Batch] = {split: self._encode(texts, starts.get(split))
                                        for split, texts in self._texts.items()}
        self._base_state: dict[str, torch.Tensor] | None = None
        if pretrain_texts:
            base = self._fit(self.new_model(0), self._encode(list(pretrain_texts)), pretrain_recipe or self.recipe,
                             seed=0)  # a fresh model: there is no base state yet
            self._base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    def _encode(self, texts: list[str], starts: list[int] | None = None) -> Batch:
        """Token batch of ``texts``; with completion ``starts`` (instruction and chat rows) a ``loss_mask``."""
        if starts is not None and not any(starts):
            starts = None
        return lm.encode_batch(self.tokenizer, texts, self.max_length, starts=starts)

    @property
    def n(self) -> int:
        return len(self.example_ids)

    @property
    def finetune(self) -> bool:
        """True in the fine-tuning variant (retrains start from a pre-trained base model)."""
        return self._base_state is not None

    # --- data -------------------------------------------------------------------------------

    def _split(self, split: str | None) -> str:
        if split is None:
            return "train"
        if split not in SPLITS:
            raise StrideConfigError(f"unknown query split {split!r} ({' or '.join(SPLITS)})")
        return split

    def train_batch(self, indices: np.ndarray | None = None) -> Batch:
        batch = self._data["train"]
        if indices is None:
            return dict(batch)
        indices = np.asarray(indices)
        if indices.dtype == bool:  # a membership mask, not indices
            indices = np.flatnonzero(indices)
        return take(batch, torch.as_tensor(indices, dtype=torch.int64))

    def query_batch(self, split: str = "test") -> Batch:
        return dict(self._data[self._split(split)])

    def texts(self, split: str | None = None) -> list[str]:
        """Raw texts of the training examples (``None``) or of a query split (untruncated)."""
        return list(self._texts[self._split(split)])

    def token_ids(self, split: str | None = None) -> list[list[int]]:
        """The token ids each example is trained / scored on (truncated to ``max_length``)."""
        batch = self._data[self._split(split)]
        return [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]

    # --- training ---------------------------------------------------------------------------

    def new_model(self, seed: int = 0) -> nn.Module:
        """The untrained starting point: a fresh GPT-2 for ``seed``, or the pre-trained base model."""
        model = lm.build_tiny_gpt2(self.tokenizer, self.recipe.model_copy(update={"seed": seed}), self.max_length)
        if self._base_state is not None:
            model.load_state_dict(self._base_state)
        return model

    def _fit(self, model: nn.Module, batch: Batch, recipe: TinyModelConfig, seed: int,
             on_step: Callable[[int, float], Any] | None = None) -> nn.Module:
        steps = recipe.steps_for(len(batch["input_ids"]))
        lm.train_lm(
            model, batch["input_ids"], batch["attention_mask"], steps=steps, batch_size=recipe.batch_size,
            lr=recipe.lr, weight_decay=recipe.weight_decay, seed=seed, device=self.device,
            log_every=max(1, steps // 4), log=self.log, on_step=on_step, loss_mask=batch.get("loss_mask"),
        )
        return model

    def train(self, indices: np.ndarray | None = None, seed: int = 0, checkpoints: int = 0) -> Trained:
        """Train with the recipe on ``indices`` (None = all); ``checkpoints`` states for TracIn.

        Checkpoint j is saved after update round((j+1) * steps / k), so the last one is the final
        model; its learning rate is the mean rate of the updates since the previous checkpoint.
        """
        start = time.perf_counter()
        batch = self.train_batch(indices)
        n_train = len(batch["input_ids"])
        if n_train == 0:
            raise StrideInputError("cannot train on an empty subset")
        steps = self.recipe.steps_for(n_train)
        saves = {round((j + 1) * steps / checkpoints) for j in range(checkpoints)} if checkpoints else set()
        ckpts: list[tuple[float, dict[str, torch.Tensor]]] = []
        rates: list[float] = []
        model = self.new_model(seed)

        def keep(step: int, lr: float) -> None:
            rates.append(lr)
            if step + 1 in saves:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                ckpts.append((float(np.mean(rates)), state))
                rates.clear()

        self._fit(model, batch, self.recipe, seed, on_step=keep if checkpoints else None)
        info = {"steps": steps, "n_train": n_train, "seconds": time.perf_counter() - start}
        return Trained(model, ckpts, info)

    def retrain_losses(self, subsets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Mean next-token NLL {split: (m, Q)} of one model trained per row of ``subsets`` (m, n) bool."""
        subsets = np.asarray(subsets, dtype=bool)
        if subsets.ndim != 2 or subsets.shape[1] != self.n:
            raise StrideInputError(f"subsets must be (m, n={self.n}) bool, got {subsets.shape}")
        out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for j, row in enumerate(subsets):
            trained = self.train(np.flatnonzero(row), seed)
            for split in SPLITS:
                out[split].append(self.query_losses(trained.model, split))
            self.log(f"{self.name}: retrain {j + 1}/{len(subsets)} ({trained.info['seconds']:.1f}s)")
        return {s: np.stack(v) for s, v in out.items()}

    # --- losses and model views -------------------------------------------------------------

    def query_losses(self, model: nn.Module, split: str = "test") -> np.ndarray:
        """Mean next-token NLL (Q,) of each query, float64."""
        batch = self.query_batch(split)
        losses = lm.example_losses(model, batch["input_ids"], batch["attention_mask"], device=str(_device_of(model)),
                                   loss_mask=batch.get("loss_mask"))
        return losses.double().numpy()

    def example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean next-token NLL (N,) per sequence; differentiable."""
        batch = _crop(batch, _device_of(model))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return sequence_nll(logits, batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))

    def functional_loss(self, model: nn.Module) -> Callable[[dict[str, torch.Tensor], Batch], torch.Tensor]:
        """f(params, batch) -> mean over sequences of their mean next-token NLL, for ``torch.func``.

        A single example may come without its batch axis (as under ``vmap``). The model sees an
        all-ones attention mask: with right padding and causal attention, padding never reaches
        a real position, and a per-example mask would put data-dependent control flow (which
        ``vmap`` rejects) into the model's mask construction. The loss uses the real mask.
        """

        def loss(params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
            ids, mask, scored = batch["input_ids"], batch["attention_mask"], batch.get("loss_mask")
            if ids.dim() == 1:
                ids, mask = ids.unsqueeze(0), mask.unsqueeze(0)
                scored = None if scored is None else scored.unsqueeze(0)
            ones = torch.ones(ids.shape, dtype=torch.long, device=ids.device)
            logits = functional_call(model, params, (), {"input_ids": ids, "attention_mask": ones, "use_cache": False})
            return sequence_nll(logits.logits, ids, mask, scored).mean()

        return loss

    @torch.no_grad()
    def features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Final hidden state (after the last layer norm), mean-pooled over real tokens: (N, n_embd)."""
        batch = _crop(batch, _device_of(model))
        out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        return ((out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float().cpu()

    def last_layer(self, model: nn.Module) -> nn.Linear:
        """The LM head (n_embd -> vocabulary); its weight is tied to the token embeddings."""
        return model.get_output_embeddings()  # type: ignore[return-value]

    def site(self, model: nn.Module, form: str, layer: int | None = None) -> Site:
        """``backbone.make_site`` on a private copy (a site freezes its model; the caller's is left as it was)."""
        return make_site(copy.deepcopy(model), form, layer)


# --- builders ---------------------------------------------------------------------------------


def _split_task(
    df: pl.DataFrame, name: str, *, seed: int, n_val: int, n_test: int, n_train: int | None, finetune: bool,
    recipe: TinyModelConfig | None, **kwargs: Any,
) -> LMTask:
    """Seeded permutation -> val / test / train (fine-tuning: then pretrain, half of the rest).

    Exact duplicate texts are dropped first (the first copy stays), so that no query has a copy
    in the training set. ``n_train`` caps the training set (None: all that is left). Each part
    keeps corpus order.
    """
    df = df.unique(subset="text", keep="first", maintain_order=True)
    order = np.random.default_rng(seed).permutation(df.height)
    val, test, rest = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    pretrain = np.array([], dtype=np.int64)
    if finetune:
        pretrain, rest = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    train = rest[:n_train] if n_train is not None else rest
    if min(n_val, n_test) < 1 or len(train) < 2 or (finetune and len(pretrain) < 2):
        raise StrideInputError(
            f"{name}: {df.height} passages cannot give {n_val} val and {n_test} test queries and a training set"
            f"{' plus a pre-training set' if finetune else ''} of at least 2"
        )
    ids, texts = df["example_id"].to_list(), df["text"].to_list()
    part = {k: np.sort(v) for k, v in {"train": train, "val": val, "test": test, "pretrain": pretrain}.items()}
    return LMTask(
        [texts[i] for i in part["train"]],
        {s: [texts[i] for i in part[s]] for s in SPLITS},
        recipe,
        name=name,
        example_ids=[ids[i] for i in part["train"]],
        query_ids={s: [ids[i] for i in part[s]] for s in SPLITS},
        pretrain_texts=[texts[i] for i in part["pretrain"]] or None,
        **kwargs,
    )


def _sized_task(df: pl.DataFrame, name: str, full: dict[str, int | None], *, quick: bool,
                recipe: TinyModelConfig | None, **kwargs: Any) -> LMTask:
    """``_split_task`` with the sizes ``full``, or quick: ``QUICK_SIZES`` (at most ``full``) and ``QUICK_RECIPE``."""
    if quick:
        full = {k: v if full[k] is None else min(v, full[k]) for k, v in QUICK_SIZES.items()}
    return _split_task(df, name, recipe=recipe or (QUICK_RECIPE if quick else PYDOC_RECIPE), **full, **kwargs)


def pydoc_task(seed: int = 0, quick: bool = False, *, finetune: bool = False, recipe: TinyModelConfig | None = None,
               **kwargs: Any) -> LMTask:
    """The embedded Python docs: 1,154 distinct passages of ~400 characters (~59 tokens at 64).

    Default: 50 val and 100 test queries, the other 1,004 passages for training, ``PYDOC_RECIPE``.
    ``quick``: 20 val, 40 test, 300 training passages and ``QUICK_RECIPE``. ``finetune``: half of
    the non-query passages pre-train a base model, the other half is the training set.
    Extra keyword arguments (``max_length``, ``device``, ``log``, ``pretrain_recipe``) go to ``LMTask``.
    """
    df = load_passages(CorpusConfig(source="pydoc"))
    return _sized_task(df, "pydoc", dict(n_val=50, n_test=100, n_train=None), quick=quick, recipe=recipe, seed=seed,
                       finetune=finetune, **kwargs)


def numpy_docs_task(seed: int = 0, quick: bool = False, *, finetune: bool = False,
                    recipe: TinyModelConfig | None = None, **kwargs: Any) -> LMTask:
    """The installed numpy's docstrings (``docs_corpus``; ~3,300 distinct passages with numpy 2.4).

    Sizes as ``pydoc_task`` but a training set capped at 1,000 passages (a seeded sample), so
    that a retrain costs about what a pydoc one does; the task's name records numpy's version.
    """
    from stride_assets.engine.evaluation.docs_corpus import package_passages, package_version

    return _sized_task(package_passages("numpy"), f"numpy-{package_version('numpy')}-docs",
                       dict(n_val=50, n_test=100, n_train=1000), quick=quick, recipe=recipe, seed=seed,
                       finetune=finetune, **kwargs)


def text_task(
    path: str | Path, text_column: str = "text", *, seed: int = 0, n_val: int = 50, n_test: int = 100,
    n_train: int | None = None, id_column: str | None = None, finetune: bool = False,
    recipe: TinyModelConfig | None = None, quick: bool = False, **kwargs: Any,
) -> LMTask:
    """An LM task on a user's parquet/jsonl/csv/txt file (one passage per row, see ``corpus``).

    Input problems (missing file or column, non-string rows, ...) raise ``StrideInputError`` from
    ``corpus.load_passages``; the split is as in ``pydoc_task`` (``quick``: at most ``QUICK_SIZES``).
    """
    df = load_passages(CorpusConfig(source="files", paths=[str(path)], text_column=text_column, id_column=id_column))
    return _sized_task(df, Path(path).stem, dict(n_val=n_val, n_test=n_test, n_train=n_train), quick=quick,
                       recipe=recipe, seed=seed, finetune=finetune, **kwargs)

