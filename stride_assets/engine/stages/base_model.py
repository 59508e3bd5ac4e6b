"""Stage ``base_model``: the frozen model every operator steers (a user's model, or one trained here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import polars as pl

from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine import lm, plots
from stride_assets.engine import shards as shards_mod
from stride_assets.engine import token_windows
from stride_assets.engine.artifacts import file_digest, write_json
from stride_assets.engine.config import StrideConfig, resolve_device
from stride_assets.engine.result import StageResult
from stride_assets.engine.store import Store

EVAL_EXAMPLES = 512  # train/held-out passages on which the model's NLL is reported


def _local_weights(path: str) -> list[Path]:
    p = Path(path).expanduser()
    return sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json")) if p.is_dir() else []


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None]) -> StageResult:
    """The frozen model: a user's transformers model, or a small GPT-2 trained here on the corpus."""
    mc = cfg.model
    passages = token_windows.windows_of(cfg, store, pl.concat(list(shards_mod.load_shards(cfg.corpus).values())))
    train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    if mc.path is None:
        tokenizer = (lm.train_tokenizer(train["text"].to_list(), mc.tiny.vocab_size) if cfg.corpus.chunk_tokens is None
                     else token_windows.tokenizer_for(cfg, store))  # the windows' tokenizer: the same token counts
        model = lm.build_tiny_gpt2(tokenizer, mc.tiny, mc.max_length)
        batch = lm.frame_batch(tokenizer, train, mc.max_length)
        rows = lm.train_lm(
            model, batch["input_ids"], batch["attention_mask"], steps=mc.tiny.steps_for(train.height),
            batch_size=mc.tiny.batch_size, lr=mc.tiny.lr, weight_decay=mc.tiny.weight_decay, seed=mc.tiny.seed,
            device=resolve_device(cfg.training.device), log=log, loss_mask=batch.get("loss_mask"),
        )
        curve = [(int(r["step"]), float(r["loss"])) for r in rows]
        model = model.to("cpu")
        lm.save_model(model, tokenizer, store.file("model"))
        ref = {"path": str(store.file("model")), "tokenizer_path": None, "trained_here": True,
               "trained_on_examples": train.height}
        fingerprint = file_digest(store.file("model"))
    else:
        model, tokenizer = lm.load_model(
            mc.path, tokenizer_path=mc.tokenizer_path, trust_remote_code=mc.trust_remote_code, dtype=mc.dtype
        )
        ref = {"path": mc.path, "tokenizer_path": mc.tokenizer_path, "trained_here": False}
        local = _local_weights(mc.path)
        fingerprint = file_digest(*local) if local else mc.path  # a hub id names its weights
    ref.update(trust_remote_code=mc.trust_remote_code, dtype=mc.dtype, max_length=mc.max_length)
    write_json(ref, store.file("model_ref"))
    store.write_args("base_model", mc.model_dump())
    evals = {}
    for name, frame in (("train", train.head(EVAL_EXAMPLES)), ("heldout", holdout.head(EVAL_EXAMPLES))):
        if frame.height:
            b = lm.frame_batch(tokenizer, frame, mc.max_length)
            evals[f"{name}_nll"] = float(lm.example_losses(model, b["input_ids"], b["attention_mask"],
                                                           loss_mask=b.get("loss_mask")).mean())
    n_params = sum(p.numel() for p in model.parameters())
    log(f"base model: {n_params:,} parameters, " + ", ".join(f"{k}={v:.3f}" for k, v in evals.items()))
    result = StageResult(
        stage="base_model",
        path=store.stage("base_model"),
        metadata={"parameters": n_params, "architecture": type(model).__name__, "vocab": len(tokenizer),
                  "seconds": time.perf_counter() - start, **evals},
        params={"model.path": mc.path or "tiny-gpt2 (trained here)", "model.max_length": mc.max_length,
                **({f"model.tiny.{k}": v for k, v in mc.tiny.model_dump().items()} if mc.path is None else {})},
        metrics={**evals, "parameters": float(n_params)},
        curves={"lm_loss": curve},
        fingerprint=fingerprint,
    )
    if curve:
        result.plots["lm_loss"] = plots.curves({"train loss": curve}, store.file("lm_loss_plot"), "base model training")
    return result
