"""Cheap checks of a whole configuration before any expensive stage: shard sizes against the
design, example ids unique across shards, shard names that stay inside the store, the model path,
and the memory and disk every stage will need against the budget (``budget.py``: predicted from the
config and the model's shapes, shown through ``log``, a run over budget refused).
``stride run`` calls ``preflight`` before its first run; ``training_corpus`` checks its own shard
with ``check_shard`` (so a shard added later is checked too)."""

from __future__ import annotations

import os
from typing import Callable

from stride_assets.engine import budget as budget_mod
from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine import lm
from stride_assets.engine import shards as shards_mod
from stride_assets.engine import token_windows
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.design import shard_K, validate_design
from stride_assets.engine.errors import StrideInputError


def check_shard(cfg: StrideConfig, shard: str, n_train: int) -> None:
    """The settings can work for a shard of ``n_train`` training examples (else a clear error)."""
    dc, size = cfg.design, cfg.corpus.shard_size
    validate_design(n_train, shard_K(dc.K, dc.d, n_train, size), dc.d,
                    note=f" (shard {shard!r}: design.K={dc.K} per corpus.shard_size={size} examples, scaled to its "
                    f"{n_train})")


def check_ids_against_store(store, shard: str, ids: list[str], shards: list[str]) -> None:
    """The shard's example ids are not already taken by another shard stored in ``store`` (the check
    that covers shards arriving one at a time, e.g. through the corpus sensor)."""
    mine = set(ids)
    for other in shards:
        if other != shard and store.file("train", other).exists():
            taken = mine.intersection(store.read_corpus(other)["example_id"].to_list())
            if taken:
                raise StrideInputError(f"example id {sorted(taken)[0]!r} is in shard {other!r} and in shard {shard!r}"
                                       f" ({len(taken)} shared): ids must be unique across the corpus "
                                       "(check corpus.id_column)")


def preflight(cfg: StrideConfig, store_root: str | os.PathLike[str] | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Check every shard of the corpus, the model path and the memory/disk budget (the estimate table
    goes to ``log``; the disk budget defaults to the free space at ``store_root``, unchecked without
    it); returns {shard: training examples}."""
    lm.check_model_path(cfg.model.path, cfg.model.tokenizer_path)
    sizes: dict[str, int] = {}
    held_out = 0
    owner: dict[str, str] = {}
    from stride_assets.engine.store import Store

    windows = token_windows.cutter(cfg, Store(store_root) if store_root is not None else None, persist=False)
    for shard, documents in shards_mod.load_shards(cfg.corpus).items():
        passages = windows(documents)  # with corpus.chunk_tokens: the shard's examples are its windows
        for eid in passages["example_id"].to_list():
            if eid in owner:
                raise StrideInputError(f"example id {eid!r} is in shard {owner[eid]!r} and in shard {shard!r}: "
                                       "ids must be unique across the corpus (check corpus.id_column)")
            owner[eid] = shard
        train, _ = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
        check_shard(cfg, shard, train.height)
        sizes[shard] = train.height
        held_out += passages.height - train.height
    if not sizes:
        raise StrideInputError("no shards: the corpus is empty (add data, or check corpus.paths)")
    budget_mod.preflight_budget(cfg, sizes, held_out, store_root, log)
    return sizes
