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
    feats, base, lse = store.load_query_features("default", args["operators"]["form"], args["layer"],
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


def test_column_banks_read_the_stored_log_normalisers(tmp_path, one_torch_thread):
    """On the logit site the batch's tokens' base log-normalisers are stored with the features; a column
    bank's block computes logits only at its own columns from them, and its responses are those of
    measuring from scratch (bit-identical) and of the vocabulary-wide gradient (to float rounding)."""
    import torch

    from stride_assets.engine import lm, pipeline
    from stride_assets.engine.backbone import make_site
    from stride_assets.engine.config import load_config
    from stride_assets.engine.store import Store, block_key
    from stride_assets.engine.stride import Stride

    cfg = load_config("micro", {"operators": {"form": "logit", "columns": 24}})
    store = Store(tmp_path / "store")
    pipeline.run_all(cfg, store, log=lambda _: None)
    queries = store.read_queries("default")
    model, tokenizer = store.load_base_model()
    tokens = lm.frame_batch(tokenizer, queries, cfg.model.max_length)
    feats, base, lse = store.load_query_features("default", "logit", None, queries["query_id"].to_list())
    assert lse is not None and lse.shape == tokens["input_ids"].shape
    bank, _ = store.load_bank("part-0000")
    assert bank.sparse and bank.A.shape[-1] <= 24
    stride = Stride(make_site(model, "logit"), cfg)
    stored = pl.read_parquet(store.file("responses", block_key("part-0000", "default")))
    Y = np.asarray(stored["response"].to_list(), dtype=np.float32)
    assert np.array_equal(Y, stride.measure(bank, tokens))
    with torch.no_grad():
        dense = -bank.contract(torch.einsum("ntr,ntc->nrc", bank.codes(feats),
                                            _vocabulary_gradient(stride.site, feats, tokens)))
    assert np.abs(Y).max() > 0 and np.allclose(Y, dense.detach().numpy(), rtol=1e-3, atol=1e-6 * np.abs(Y).max())


def _vocabulary_gradient(site, feats, tokens):
    """d (sequence loss) / d logits over the whole vocabulary, by autograd (the dense first-order path's)."""
    import torch

    shift = torch.zeros(*feats.shape[:-1], site.out_dim, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(site.example_loss(site.logits(feats, tokens, shift), tokens).sum(), shift)
    return grad
