"""The eight stages of a STRIDE run. Each reads its inputs from the store, writes its named
artifacts (atomically, with ``args.json`` beside them) and returns a ``StageResult``.

The corpus comes in shards and the queries in batches (``shards.py``); the stages are blocks:

    training_corpus[shard] -> subset_design[shard] -> steering_operators[shard] --\
    base_model ------------------------------------------------/                     perturbation_matrix[batch/shard]
    query_set[batch] ----------------------------------------------------------------/        |
    influence_scores[batch]  (fan-in over shards: block-diagonal membership)  <---------------/
    curated_dataset, selected_dataset, contamination_report   (fan-in over batches)

The base model is frozen: it does not follow the corpus (the tiny default trains once on the
shards present when it is built).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine import lm, plots
from stride_assets.engine import shards as shards_mod
from stride_assets.engine.artifacts import Store, atomic_path, file_digest, read_json, write_json, write_parquet
from stride_assets.engine.backbone import encode_all, make_site, take
from stride_assets.engine.config import StrideConfig, TrainConfig, resolve_device
from stride_assets.engine.contamination import audit, audit_markdown
from stride_assets.engine.curation import curate
from stride_assets.engine.datasets_out import write_dataset
from stride_assets.engine.design import SubsetDesign, draw_design, shard_K, validate_design
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import responses
from stride_assets.engine.operators import OperatorBank, top_direction_energy
from stride_assets.engine.recovery import recover
from stride_assets.engine.selection import select
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.training import train_operators

Log = Callable[[str], None]


# ---------------------------------------------------------------- readers of stored artifacts
def read_corpus(store: Store, shard: str, part: str = "train") -> pl.DataFrame:
    return pl.read_parquet(store.require("training_corpus", f"{part}.parquet", shard))


def read_train(store: Store, shard_list: list[str]) -> pl.DataFrame:
    """The training parts of the shards, in order, with a global ``example_index`` and the ``shard``."""
    if not shard_list:
        raise StrideInputError("no shards: the corpus is empty (add data, or check corpus.paths)")
    frames, offset = [], 0
    for shard in shard_list:
        frame = read_corpus(store, shard)
        frames.append(frame.with_columns((pl.col("example_index").cast(pl.Int64) + offset).alias("example_index"),
                                         pl.lit(shard).alias("shard")))
        offset += frame.height
    return pl.concat(frames)


def read_queries(store: Store, batch: str) -> pl.DataFrame:
    return pl.read_parquet(store.require("query_set", "queries.parquet", batch))


def read_all_queries(store: Store, batches: list[str]) -> pl.DataFrame:
    return pl.concat([read_queries(store, b) for b in batches])


def read_design(store: Store, shard: str) -> SubsetDesign:
    pairs = pl.read_parquet(store.require("subset_design", "membership.parquet", shard))
    args = store.read_args("subset_design", shard)
    K, n = int(args["K"]), int(args["n"])
    M = sp.csr_matrix(
        (np.ones(pairs.height, dtype=np.float32), (pairs["subset"].to_numpy(), pairs["example_index"].to_numpy())),
        shape=(K, n),
    )
    return SubsetDesign(membership=M, seed=int(args["seed"]))


def read_block_design(store: Store, shard_list: list[str]) -> sp.csr_matrix:
    """The shards' membership matrices as one block-diagonal (sum K) x (sum n) matrix."""
    return sp.block_diag([read_design(store, s).membership for s in shard_list], format="csr", dtype=np.float32)


def load_base_model(store: Store):
    """The frozen base model and tokenizer recorded by the base_model stage."""
    ref = read_json(store.require("base_model", "model_ref.json"))
    return lm.load_model(
        ref["path"], tokenizer_path=ref.get("tokenizer_path"), trust_remote_code=ref["trust_remote_code"], dtype=ref["dtype"]
    )


def load_bank(store: Store, shard: str) -> tuple[OperatorBank, dict]:
    args = store.read_args("steering_operators", shard)
    return OperatorBank.load(store.require("steering_operators", "operators.safetensors", shard)), args


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    ids, mask = lm.encode(tokenizer, texts, max_length)
    return {"input_ids": ids, "attention_mask": mask}


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- stages
def training_corpus(cfg: StrideConfig, store: Store, log: Log, shard: str) -> StageResult:
    """One shard of training passages (and its held-out query candidates) from the configured source."""
    passages = shards_mod.load_shard(cfg.corpus, shard)
    train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    # fail now, not after hours of work, on settings that cannot work for this shard
    dc, size = cfg.design, cfg.corpus.shard_size
    validate_design(train.height, shard_K(dc.K, dc.d, train.height, size), dc.d,
                    note=f" (shard {shard!r}: design.K={dc.K} per corpus.shard_size={size} examples, scaled to its "
                    f"{train.height})")
    lm.check_model_path(cfg.model.path, cfg.model.tokenizer_path)
    train = train.with_row_index("example_index")
    stage = store.stage("training_corpus", shard)
    files = [write_parquet(train, stage / "train.parquet"), write_parquet(holdout, stage / "holdout.parquet")]
    store.write_args("training_corpus", {**cfg.corpus.model_dump(), "shard": shard}, shard)
    lengths = train["text"].str.len_chars()
    log(f"corpus shard {shard}: {train.height} training passages, {holdout.height} held out")
    return StageResult(
        stage="training_corpus",
        path=stage,
        metadata={"rows": train.height, "holdout_rows": holdout.height, "mean_chars": float(lengths.mean()),
                  "source": cfg.corpus.source, "shard": shard,
                  "source_digest": shards_mod.shard_digest(cfg.corpus, shard, passages)},
        markdown={"sample": markdown_table(train.head(5).select("example_id", "text"))},
        params={f"corpus.{k}": v for k, v in cfg.corpus.model_dump().items()},
        metrics={"corpus_rows": train.height, "holdout_rows": holdout.height},
        fingerprint=file_digest(*files),
    )


def query_set(cfg: StrideConfig, store: Store, log: Log, batch: str) -> StageResult:
    """One batch of queries to attribute: held-out passages and prompts (default) or a query file."""
    queries = shards_mod.load_batch(cfg, batch)
    path = write_parquet(queries, store.path("query_set", "queries.parquet", batch))
    store.write_args("query_set", {**cfg.queries.model_dump(), "batch": batch}, batch)
    kinds = dict(queries.group_by("kind").len().iter_rows())
    log(f"queries {batch}: {queries.height} ({kinds})")
    return StageResult(
        stage="query_set",
        path=path.parent,
        metadata={"rows": queries.height, "batch": batch, "source_digest": shards_mod.batch_digests(cfg)[batch], **{f"kind_{k}": int(v) for k, v in kinds.items()}},
        markdown={"sample": markdown_table(queries.head(5))},
        params={"queries.n_holdout": cfg.queries.n_holdout, "queries.n_prompts": len(cfg.queries.prompts)},
        metrics={"queries": queries.height},
        fingerprint=file_digest(path),
    )


def base_model(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """The frozen model: a user's transformers model, or a small GPT-2 trained here on the corpus."""
    mc = cfg.model
    passages = pl.concat(list(shards_mod.load_shards(cfg.corpus).values()))
    train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    stage = store.stage("base_model")
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    if mc.path is None:
        tokenizer = lm.train_tokenizer(train["text"].to_list(), mc.tiny.vocab_size)
        model = lm.build_tiny_gpt2(tokenizer, mc.tiny, mc.max_length)
        batch = encode_texts(tokenizer, train["text"].to_list(), mc.max_length)
        rows = lm.train_lm(
            model, batch["input_ids"], batch["attention_mask"], steps=mc.tiny.steps, batch_size=mc.tiny.batch_size,
            lr=mc.tiny.lr, weight_decay=mc.tiny.weight_decay, seed=mc.tiny.seed,
            device=resolve_device(cfg.training.device), log=log,
        )
        curve = [(int(r["step"]), float(r["loss"])) for r in rows]
        model = model.to("cpu")
        lm.save_model(model, tokenizer, stage / "model")
        ref = {"path": str(stage / "model"), "tokenizer_path": None, "trained_here": True,
               "trained_on_examples": train.height}
        fingerprint = file_digest(stage / "model")
    else:
        model, tokenizer = lm.load_model(
            mc.path, tokenizer_path=mc.tokenizer_path, trust_remote_code=mc.trust_remote_code, dtype=mc.dtype
        )
        ref = {"path": mc.path, "tokenizer_path": mc.tokenizer_path, "trained_here": False}
        local = _local_weights(mc.path)
        fingerprint = file_digest(*local) if local else mc.path  # a hub id names its weights
    ref.update(trust_remote_code=mc.trust_remote_code, dtype=mc.dtype, max_length=mc.max_length)
    write_json(ref, stage / "model_ref.json")
    store.write_args("base_model", mc.model_dump())
    evals = {}
    for name, frame in (("train", train.head(512)), ("heldout", holdout.head(512))):
        if frame.height:
            b = encode_texts(tokenizer, frame["text"].to_list(), mc.max_length)
            evals[f"{name}_nll"] = float(lm.example_losses(model, b["input_ids"], b["attention_mask"]).mean())
    n_params = sum(p.numel() for p in model.parameters())
    log(f"base model: {n_params:,} parameters, " + ", ".join(f"{k}={v:.3f}" for k, v in evals.items()))
    result = StageResult(
        stage="base_model",
        path=stage,
        metadata={"parameters": n_params, "architecture": type(model).__name__, "vocab": len(tokenizer),
                  "seconds": time.perf_counter() - start, **evals},
        params={"model.path": mc.path or "tiny-gpt2 (trained here)", "model.max_length": mc.max_length,
                **({f"model.tiny.{k}": v for k, v in mc.tiny.model_dump().items()} if mc.path is None else {})},
        metrics={**evals, "parameters": float(n_params)},
        curves={"lm_loss": curve},
        fingerprint=fingerprint,
    )
    if curve:
        result.plots["lm_loss"] = plots.curves({"train loss": curve}, stage / "lm_loss.png", "base model training")
    return result


def _local_weights(path: str) -> list[Path]:
    p = Path(path).expanduser()
    return sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json")) if p.is_dir() else []


def subset_design(cfg: StrideConfig, store: Store, log: Log, shard: str) -> StageResult:
    """K subsets of one shard's training examples, each example in exactly d of them."""
    n = read_corpus(store, shard).height
    dc = cfg.design
    seed = shards_mod.derive_seed(dc.seed, shard)
    K = shard_K(dc.K, dc.d, n, cfg.corpus.shard_size)
    design = draw_design(n, K, dc.d, seed)
    subsets, examples = design.member_table()
    pairs = pl.DataFrame({"subset": subsets.astype(np.int32), "example_index": examples.astype(np.int32)})
    path = write_parquet(pairs.sort(["subset", "example_index"]), store.path("subset_design", "membership.parquet", shard))
    store.write_args("subset_design", {**dc.model_dump(), "K": K, "seed": seed, "n": n, "shard": shard}, shard)
    sizes = design.subset_sizes()
    log(f"design {shard}: K={K}, d={dc.d}, n={n}, subset sizes {sizes.min()}..{sizes.max()}")
    return StageResult(
        stage="subset_design",
        path=path.parent,
        metadata={"K": K, "d": dc.d, "n": n, "shard": shard, "subset_size_min": int(sizes.min()),
                  "subset_size_mean": float(sizes.mean()), "subset_size_max": int(sizes.max())},
        params={"design.K": K, "design.d": dc.d, "design.seed": seed, "n": n},
        metrics={"subset_size_mean": float(sizes.mean())},
        fingerprint=file_digest(path),
    )


def shard_training(tc: TrainConfig, n: int, d: int, shard: str) -> TrainConfig:
    """The shard's training settings: its own seed, and steps from ``epochs`` when that is set."""
    steps = tc.steps if tc.epochs is None else max(1, math.ceil(tc.epochs * n * d / tc.batch_size))
    return tc.model_copy(update={"steps": steps, "seed": shards_mod.derive_seed(tc.seed, shard)})


def steering_operators(cfg: StrideConfig, store: Store, log: Log, shard: str) -> StageResult:
    """One shard's operator bank: shared basis + per-subset matrices trained on cached features of the frozen model."""
    oc = cfg.operators
    design = read_design(store, shard)
    tc = shard_training(cfg.training, design.n, design.d, shard)
    device = resolve_device(tc.device)
    model, tokenizer = load_base_model(store)
    texts = read_corpus(store, shard)["text"].to_list()
    if len(texts) != design.n:
        raise StrideInputError(f"subset design of shard {shard!r} covers n={design.n} examples but the shard has "
                               f"{len(texts)}: re-materialize subset_design for it")
    batch = _to(encode_texts(tokenizer, texts, cfg.model.max_length), device)
    site = make_site(model.to(device), oc.form, oc.layer)
    start = time.perf_counter()
    feats = encode_all(site, batch)
    cache_seconds = time.perf_counter() - start
    log(f"operators {shard}: cached {tuple(feats.shape)} features at the {oc.form} site in {cache_seconds:.1f}s")
    bank = OperatorBank(design.K, site.in_dim, site.out_dim, oc.rank, oc.basis, oc.mlp_hidden, oc.init_scale, tc.seed)
    bank.to(device).set_feature_stats(feats, batch["attention_mask"])
    trainlog = train_operators(site, bank, feats, batch, design, tc, log)
    diag = _diagnostics(site, bank, batch, design, cfg)
    stage = store.stage("steering_operators", shard)
    bank_path = bank.to("cpu").save(stage / "operators.safetensors")
    log_path = write_parquet(pl.DataFrame(trainlog.rows), stage / "training_log.parquet")
    layer = getattr(site, "layer", None)
    store.write_args("steering_operators", {"operators": oc.model_dump(), "training": tc.model_dump(), "layer": layer,
                                             "measure_mode": cfg.measure.mode, "shard": shard}, shard)
    final = trainlog.rows[-1] if trainlog.rows else {}
    keys = [k for k in ("fidelity", "stability", "linearity") if k in final]
    result = StageResult(
        stage="steering_operators",
        path=stage,
        metadata={"form": oc.form, "layer": -1 if layer is None else layer, "rank": oc.rank, "K": design.K,
                  "shard": shard, "steps": tc.steps, "epochs": float(final.get("epochs", 0.0)),
                  "seconds": trainlog.seconds, "cache_seconds": cache_seconds,
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
        result.plots["operator_loss"] = plots.curves(result.curves, stage / "operator_loss.png",
                                                     "operator training losses", log_y=True)
    return result


def _diagnostics(site, bank: OperatorBank, batch, design: SubsetDesign, cfg: StrideConfig) -> dict[str, float]:
    """Collapse and fit diagnostics on a probe of training examples.

    member_gap_z: mean over probes of (mean response of member operators - mean of the others)
    in units of the probe's response std; > 0 means operators favour their own members.
    """
    rng = np.random.default_rng(cfg.training.seed)
    probe = np.sort(rng.choice(design.n, size=min(64, design.n), replace=False))
    Y = responses(site, bank, take(batch, torch.as_tensor(probe, device=batch["input_ids"].device)), cfg.measure.mode,
                  cfg.measure.query_batch, cfg.measure.operator_chunk)
    member = design.membership[:, probe].T.toarray().astype(bool)
    std = Y.std(axis=1) + 1e-12
    gap = (np.array([Y[i, member[i]].mean() - Y[i, ~member[i]].mean() for i in range(len(probe))]) / std)
    cv = float(np.mean(Y.std(axis=1) / (np.abs(Y.mean(axis=1)) + 1e-12)))
    return {"member_gap_z": float(gap.mean()), "top_direction_energy": top_direction_energy(bank),
            "response_cv": cv}


def perturbation_matrix(cfg: StrideConfig, store: Store, log: Log, shard: str, batch: str) -> StageResult:
    """One block of responses, queries of a batch x operators of a shard: loss_base(q) - loss_k(q)."""
    mc = cfg.measure
    device = resolve_device(mc.device)
    queries = read_queries(store, batch)
    model, tokenizer = load_base_model(store)
    bank, args = load_bank(store, shard)
    site = make_site(model.to(device), args["operators"]["form"], args["layer"])
    tokens = _to(encode_texts(tokenizer, queries["text"].to_list(), cfg.model.max_length), device)
    start = time.perf_counter()
    Y = responses(site, bank.to(device), tokens, mc.mode, mc.query_batch, mc.operator_chunk,
                  progress=lambda done, total: log(f"measured {done}/{total} queries"))
    seconds = time.perf_counter() - start
    base = _base_losses(site, tokens, mc.query_batch)
    frame = pl.DataFrame({"query_id": queries["query_id"], "base_loss": base.astype(np.float32),
                          "response": Y.tolist()}, schema_overrides={"response": pl.Array(pl.Float32, bank.K)})
    key = block_key(shard, batch)
    path = write_parquet(frame, store.path("perturbation_matrix", "responses.parquet", key))
    store.write_args("perturbation_matrix", {**mc.model_dump(), "shard": shard, "batch": batch}, key)
    return StageResult(
        stage="perturbation_matrix",
        path=path.parent,
        metadata={"queries": Y.shape[0], "K": Y.shape[1], "shard": shard, "batch": batch, "mode": mc.mode,
                  "seconds": seconds, "seconds_per_query": seconds / max(1, Y.shape[0]),
                  "mean_abs_response": float(np.abs(Y).mean()), "mean_base_loss": float(base.mean())},
        params={f"measure.{k}": v for k, v in mc.model_dump().items()},
        metrics={"measure_seconds": seconds, "mean_abs_response": float(np.abs(Y).mean()),
                 "mean_query_base_loss": float(base.mean())},
        plots={"responses": plots.histogram(Y.ravel(), store.path("perturbation_matrix", "responses.png", key),
                                            "responses y[q,k]", "loss_base - loss_k")},
        fingerprint=file_digest(path),
    )


def block_key(shard: str, batch: str) -> str:
    """Storage key of one perturbation block."""
    return f"{batch}/{shard}"


@torch.no_grad()
def _base_losses(site, batch: dict[str, torch.Tensor], chunk: int) -> np.ndarray:
    """Each query's loss under the frozen model, in chunks (all queries' logits at once can take GBs)."""
    n = batch["input_ids"].shape[0]
    parts = []
    for start in range(0, n, chunk):
        sub = take(batch, torch.arange(start, min(start + chunk, n), device=batch["input_ids"].device))
        parts.append(site.example_loss(site.logits(site.encode(sub), sub), sub).cpu())
    return torch.cat(parts).numpy()


def read_responses(store: Store, batch: str, shard_list: list[str]) -> tuple[pl.DataFrame, np.ndarray]:
    """The batch's responses to every shard's operators, side by side: (query frame, Q x sum K)."""
    meta, blocks = None, []
    for shard in shard_list:
        frame = pl.read_parquet(store.require("perturbation_matrix", "responses.parquet", block_key(shard, batch)))
        if meta is None:
            meta = frame.drop("response")
        elif frame["query_id"].to_list() != meta["query_id"].to_list():
            raise StrideInputError(f"responses of shard {shard!r} are for another version of query batch {batch!r}: "
                                   "re-materialize its perturbation_matrix block")
        blocks.append(np.asarray(frame["response"].to_numpy(), dtype=np.float64))
    if meta is None:
        raise StrideInputError("no shards: the corpus is empty (add data, or check corpus.paths)")
    return meta, np.hstack(blocks)


def influence_table(influence: sp.csr_matrix, query_ids: list[str], train: pl.DataFrame) -> pl.DataFrame:
    """Long table of non-zero scores: query_id, example_id, example_index, score."""
    coo = influence.tocoo()
    return pl.DataFrame({
        "query_id": np.asarray(query_ids, dtype=object)[coo.row].tolist(),
        "example_index": coo.col.astype(np.int64),
        "score": coo.data.astype(np.float32),
    }).join(train.select(pl.col("example_index").cast(pl.Int64), "example_id"), on="example_index").select(
        "query_id", "example_id", "example_index", "score")


def top_k_table(scores: pl.DataFrame, train: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each query's k highest positive scores with the passage text."""
    return (
        scores.filter(pl.col("score") > 0)
        .with_columns(pl.col("score").rank("ordinal", descending=True).over("query_id").alias("rank"))
        .filter(pl.col("rank") <= k)
        .join(train.select("example_id", "text"), on="example_id")
        .sort(["query_id", "rank"])
        .select("query_id", "rank", "example_id", "score", "text")
    )


def influence_scores(cfg: StrideConfig, store: Store, log: Log, batch: str) -> StageResult:
    """Per-query Lasso recovery of per-example influence for one query batch, over every shard."""
    rc = cfg.recovery
    shard_list = shards_mod.shard_names(cfg.corpus)
    meta, Y = read_responses(store, batch, shard_list)
    membership, train = read_block_design(store, shard_list), read_train(store, shard_list)
    start = time.perf_counter()
    rec = recover(Y, membership, rc)
    seconds = time.perf_counter() - start
    scores = influence_table(rec.influence, meta["query_id"].to_list(), train)
    top = top_k_table(scores, train, rc.top_k)
    stage = store.stage("influence_scores", batch)
    per_query = meta.with_columns(lambda_ratio=rec.ratio, alpha=rec.alpha, r2=rec.r2, nnz=rec.nnz)
    paths = [write_parquet(scores, stage / "scores.parquet"), write_parquet(top, stage / "top_k.parquet"),
             write_parquet(per_query, stage / "per_query.parquet")]
    store.write_args("influence_scores", {**rc.model_dump(), "batch": batch, "shards": shard_list}, batch)
    log(f"influence {batch}: {scores.height} non-zero scores over {Y.shape[0]} queries in {seconds:.1f}s")
    shown = top.filter(pl.col("query_id").is_in(meta["query_id"].head(3).to_list()))
    return StageResult(
        stage="influence_scores",
        path=stage,
        metadata={"queries": Y.shape[0], "batch": batch, "shards": len(shard_list), "nonzero": scores.height, "nnz_per_query": float(rec.nnz.mean()),
                  "r2_mean": float(rec.r2.mean()), "lambda_ratio_mean": float(rec.ratio.mean()), "seconds": seconds,
                  "positive_fraction": float((scores["score"] > 0).mean()) if scores.height else 0.0,
                  "finite": bool(np.isfinite(rec.influence.data).all())},
        markdown={"top_examples": markdown_table(shown.with_columns(pl.col("text").str.slice(0, 80)))},
        params={f"recovery.{k}": v for k, v in rc.model_dump().items()},
        metrics={"recovery_seconds": seconds, "nnz_per_query": float(rec.nnz.mean()), "r2_mean": float(rec.r2.mean())},
        plots={"scores": plots.histogram(scores["score"].to_numpy(), stage / "scores.png", "non-zero influence scores",
                                         "score")},
        files=[paths[2]],
        fingerprint=file_digest(*paths),
    )


def _inputs_version(store: Store, batches: list[str], shard_list: list[str], settings: dict) -> str:
    """Version of a curated output: a hash of the scores and corpus blocks it reads and its settings."""
    files = [store.require("influence_scores", "scores.parquet", b) for b in batches]
    files += [store.require("training_corpus", "train.parquet", s) for s in shard_list]
    return file_digest(*files)[:8] + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:4]


def curated_dataset(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Examples kept (top influence for the queries) and dropped (strongly harmful), with reasons: a versioned dataset."""
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    decided = curate(read_scores(store, batches), read_train(store, shard_list), cfg.curation)
    kept, dropped = decided.filter(pl.col("decision") == "keep"), decided.filter(pl.col("decision") == "drop")
    version = _inputs_version(store, batches, shard_list, cfg.curation.model_dump())
    stage = store.stage("curated_dataset")
    folder = write_dataset(stage, version, {"keep": kept, "drop": dropped}, "stride curated dataset",
                           "Training examples kept (each query's most influential) and dropped (strongly "
                           "harmful across the query set), with their scores and the reason for each decision.")
    store.write_args("curated_dataset", cfg.curation.model_dump())
    log(f"curated: kept {kept.height}, dropped {dropped.height} (version {version})")
    return StageResult(
        stage="curated_dataset",
        path=folder,
        metadata={"rows": kept.height, "dropped": dropped.height, "version": version},
        markdown={"kept": markdown_table(kept.head(5).select("example_id", "score_sum", "reason")),
                  "dropped": markdown_table(dropped.head(5).select("example_id", "score_sum", "reason"))},
        params={f"curation.{k}": v for k, v in cfg.curation.model_dump().items()},
        metrics={"kept": kept.height, "dropped": dropped.height},
        plots={"kept_vs_dropped": plots.histograms(
            {"kept": kept["score_sum"].to_numpy(), "dropped": dropped["score_sum"].to_numpy()},
            stage / "kept_vs_dropped.png", "summed influence of curated examples", "score summed over queries")},
        files=[folder / "README.md"],
        fingerprint=file_digest(*sorted(folder.glob("*.parquet"))),
    )


def selected_dataset(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Data selection: the training examples with the most influence on the queries (tasks take turns), a versioned dataset."""
    sc = cfg.selection
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    train, queries = read_train(store, shard_list), read_all_queries(store, batches)
    if sc.task_column in queries.columns:
        queries = queries.with_columns(pl.col(sc.task_column).cast(pl.Utf8).alias("task"))
    n = max(1, round(sc.fraction * train.height))
    chosen = select(read_scores(store, batches).select("query_id", "example_id", "score"),
                    train.select("example_id", "text", "shard"), queries.select("query_id", *(
                        ["task"] if "task" in queries.columns else [])), n)
    picked, rest = chosen.filter(pl.col("selected")), chosen.filter(~pl.col("selected"))
    version = _inputs_version(store, batches, shard_list, sc.model_dump())
    folder = write_dataset(store.stage("selected_dataset"), version, {"selected": picked, "not_selected": rest},
                           "stride data selection", f"The {n} training examples with the most influence on the "
                           "query set (tasks taking turns), and the others, each with its reason.")
    store.write_args("selected_dataset", {**sc.model_dump(), "n": n})
    log(f"selected {picked.height} of {chosen.height} examples (version {version})")
    return StageResult(
        stage="selected_dataset",
        path=folder,
        metadata={"rows": picked.height, "candidates": chosen.height, "version": version,
                  "tasks": int(picked["task"].n_unique()) if picked.height else 0},
        markdown={"selected": markdown_table(picked.head(5).select("example_id", "task", "score", "reason"))},
        params={f"selection.{k}": v for k, v in sc.model_dump().items()},
        metrics={"selected": picked.height},
        plots={"selected_vs_not": plots.histograms(
            {"selected": picked["score_sum"].to_numpy(), "not selected": rest["score_sum"].to_numpy()},
            store.path("selected_dataset", "selected_vs_not.png"), "influence on the query set", "score summed over queries")},
        files=[folder / "README.md"],
        fingerprint=file_digest(*sorted(folder.glob("*.parquet"))),
    )


def contamination_report(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Suspected test-set leaks: highly influential training examples that share text with a query, with evidence."""
    cc = cfg.contamination
    batches, shard_list = shards_mod.batch_names(cfg), shards_mod.shard_names(cfg.corpus)
    train, queries = read_train(store, shard_list), read_all_queries(store, batches)
    leaks = audit(read_scores(store, batches).select("query_id", "example_id", "score"),
                  queries.select("query_id", "text"), train.select("example_id", "text"),
                  k=cc.k, min_overlap=cc.min_overlap, n=cc.ngram)
    summary = audit_markdown(leaks)
    stage = store.stage("contamination_report")
    paths = [write_parquet(leaks, stage / "leaks.parquet")]
    with atomic_path(stage / "summary.md") as tmp:
        tmp.write_text(summary)
    paths.append(stage / "summary.md")
    store.write_args("contamination_report", cc.model_dump())
    n_queries = int(leaks["query_id"].n_unique()) if leaks.height else 0
    log(f"contamination: {leaks.height} suspected leaks for {n_queries} of {queries.height} queries")
    return StageResult(
        stage="contamination_report",
        path=stage,
        metadata={"rows": leaks.height, "queries_with_leaks": n_queries, "queries": queries.height},
        markdown={"summary": summary},
        params={f"contamination.{k}": v for k, v in cc.model_dump().items()},
        metrics={"suspected_leaks": leaks.height, "queries_with_leaks": n_queries},
        plots={"overlap": plots.histogram(leaks["overlap"].to_numpy() if leaks.height else np.zeros(0),
                                          stage / "overlap.png", "text overlap of suspected leaks",
                                          f"share of the query's word {cc.ngram}-grams in the example")},
        files=paths,
        fingerprint=file_digest(*paths),
    )


def read_scores(store: Store, batches: list[str], name: str = "scores.parquet") -> pl.DataFrame:
    """The influence scores (or top-k tables) of the query batches, stacked."""
    return pl.concat([pl.read_parquet(store.require("influence_scores", name, b)) for b in batches])
