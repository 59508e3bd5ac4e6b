"""query_features[batch]: the queries' features at the operators' site, computed once per batch and
read by every shard's perturbation block; the responses are those of measuring from scratch."""

import json

import numpy as np
import polars as pl
import pytest

from stride_assets.engine.errors import StrideInputError


@pytest.fixture(scope="module")
def micro(tmp_path_factory, one_torch_thread):
    from stride_assets.engine import pipeline
    from stride_assets.engine.config import load_config
    from stride_assets.engine.store import Store

    cfg = load_config("micro")
    store = Store(tmp_path_factory.mktemp("qfeat") / "store")
    pipeline.run_all(cfg, store, log=lambda _: None)
    return cfg, store


def test_blocks_from_shared_features_equal_measuring_from_scratch(micro):
    from stride_assets.engine import lm
    from stride_assets.engine.backbone import make_site
    from stride_assets.engine.store import block_key
    from stride_assets.engine.stride import Stride

    cfg, store = micro
    queries = store.read_queries("default")
    model, tokenizer = store.load_base_model()
    tokens = lm.frame_batch(tokenizer, queries, cfg.model.max_length)
    for shard in ("part-0000", "part-0001"):
        bank, args = store.load_bank(shard)
        stride = Stride(make_site(model, args["operators"]["form"], args["layer"]), cfg)
        stored = pl.read_parquet(store.file("responses", block_key(shard, "default")))
        assert np.array_equal(np.asarray(stored["response"].to_list(), dtype=np.float32), stride.measure(bank, tokens))
        assert np.array_equal(stored["base_loss"].to_numpy(), stride.base_losses(tokens).astype(np.float32))
    feats, base = store.load_query_features("default", args["operators"]["form"], args["layer"],
                                            queries["query_id"].to_list())
    assert feats.shape[:2] == tokens["input_ids"].shape and feats.shape[2] == cfg.model.tiny.n_embd
    assert base.shape == (queries.height,)


def test_features_of_another_site_or_query_batch_are_refused(micro):
    from stride_assets.engine import pipeline

    cfg, store = micro
    args_path = store.stage("query_features", "default") / "args.json"
    original = args_path.read_text()
    try:
        args = json.loads(original)
        args_path.write_text(json.dumps({**args, "form": "logit", "layer": None}))
        with pytest.raises(StrideInputError, match=r"query_features\[default\] are at the logit site.*re-materialize"):
            pipeline.run_stage("perturbation_matrix", cfg, store, lambda _: None, shard="part-0000", batch="default")
        args_path.write_text(json.dumps({**args, "query_ids": args["query_ids"][:-1]}))
        with pytest.raises(StrideInputError, match="another version of query batch"):
            pipeline.run_stage("perturbation_matrix", cfg, store, lambda _: None, shard="part-0000", batch="default")
    finally:
        args_path.write_text(original)
