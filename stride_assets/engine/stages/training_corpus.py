"""Stage ``training_corpus[shard]``: one shard of training passages and its held-out query candidates."""

from __future__ import annotations

from typing import Callable

from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine import lm
from stride_assets.engine import shards as shards_mod
from stride_assets.engine import token_windows
from stride_assets.engine.artifacts import file_digest, write_parquet
from stride_assets.engine.config import StrideConfig
from stride_assets.engine.preflight import check_ids_against_store, check_shard
from stride_assets.engine.result import StageResult, markdown_table
from stride_assets.engine.store import Store


def run(cfg: StrideConfig, store: Store, log: Callable[[str], None], shard: str) -> StageResult:
    """One shard of training passages (and its held-out query candidates) from the configured source."""
    documents = shards_mod.load_shard(cfg.corpus, shard)
    passages = token_windows.windows_of(cfg, store, documents)
    train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    # fail now, not after hours of work, on settings that cannot work for this shard
    check_shard(cfg, shard, train.height)
    check_ids_against_store(store, shard, passages["example_id"].to_list(), shards_mod.shard_names(cfg.corpus))
    lm.check_model_path(cfg.model.path, cfg.model.tokenizer_path)
    train = train.with_row_index("example_index")
    files = [write_parquet(train, store.file("train", shard)), write_parquet(holdout, store.file("holdout", shard))]
    store.seal(*files)
    store.write_args("training_corpus", {**cfg.corpus.model_dump(), "shard": shard}, shard)
    lengths = train["text"].str.len_chars()
    log(f"corpus shard {shard}: {train.height} training passages, {holdout.height} held out")
    return StageResult(
        stage="training_corpus",
        path=store.stage("training_corpus", shard),
        metadata={"rows": train.height, "holdout_rows": holdout.height, "mean_chars": float(lengths.mean()),
                  "source": cfg.corpus.source, "shard": shard, **token_windows.summary(passages),
                  "source_digest": shards_mod.shard_digest(cfg.corpus, shard, documents)},
        markdown={"sample": markdown_table(train.head(5).select("example_id", "text"))},
        params={f"corpus.{k}": v for k, v in cfg.corpus.model_dump().items()},
        metrics={"corpus_rows": train.height, "holdout_rows": holdout.height},
        fingerprint=file_digest(*files),
    )
