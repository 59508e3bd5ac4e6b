"""EK-FAC (Kronfluence) as the pipeline's attribution method: the engine wrapper, the stage table per
method, and the whole graph materialized in Dagster with ``attribution.method: ekfac``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from stride_assets.engine import lm, pipeline
from stride_assets.engine.config import PROFILES_DIR, TinyModelConfig, load_config
from stride_assets.engine.ekfac import Influence, linearized, lm_objective
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.query import attribute
from stride_assets.engine.stages import stages_for
from stride_assets.engine.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [f"the {w} sat on the mat and the {w} ran to the door number {i}" for i, w in
         enumerate(["cat", "dog", "bird", "fish", "cow", "pig", "hen", "fox"] * 3)]


def _tiny_lm():
    tokenizer = lm.train_tokenizer(TEXTS, 300)
    model = lm.build_tiny_gpt2(tokenizer, TinyModelConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=300), 24)
    return model.eval(), tokenizer


def test_factors_depend_on_the_seed_not_on_what_ran_before(tmp_path: Path) -> None:
    """The Fisher's sampled targets come from ``Influence.seed``: the same seed after different global RNG
    use gives the same scores, another seed other ones, and the caller's RNG is left where it was."""
    model, tokenizer = _tiny_lm()
    train, query = lm.encode_batch(tokenizer, TEXTS, 24), lm.encode_batch(tokenizer, TEXTS[5:6], 24)

    def scores(seed: int, folder: str, draws: int) -> np.ndarray:
        torch.manual_seed(123)
        torch.rand(draws)  # whatever ran before in the process
        influence = Influence(model, lm_objective, seed=seed)
        before = torch.get_rng_state()
        factors = influence.fit(train, tmp_path / folder)
        assert torch.equal(before, torch.get_rng_state())  # fitting did not move the caller's RNG
        return influence.scores(query, train, factors)

    a, b, other = scores(0, "a", 1), scores(0, "b", 1000), scores(1, "c", 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)


def test_linearized_gpt2_computes_the_same_logits() -> None:
    model, tokenizer = _tiny_lm()
    batch = lm.encode_batch(tokenizer, TEXTS[:4], 24)
    with torch.no_grad():
        before = model(**batch).logits
        after = linearized(model)(**batch).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_a_training_copy_of_the_query_is_its_most_helpful_example(tmp_path: Path) -> None:
    """Planted: the query is training example 5 verbatim; EK-FAC ranks that example first, positive."""
    model, tokenizer = _tiny_lm()
    train = lm.encode_batch(tokenizer, TEXTS, 24)
    influence = Influence(model, lm_objective)
    with pytest.raises(StrideConfigError, match="fit them first"):
        influence.scores(lm.encode_batch(tokenizer, TEXTS[5:6], 24), train, tmp_path / "none")
    factors = influence.fit(train, tmp_path / "factors")
    assert (factors / "factor_arguments.json").is_file()
    scores = influence.scores(lm.encode_batch(tokenizer, TEXTS[5:6], 24), train, factors)
    assert scores.shape == (1, len(TEXTS)) and np.isfinite(scores).all()
    assert int(np.argmax(scores[0])) == 5 and scores[0, 5] > 0


def test_each_method_has_its_own_stage_table() -> None:
    names = {m: [s.name for s in stages_for(m)] for m in ("stride", "ekfac", "ensemble")}
    stride_only = {"subset_design", "steering_operators", "perturbation_matrix"}
    assert stride_only <= set(names["stride"]) and "influence_factors" not in names["stride"]
    assert not stride_only & set(names["ekfac"]) and "influence_factors" in names["ekfac"]
    assert stride_only | {"influence_factors"} <= set(names["ensemble"])
    upstream = {m: {s.name: s.upstream for s in stages_for(m)}["influence_scores"] for m in names}
    assert "influence_factors" in upstream["ekfac"] and "perturbation_matrix" not in upstream["ekfac"]
    assert {"influence_factors", "perturbation_matrix"} <= set(upstream["ensemble"])


def _profile(tmp_path: Path, method: str) -> str:
    raw = yaml.safe_load((PROFILES_DIR / "micro.yaml").read_text())
    raw["attribution"] = {"method": method}
    path = tmp_path / f"micro-{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_ekfac_pipeline_materializes_in_dagster(tmp_path: Path, mlflow_uri: str) -> None:
    """The whole graph with attribution.method: ekfac: factors fitted once, no STRIDE stage, checks pass,
    MLflow tracks the factors, and `stride attribute` answers from the stored factors."""
    from conftest import make_defs

    from stride_assets.orchestration import run_pipeline
    from stride_assets.resources import MlflowTracking, StrideResource

    profile = _profile(tmp_path, "ekfac")
    resources = {"stride": StrideResource(profile=profile, storage_root=str(tmp_path / "store")),
                 "mlflow": MlflowTracking(tracking_uri=mlflow_uri, experiment_name="stride-ekfac",
                                          artifact_root=(tmp_path / "mlartifacts").as_uri())}
    defs = make_defs(resources, profile=profile)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().materializable_asset_keys}
    assert "influence_factors" in keys and "steering_operators" not in keys
    cfg = resources["stride"].config()
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        results = run_pipeline(defs, instance, cfg, log=lambda _: None)
        assert results and all(r.success for r in results)
        events = [e for r in results for e in r.get_asset_materialization_events()]
        materialized = [(e.asset_key.to_user_string(), e.partition) for e in events]
        assert materialized.count(("influence_factors", None)) == 1
        assert {s for s, _ in materialized} == set(pipeline.stage_names(cfg))
        checks = {e.check_name: e.passed for r in results for e in r.get_asset_check_evaluations()}
        assert checks == {"influence_scores_usable": True, "curated_dataset_not_empty": True}
    store = Store(tmp_path / "store")
    scores = store.read_scores(["default"])
    n = store.read_train(pipeline.shard_names(cfg.corpus)).height
    assert scores.height == store.read_queries("default").height * n  # EK-FAC scores every pair
    runs = MlflowClient(tracking_uri=mlflow_uri).search_runs(
        [MlflowClient(tracking_uri=mlflow_uri).get_experiment_by_name("stride-ekfac").experiment_id])
    factor_runs = [r for r in runs if r.data.tags.get("dagster_asset_key") == "influence_factors"]
    assert len(factor_runs) == 1 and factor_runs[0].data.params["attribution.strategy"] == "ekfac"
    top = attribute(["The for statement is used to iterate over the elements of a sequence."], store, top_k=3)
    assert top.height == 3 and top["score"].is_sorted(descending=True)


def test_ensemble_runs_both_methods(tmp_path: Path) -> None:
    cfg = load_config(_profile(tmp_path, "ensemble"))
    results = pipeline.run_all(cfg, Store(tmp_path / "store"), log=lambda _: None)
    assert {"steering_operators", "influence_factors"} <= set(results)
    meta = results["influence_scores"][0].metadata
    assert meta["method"] == "ensemble" and meta["ensemble_weight"] == 0.5 and meta["non_finite"] == 0


def test_a_vocabulary_sized_head_is_refused_with_the_setting_to_change() -> None:
    from stride_assets.engine.ekfac import tracked_modules

    model, _ = _tiny_lm()
    model.resize_token_embeddings(20_000)  # a real vocabulary: the tied head becomes 16 -> 20,000
    with pytest.raises(StrideConfigError, match="include_head: false"):
        tracked_modules(linearized(model))
    assert "lm_head" not in tracked_modules(linearized(model), include_head=False)
