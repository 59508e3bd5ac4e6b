"""Per-token attribution (engine/token_attribution.py, measure.token_responses, `stride attribute --tokens`).

A planted case: one training example holds a phrase no other example has, the query ends with it;
STRIDE on a tiny GPT-2 finds the example, and its per-token scores sit on the phrase's tokens. The
per-token scores of every example average exactly to its score, on the planted case and on a stored
micro-profile run, and they equal the Lasso's affine map on its support up to the solver's tolerance.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from stride_assets.engine.backbone import make_site
from stride_assets.engine.config import RecoveryConfig, StrideConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.measure import responses, target_weights, token_responses
from stride_assets.engine.token_attribution import lasso_token_scores, query_responses, token_scores

VOCAB, T, N = 64, 12, 48
PHRASE = [50, 51, 52, 53, 54, 55]  # ids no other example uses (the others draw from 1..39)
AT = 6  # the phrase fills positions 6..11: targets 5..10
QUERY = "The for statement is used to iterate over the elements of a sequence."


def _planted() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (N, T), generator=g)
    ids[0, AT:] = torch.tensor(PHRASE)  # training example 0 holds the phrase
    q = torch.randint(1, 40, (1, T), generator=g)
    q[0, AT:] = torch.tensor(PHRASE)  # the query: an unrelated first half, then the phrase
    return ({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            {"input_ids": q, "attention_mask": torch.ones_like(q)})


@pytest.fixture(scope="module", params=["head", "activation"])
def fitted(request, one_torch_thread):
    """A STRIDE bank on the planted corpus (head form: one backward pass; activation: one per token)."""
    from stride_assets.engine.stride import Stride

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0)).eval()
    cfg = StrideConfig().with_(operators={"form": request.param, "rank": 8},
                               training={"steps": 150, "batch_size": 24, "lr": 3e-2, "log_every": 50},
                               recovery={"lambda_ratio": 0.1, "n_jobs": 1})
    train, query = _planted()
    stride = Stride(make_site(model, request.param), cfg)
    design = draw_design(N, 48, 3, seed=0)
    bank, _ = stride.fit_operators(stride.cache_features(train), train, design, log=lambda _: None)
    return stride, bank, design, query


def _affine_map(token_y, w, M, alpha, examples):
    """The Lasso's KKT map on the support, applied to each token: G^-1 (Mc_S^T yc_t - K alpha s)."""
    S = np.flatnonzero(w)
    Mc = M.toarray()[:, S]
    Mc = Mc - Mc.mean(axis=0)
    yc = token_y - token_y.mean(axis=1, keepdims=True)
    out = np.linalg.pinv(Mc.T @ Mc) @ (Mc.T @ yc.T - M.shape[0] * alpha * np.sign(w[S])[:, None])
    return out[np.searchsorted(S, examples)].T


def test_planted_phrase_is_where_its_example_helps(fitted):
    stride, bank, design, query = fitted
    token_Y = token_responses(stride.site, bank, query)  # (1, T-1, K)
    weights = target_weights(query)
    Y = query_responses(token_Y, weights)
    seq = responses(stride.site, bank, query)  # the sequence-level path
    assert np.abs(Y - seq).max() <= 1e-5 * np.abs(seq).max()  # the per-token responses decompose it

    rec = stride.recover(Y, design.membership)
    w = rec.influence.toarray()[0].astype(np.float64)
    top = np.argsort(-w)[:3]
    assert top[0] == 0, f"the planted example is not the query's top example: {top}, {w[top]}"
    per = token_scores(token_Y[0], weights[0], w, design.membership, top, stride.cfg.recovery)
    assert per.shape == (T - 1, 3)
    assert np.allclose(per.mean(axis=0), w[top], rtol=1e-9, atol=1e-12)  # exact mean-over-tokens identity
    # the same numbers as the Lasso's affine map on its support, up to the solver's tolerance (tol 1e-6)
    affine = _affine_map(token_Y[0], w, design.membership, rec.alpha[0], top)
    print(f"affine gap {np.abs(affine - per).max() / np.abs(w).max():.2e}")
    assert np.abs(affine - per).max() <= 1e-4 * np.abs(w).max()

    mine = per[:, 0]
    span = np.arange(AT - 1, T - 1)  # the targets that are the phrase's tokens
    rest = np.setdiff1d(np.arange(T - 1), span)
    print(f"{stride.site.form}: phrase tokens {mine[span].mean():.3f} vs others {mine[rest].mean():.3f}; "
          f"top tokens {np.argsort(-mine)[:3]}")
    assert mine[span].mean() > mine[rest].mean() + 0.5 * abs(w[0])
    assert len(set(np.argsort(-mine)[:3]) & set(span)) >= 2


def test_only_scored_tokens_get_responses(fitted):
    """With a loss_mask (a prompt/completion row), the prompt's targets have no responses and the scored
    ones still average to the query's."""
    stride, bank, _, query = fitted
    masked = {**query, "loss_mask": torch.zeros_like(query["input_ids"])}
    masked["loss_mask"][0, AT:] = 1
    weights = target_weights(masked)
    assert weights[0].nonzero()[0].tolist() == list(range(AT - 1, T - 1))
    token_Y = token_responses(stride.site, bank, masked)
    assert np.abs(token_Y[0, : AT - 1]).max() == 0
    seq = responses(stride.site, bank, masked)
    assert np.abs(query_responses(token_Y, weights) - seq).max() <= 1e-5 * np.abs(seq).max()


def test_empty_support_and_rank_deficient_design():
    rng = np.random.default_rng(0)
    M = sp.csr_matrix(rng.random((12, 5)) < 0.4, dtype=np.float64)
    M = sp.hstack([M, M[:, :1]]).tocsr()  # example 5 duplicates example 0: Mc_S is rank deficient
    token_y = rng.standard_normal((7, 12))
    weights = np.ones(7)
    cfg = RecoveryConfig(n_jobs=1)
    zero = lasso_token_scores(token_y, weights, np.zeros(6), M, np.array([0, 3]), cfg)
    assert zero.shape == (7, 2) and not zero.any()
    w = np.array([0.5, 0.0, -0.2, 0.0, 0.0, 0.3])
    per = lasso_token_scores(token_y, weights, w, M, np.array([5, 0, 1]), cfg)
    assert np.isfinite(per).all()
    assert np.allclose(per.mean(axis=0), [0.3, 0.5, 0.0])
    assert not per[:, 2].any()  # off the support: 0 at every token
    assert np.allclose(per[:, 0], per[:, 1] - 0.2)  # twins share the split (minimum-norm least squares)


def test_ridge_split_is_the_ridge_of_each_token():
    rng = np.random.default_rng(1)
    M = sp.csr_matrix(rng.random((10, 8)) < 0.4, dtype=np.float64)
    token_y = rng.standard_normal((5, 10))
    cfg = RecoveryConfig(solver="ridge", lambda_ratio=0.1, n_jobs=1)
    from stride_assets.engine.recovery import recover

    w = recover(token_y.mean(axis=0, keepdims=True), M, cfg).influence.toarray()[0]
    per = token_scores(token_y, np.ones(5), w, M, np.arange(8), cfg)
    assert np.allclose(per.mean(axis=0), w, atol=1e-6)


# --- on a stored run ---------------------------------------------------------------------------------


def _stored_run(tmp_path_factory, method: str):
    """The micro profile run end to end into a fresh store with ``attribution.method``."""
    from stride_assets.engine import pipeline
    from stride_assets.engine.config import load_config
    from stride_assets.engine.store import Store

    store = Store(tmp_path_factory.mktemp(f"tokens-{method}") / "store")
    pipeline.run_all(load_config("micro", {"attribution": {"method": method}}), store, log=lambda _: None)
    return store


@pytest.fixture(scope="module")
def micro_store(tmp_path_factory, one_torch_thread):
    return _stored_run(tmp_path_factory, "stride")


def _split_of_the_top(store, top_k: int = 3):
    """``attribute_tokens`` of QUERY on a stored run, checked against ``attribute``: the same top
    examples and scores, and per-token scores averaging to each example's score."""
    from stride_assets.engine import pipeline
    from stride_assets.engine.token_attribution import attribute_tokens

    found = attribute_tokens([QUERY], store, top_k=top_k)
    plain = pipeline.attribute([QUERY], store, top_k=top_k)
    assert found.top["example_id"].to_list() == plain["example_id"].to_list()
    assert np.allclose(found.top["score"].to_numpy(), plain["score"].to_numpy(), rtol=1e-4)
    means = found.tokens.group_by("rank").agg(pl.col("token_score").mean()).sort("rank")
    assert np.allclose(means["token_score"].to_numpy(), found.top["score"].to_numpy(), rtol=1e-5)
    return found


def test_token_scores_of_a_stored_run_average_to_its_scores(micro_store):
    found = _split_of_the_top(micro_store)
    assert found.tokens.group_by("rank").len()["len"].to_list() == [len(found.texts[QUERY]) - 1] * 3
    assert found.tokens["token_score"].std() > 2 * abs(found.top["score"].mean())  # not a flat split


def test_a_completion_query_reports_its_completion_tokens_only(micro_store):
    from stride_assets.engine import pipeline
    from stride_assets.engine.token_attribution import attribute_tokens

    query = {"prompt": "The for statement", "completion": " is used to iterate over a sequence."}
    found = attribute_tokens([query], micro_store, top_k=2)
    plain = pipeline.attribute([query], micro_store, top_k=2)
    assert np.allclose(found.top["score"].to_numpy(), plain["score"].to_numpy(), rtol=1e-4)
    tokens = found.texts[found.top["query"][0]]
    prompt_tokens = next(i for i in range(len(tokens)) if "".join(tokens[:i + 1]).startswith("The for statement "))
    positions = found.tokens["position"].unique().sort().to_list()
    assert positions == list(range(prompt_tokens, len(tokens)))  # from the completion's first token on
    means = found.tokens.group_by("rank").agg(pl.col("token_score").mean()).sort("rank")
    assert np.allclose(means["token_score"].to_numpy(), found.top["score"].to_numpy(), rtol=1e-5)


def test_cli_attribute_tokens(micro_store, capsys):
    from stride_assets import cli

    assert cli.main(["attribute", QUERY, "--top-k", "2", "--tokens", "2", "--store", str(micro_store.root)]) == 0
    out = capsys.readouterr().out
    assert out.count("helps most:") == 2 and out.count("#1 ") == 1 and "[" in out
    assert cli.main(["attribute", QUERY, "--tokens", "-1"]) == 2


@pytest.fixture(scope="module")
def ensemble_store(tmp_path_factory, one_torch_thread):
    return _stored_run(tmp_path_factory, "ensemble")


@pytest.mark.parametrize("which", ["micro_store", "ensemble_store"])
def test_the_attribution_report_shades_the_query_tokens_each_example_drives(which, request):
    """The pipeline's report: each shown example of the first queries carries its per-token scores,
    which average to the example's stored score (STRIDE's operators; the ensemble's both parts)."""
    store = request.getfixturevalue(which)
    page = (store.root / "attribution_report" / "default" / "report.html").read_text()
    scores = store.read_scores(["default"])
    queries = store.read_queries("default")
    first = queries.filter(pl.col("kind") == "prompt")["query_id"][0]  # the user's prompt is among those shaded
    card = page.split(f"<h2>Query <code>{first}</code></h2>")[1].split("</article>")[0]
    items = re.findall(r'<li data-item><a href="#ex-\d+"><code>([^<]+)</code></a>(.*?)</li>', card, re.S)
    shaded = [(eid, [float(v) for v in re.findall(r'data-score="([^"]+)"', body)]) for eid, body in items]
    assert len(shaded) >= 4 and all(len(v) > 3 for _, v in shaded)  # helpful and harmful, every scored token
    stored = dict(scores.filter(pl.col("query_id") == first).select("example_id", "score").iter_rows())
    for eid, values in shaded:
        assert np.isclose(np.mean(values), stored[eid], rtol=2e-3, atol=1e-6), eid  # .4g in the page
    assert np.std(shaded[0][1]) > 0.2 * abs(np.mean(shaded[0][1]))  # not a flat split over the tokens
    shaded_queries = [c for c in page.split('class="query"')[1:] if "data-tokens" in c.split("</article>")[0]]
    assert len(shaded_queries) == min(20, queries.height)  # report.token_queries (20) of the batch's queries


def test_ensemble_tokens_average_to_the_blended_scores(ensemble_store):
    """attribution.method ensemble: both parts split over the tokens; the mean is the blend's score."""
    _split_of_the_top(ensemble_store)


def test_ekfac_tokens_are_one_token_query_gradients(ensemble_store, monkeypatch):
    """attribution.method ekfac: each scored token's own EK-FAC score; they average to the query's."""
    from stride_assets.engine import token_attribution
    from stride_assets.engine.attribution import ekfac_scores

    cfg, shards = token_attribution.run_settings(ensemble_store)
    cfg = cfg.with_(attribution={"method": "ekfac"})
    monkeypatch.setattr(token_attribution, "run_settings", lambda *_: (cfg, shards))
    found = token_attribution.attribute_tokens([QUERY], ensemble_store, top_k=3)
    reference = ekfac_scores(cfg, ensemble_store, [QUERY], shards)[0]
    top = np.argsort(-reference)[:3]
    train = ensemble_store.read_train(shards)
    by_index = dict(zip(train["example_index"].to_list(), train["example_id"].to_list()))
    assert found.top["example_id"].to_list() == [by_index[int(j)] for j in top]
    assert np.allclose(found.top["score"].to_numpy(), reference[top], rtol=1e-3)
    means = found.tokens.group_by("rank").agg(pl.col("token_score").mean()).sort("rank")
    assert np.allclose(means["token_score"].to_numpy(), found.top["score"].to_numpy(), rtol=1e-5)
    assert found.tokens["token_score"].std() > 2 * abs(found.top["score"].mean())
