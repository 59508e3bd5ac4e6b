"""The eight stages of a STRIDE run. Each reads its inputs from the store, writes its named
artifacts (atomically, with ``args.json`` beside them) and returns a ``StageResult``.

    training_corpus -> query_set
    training_corpus -> base_model ---------\
    training_corpus -> subset_design -> steering_operators -> perturbation_matrix -> influence_scores -> curated_dataset
                                                  query_set ----/
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine import lm, plots
from stride_assets.engine.artifacts import Store, file_digest, read_json, write_json, write_parquet
from stride_assets.engine.backbone import encode_all, make_site, take
from stride_assets.engine.config import StrideConfig, resolve_device
from stride_assets.engine.curation import curate
from stride_assets.engine.design import SubsetDesign, draw_design, validate_design
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.measure import responses
from stride_assets.engine.operators import OperatorBank, top_direction_energy
from stride_assets.engine.recovery import recover
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.training import train_operators

Log = Callable[[str], None]


# ---------------------------------------------------------------- readers of stored artifacts
def read_corpus(store: Store, part: str = "train") -> pl.DataFrame:
    return pl.read_parquet(store.require("training_corpus", f"{part}.parquet"))


def read_queries(store: Store) -> pl.DataFrame:
    return pl.read_parquet(store.require("query_set", "queries.parquet"))


def read_design(store: Store) -> SubsetDesign:
    pairs = pl.read_parquet(store.require("subset_design", "membership.parquet"))
    args = store.read_args("subset_design")
    K, n = int(args["K"]), int(args["n"])
    M = sp.csr_matrix(
        (np.ones(pairs.height, dtype=np.float32), (pairs["subset"].to_numpy(), pairs["example_index"].to_numpy())),
        shape=(K, n),
    )
    return SubsetDesign(membership=M, seed=int(args["seed"]))


def load_base_model(store: Store):
    """The frozen base model and tokenizer recorded by the base_model stage."""
    ref = read_json(store.require("base_model", "model_ref.json"))
    return lm.load_model(
        ref["path"], tokenizer_path=ref.get("tokenizer_path"), trust_remote_code=ref["trust_remote_code"], dtype=ref["dtype"]
    )


def load_bank(store: Store) -> tuple[OperatorBank, dict]:
    args = store.read_args("steering_operators")
    return OperatorBank.load(store.require("steering_operators", "operators.safetensors")), args


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    ids, mask = lm.encode(tokenizer, texts, max_length)
    return {"input_ids": ids, "attention_mask": mask}


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- stages
def training_corpus(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Training passages (and held-out query candidates) from the configured source."""
    passages = corpus_mod.load_passages(cfg.corpus)
    train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    # fail now, not after the base model has trained, on settings that cannot work for this corpus
    validate_design(train.height, cfg.design.K, cfg.design.d)
    lm.check_model_path(cfg.model.path, cfg.model.tokenizer_path)
    train = train.with_row_index("example_index")
    stage = store.stage("training_corpus")
    files = [write_parquet(train, stage / "train.parquet"), write_parquet(holdout, stage / "holdout.parquet")]
    store.write_args("training_corpus", cfg.corpus.model_dump())
    lengths = train["text"].str.len_chars()
    log(f"corpus: {train.height} training passages, {holdout.height} held out")
    return StageResult(
        stage="training_corpus",
        path=stage,
        metadata={"rows": train.height, "holdout_rows": holdout.height, "mean_chars": float(lengths.mean()),
                  "source": cfg.corpus.source},
        markdown={"sample": markdown_table(train.head(5).select("example_id", "text"))},
        params={f"corpus.{k}": v for k, v in cfg.corpus.model_dump().items()},
        metrics={"corpus_rows": train.height, "holdout_rows": holdout.height},
        fingerprint=file_digest(*files),
    )


def query_set(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Queries to attribute: held-out passages, fixed prompts and an optional file."""
    queries = corpus_mod.build_query_set(read_corpus(store, "holdout"), cfg.queries)
    path = write_parquet(queries, store.path("query_set", "queries.parquet"))
    store.write_args("query_set", cfg.queries.model_dump())
    kinds = dict(queries.group_by("kind").len().iter_rows())
    log(f"queries: {queries.height} ({kinds})")
    return StageResult(
        stage="query_set",
        path=path.parent,
        metadata={"rows": queries.height, **{f"kind_{k}": int(v) for k, v in kinds.items()}},
        markdown={"sample": markdown_table(queries.head(5))},
        params={"queries.n_holdout": cfg.queries.n_holdout, "queries.n_prompts": len(cfg.queries.prompts)},
        metrics={"queries": queries.height},
        fingerprint=file_digest(path),
    )


def base_model(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """The frozen model: a user's transformers model, or a small GPT-2 trained here on the corpus."""
    mc = cfg.model
    train, holdout = read_corpus(store), read_corpus(store, "holdout")
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
        ref = {"path": str(stage / "model"), "tokenizer_path": None, "trained_here": True}
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


def subset_design(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """K subsets of the training set, each example in exactly d of them."""
    n = read_corpus(store).height
    dc = cfg.design
    design = draw_design(n, dc.K, dc.d, dc.seed)
    subsets, examples = design.member_table()
    pairs = pl.DataFrame({"subset": subsets.astype(np.int32), "example_index": examples.astype(np.int32)})
    path = write_parquet(pairs.sort(["subset", "example_index"]), store.path("subset_design", "membership.parquet"))
    store.write_args("subset_design", {**dc.model_dump(), "n": n})
    sizes = design.subset_sizes()
    log(f"design: K={dc.K}, d={dc.d}, n={n}, subset sizes {sizes.min()}..{sizes.max()}")
    return StageResult(
        stage="subset_design",
        path=path.parent,
        metadata={"K": dc.K, "d": dc.d, "n": n, "subset_size_min": int(sizes.min()),
                  "subset_size_mean": float(sizes.mean()), "subset_size_max": int(sizes.max())},
        params={"design.K": dc.K, "design.d": dc.d, "design.seed": dc.seed, "n": n},
        metrics={"subset_size_mean": float(sizes.mean())},
        fingerprint=file_digest(path),
    )


def steering_operators(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Shared basis + per-subset matrices trained on cached features of the frozen model."""
    oc, tc = cfg.operators, cfg.training
    device = resolve_device(tc.device)
    model, tokenizer = load_base_model(store)
    design = read_design(store)
    texts = read_corpus(store)["text"].to_list()
    if len(texts) != design.n:
        raise StrideInputError(f"subset design covers n={design.n} examples but the corpus has {len(texts)}: "
                               "re-materialize subset_design")
    batch = _to(encode_texts(tokenizer, texts, cfg.model.max_length), device)
    site = make_site(model.to(device), oc.form, oc.layer)
    start = time.perf_counter()
    feats = encode_all(site, batch)
    cache_seconds = time.perf_counter() - start
    log(f"operators: cached {tuple(feats.shape)} features at the {oc.form} site in {cache_seconds:.1f}s")
    bank = OperatorBank(design.K, site.in_dim, site.out_dim, oc.rank, oc.basis, oc.mlp_hidden, oc.init_scale, tc.seed)
    bank.to(device).set_feature_stats(feats, batch["attention_mask"])
    trainlog = train_operators(site, bank, feats, batch, design, tc, log)
    diag = _diagnostics(site, bank, batch, design, cfg)
    stage = store.stage("steering_operators")
    bank_path = bank.to("cpu").save(stage / "operators.safetensors")
    log_path = write_parquet(pl.DataFrame(trainlog.rows), stage / "training_log.parquet")
    layer = getattr(site, "layer", None)
    store.write_args("steering_operators", {"operators": oc.model_dump(), "training": tc.model_dump(), "layer": layer,
                                             "measure_mode": cfg.measure.mode})
    final = trainlog.rows[-1] if trainlog.rows else {}
    keys = [k for k in ("fidelity", "stability", "linearity") if k in final]
    result = StageResult(
        stage="steering_operators",
        path=stage,
        metadata={"form": oc.form, "layer": -1 if layer is None else layer, "rank": oc.rank, "K": design.K,
                  "steps": tc.steps, "epochs": float(final.get("epochs", 0.0)), "seconds": trainlog.seconds,
                  "cache_seconds": cache_seconds, **{f"final_{k}": final[k] for k in keys}, **diag},
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


def perturbation_matrix(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Queries x K responses: loss_base(q) - loss_k(q) for every operator k."""
    mc = cfg.measure
    device = resolve_device(mc.device)
    queries = read_queries(store)
    model, tokenizer = load_base_model(store)
    bank, args = load_bank(store)
    site = make_site(model.to(device), args["operators"]["form"], args["layer"])
    batch = _to(encode_texts(tokenizer, queries["text"].to_list(), cfg.model.max_length), device)
    start = time.perf_counter()
    Y = responses(site, bank.to(device), batch, mc.mode, mc.query_batch, mc.operator_chunk,
                  progress=lambda done, total: log(f"measured {done}/{total} queries"))
    seconds = time.perf_counter() - start
    base = _base_losses(site, batch, mc.query_batch)
    frame = pl.DataFrame({"query_id": queries["query_id"], "base_loss": base.astype(np.float32),
                          "response": Y.tolist()}, schema_overrides={"response": pl.Array(pl.Float32, bank.K)})
    path = write_parquet(frame, store.path("perturbation_matrix", "responses.parquet"))
    store.write_args("perturbation_matrix", mc.model_dump())
    return StageResult(
        stage="perturbation_matrix",
        path=path.parent,
        metadata={"queries": Y.shape[0], "K": Y.shape[1], "mode": mc.mode, "seconds": seconds,
                  "seconds_per_query": seconds / max(1, Y.shape[0]), "mean_abs_response": float(np.abs(Y).mean()),
                  "mean_base_loss": float(base.mean())},
        params={f"measure.{k}": v for k, v in mc.model_dump().items()},
        metrics={"measure_seconds": seconds, "mean_abs_response": float(np.abs(Y).mean()),
                 "mean_query_base_loss": float(base.mean())},
        plots={"responses": plots.histogram(Y.ravel(), store.path("perturbation_matrix", "responses.png"),
                                            "responses y[q,k]", "loss_base - loss_k")},
        fingerprint=file_digest(path),
    )


@torch.no_grad()
def _base_losses(site, batch: dict[str, torch.Tensor], chunk: int) -> np.ndarray:
    """Each query's loss under the frozen model, in chunks (all queries' logits at once can take GBs)."""
    n = batch["input_ids"].shape[0]
    parts = []
    for start in range(0, n, chunk):
        sub = take(batch, torch.arange(start, min(start + chunk, n), device=batch["input_ids"].device))
        parts.append(site.example_loss(site.logits(site.encode(sub), sub), sub).cpu())
    return torch.cat(parts).numpy()


def read_responses(store: Store) -> tuple[pl.DataFrame, np.ndarray]:
    frame = pl.read_parquet(store.require("perturbation_matrix", "responses.parquet"))
    return frame.drop("response"), np.asarray(frame["response"].to_numpy(), dtype=np.float64)


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


def influence_scores(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Per-query Lasso recovery of per-example influence from the responses."""
    rc = cfg.recovery
    meta, Y = read_responses(store)
    design, train = read_design(store), read_corpus(store)
    start = time.perf_counter()
    rec = recover(Y, design.membership, rc)
    seconds = time.perf_counter() - start
    scores = influence_table(rec.influence, meta["query_id"].to_list(), train)
    top = top_k_table(scores, train, rc.top_k)
    stage = store.stage("influence_scores")
    per_query = meta.with_columns(lambda_ratio=rec.ratio, alpha=rec.alpha, r2=rec.r2, nnz=rec.nnz)
    paths = [write_parquet(scores, stage / "scores.parquet"), write_parquet(top, stage / "top_k.parquet"),
             write_parquet(per_query, stage / "per_query.parquet")]
    store.write_args("influence_scores", rc.model_dump())
    log(f"influence: {scores.height} non-zero scores over {Y.shape[0]} queries in {seconds:.1f}s")
    shown = top.filter(pl.col("query_id").is_in(meta["query_id"].head(3).to_list()))
    return StageResult(
        stage="influence_scores",
        path=stage,
        metadata={"queries": Y.shape[0], "nonzero": scores.height, "nnz_per_query": float(rec.nnz.mean()),
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


def curated_dataset(cfg: StrideConfig, store: Store, log: Log) -> StageResult:
    """Examples kept (top influence for the queries) and dropped (strongly negative), with reasons."""
    scores = pl.read_parquet(store.require("influence_scores", "scores.parquet"))
    decided = curate(scores, read_corpus(store), cfg.curation)
    stage = store.stage("curated_dataset")
    kept, dropped = decided.filter(pl.col("decision") == "keep"), decided.filter(pl.col("decision") == "drop")
    paths = [write_parquet(kept, stage / "data" / "kept.parquet"), write_parquet(dropped, stage / "data" / "dropped.parquet")]
    store.write_args("curated_dataset", cfg.curation.model_dump())
    log(f"curated: kept {kept.height}, dropped {dropped.height}")
    return StageResult(
        stage="curated_dataset",
        path=stage,
        metadata={"rows": kept.height, "dropped": dropped.height},
        markdown={"kept": markdown_table(kept.head(5).select("example_id", "score_sum", "reason")),
                  "dropped": markdown_table(dropped.head(5).select("example_id", "score_sum", "reason"))},
        params={f"curation.{k}": v for k, v in cfg.curation.model_dump().items()},
        metrics={"kept": kept.height, "dropped": dropped.height},
        fingerprint=file_digest(*paths),
    )
