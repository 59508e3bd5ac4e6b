"""Stage ``steering_operators[shard]``: one shard's operator bank, trained on the frozen model's cached features."""

from __future__ import annotations

from typing import Callable

import polars as pl

from stride_assets.engine import lm, plots
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import StrideConfig, TrainConfig, resolve_device
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.store import Store
from stride_assets.engine.stride import Stride
from stride_assets.engine.training import steps_for_epochs


def shard_training(tc: TrainConfig, n: int, d: int, shard: str) -> TrainConfig:
    """The shard's training settings: its own seed, and steps from ``epochs`` when that is set."""
    steps = tc.steps if tc.epochs is None else steps_for_epochs(tc.epochs, tc.batch_size, n, d)
    return tc.model_copy(update={"steps": steps, "seed": shards_mod.derive_seed(tc.seed, shard)})


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], shard: str) -> StageResult:
    """One shard's operator bank: shared basis + per-subset matrices trained on cached features of the frozen model."""
    oc = cfg.operators
    design = store.read_design(shard)
    tc = shard_training(cfg.training, design.n, design.d, shard)
    device = resolve_device(tc.device)
    model, tokenizer = store.load_base_model()
    corpus = store.read_corpus(shard)
    if corpus.height != design.n:
        raise StrideInputError(f"subset design of shard {shard!r} covers n={design.n} examples but the shard has "
                               f"{corpus.height}: re-materialize subset_design for it")
    batch = lm.frame_batch(tokenizer, corpus, cfg.model.max_length, device)
    stride = Stride(make_site(model.to(device), oc.form, oc.layer), cfg, training=tc)
    feats = stride.cache_features(batch)
    log(f"operators {shard}: cached {tuple(feats.shape)} features at the {oc.form} site in "
        f"{stride.seconds['cache']:.1f}s")
    bank, trainlog = stride.fit_operators(feats, batch, design, log)
    diag = stride.diagnostics(bank, batch, design, cfg.training.seed)
    bank_path = bank.to("cpu").save(store.file("operators", shard))
    store.seal(bank_path, bank_path.with_suffix(".json"))
    log_path = write_parquet(pl.DataFrame(trainlog.rows), store.file("training_log", shard))
    layer = getattr(stride.site, "layer", None)
    store.write_args("steering_operators", {"operators": oc.model_dump(), "training": tc.model_dump(), "layer": layer,
                                             "measure_mode": cfg.measure.mode, "shard": shard}, shard)
    final = trainlog.rows[-1] if trainlog.rows else {}
    keys = [k for k in ("fidelity", "stability", "linearity") if k in final]
    result = StageResult(
        stage="steering_operators",
        path=store.stage("steering_operators", shard),
        metadata={"form": oc.form, "layer": -1 if layer is None else layer, "rank": oc.rank, "K": design.K,
                  "shard": shard, "steps": tc.steps, "epochs": float(final.get("epochs", 0.0)),
                  "seconds": trainlog.seconds, "cache_seconds": stride.seconds["cache"],
                  **{f"final_{k}": final[k] for k in keys}, **diag},
        markdown={"loss_curve": markdown_table(pl.DataFrame(trainlog.rows).select("step", *keys).tail(8))}
        if trainlog.rows else {},
        params={f"operators.{k}": v for k, v in oc.model_dump().items()}
        | {f"training.{k}": v for k, v in tc.model_dump().items()} | {"operators.layer_used": layer},
        metrics={"train_seconds": trainlog.seconds, **{f"final_{k}": final[k] for k in keys}, **diag},
        curves={k: trainlog.curve(k) for k in keys},
        files=[bank_path, bank_path.with_suffix(".json"), log_path],
        fingerprint=file_digest(bank_path, bank_path.with_suffix(".json")),
    )
    if trainlog.rows:
        result.plots["operator_loss"] = plots.curves(result.curves, store.file("operator_loss_plot", shard),
                                                     "operator training losses", log_y=True)
    return result
