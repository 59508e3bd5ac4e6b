"""The preflight's memory/disk estimate: sized by hand, checked against real tensors, refusing over budget."""

from pathlib import Path

import polars as pl
import pytest

from stride_assets.engine import budget
from stride_assets.engine.config import load_config
from stride_assets.engine.errors import StrideConfigError


def gpt2_folder(tmp_path: Path) -> Path:
    """A GPT-2-sized model's config.json (2 layers, the real vocabulary), no weights."""
    from transformers import GPT2Config

    folder = tmp_path / "gpt2-sizes"
    GPT2Config(n_layer=2, vocab_size=50257).save_pretrained(folder)
    return folder


def test_micro_estimate_is_positive_and_its_bank_is_K_r_V_floats():
    cfg = load_config("micro", {"operators": {"form": "logit"}})
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    assert est.rows and all(r.memory_bytes >= 0 and r.disk_bytes >= 0 for r in est.rows)
    assert all(est.memory(stage) > 0 for stage in est.stages())
    assert est.disk() > 0 and est.peak()[1] > 0
    K, r, V = cfg.design.K, cfg.operators.rank, cfg.model.tiny.vocab_size  # one full shard: K = design.K
    bank = est.row("operator matrices A")
    assert bank.memory_bytes == bank.disk_bytes == K * r * V * 4
    assert est.row("gradients + Adam moments").memory_bytes == 3 * (K * r * V + cfg.model.tiny.n_embd * r) * 4
    n, T, h = cfg.corpus.shard_size, cfg.model.max_length, cfg.model.tiny.n_embd
    assert est.row("cached features").memory_bytes == n * T * h * 4
    table = est.table()
    assert "steering_operators" in table and "operator matrices A" in table and "KB" in table
    assert set(est.stages()) >= {"base_model", "steering_operators", "perturbation_matrix", "influence_scores"}
    assert "influence_factors" not in est.stages()


def test_the_head_form_sizes_operators_by_the_model_not_the_vocabulary(tmp_path):
    overrides = {"model": {"path": str(gpt2_folder(tmp_path))}, "design": {"K": 64}, "operators": {"rank": 16}}
    logit = load_config("micro", {**overrides, "operators": {"form": "logit", "rank": 16}})
    head = load_config("micro", {**overrides, "operators": {"form": "head", "rank": 16}})
    shapes = budget.model_shapes(logit)
    assert (shapes.vocab, shapes.hidden, shapes.n_layer) == (50257, 768, 2)
    a_logit = budget.estimate(logit, shapes).row("operator matrices A").memory_bytes
    a_head = budget.estimate(head, shapes).row("operator matrices A").memory_bytes
    assert a_logit == 64 * 16 * 50257 * 4 and a_head == 64 * 16 * 768 * 4


def test_a_gpt2_sized_logit_bank_over_a_small_budget_is_refused_naming_the_settings(tmp_path):
    from stride_assets.engine.preflight import preflight

    overrides = {"model": {"path": str(gpt2_folder(tmp_path))}, "operators": {"form": "logit", "rank": 64},
                 "design": {"K": 64}, "budget": {"memory_gb": 0.5}}
    cfg = load_config("micro", overrides)
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    with pytest.raises(StrideConfigError) as exc:
        budget.check(cfg, est, budget.machine_budget(cfg))
    message = str(exc.value)
    assert "steering_operators" in message and "budget.memory_gb" in message
    assert "operators.form: head" in message and "operators.rank" in message and "500.0 MB" in message
    # preflight refuses it too, after printing the table, before any work
    shown: list[str] = []
    with pytest.raises(StrideConfigError, match="operators.form: head"):
        preflight(cfg, store_root=tmp_path / "store", log=shown.append)
    assert shown and "operator matrices A" in shown[0] and not (tmp_path / "store").exists()
    # the same run with budget.enforce false is shown, not refused
    loose = load_config("micro", {**overrides, "budget": {"memory_gb": 0.5, "enforce": False}})
    budget.check(loose, est, budget.machine_budget(loose))


def test_ekfac_over_the_vocabulary_is_refused_naming_include_head(tmp_path):
    cfg = load_config("micro", {"model": {"path": str(gpt2_folder(tmp_path))}, "attribution": {"method": "ekfac"},
                                "budget": {"memory_gb": 4}})
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    assert "steering_operators" not in est.stages() and "influence_factors" in est.stages()
    assert est.row("covariance factors").disk_bytes > 50257 ** 2 * 4  # the head's (out x out) covariance
    with pytest.raises(StrideConfigError, match="attribution.include_head: false"):
        budget.check(cfg, est, budget.machine_budget(cfg))
    headless = load_config("micro", {"model": {"path": str(gpt2_folder(tmp_path))},
                                     "attribution": {"method": "ekfac", "include_head": False}})
    small = budget.estimate(headless, budget.model_shapes(headless))
    assert small.row("covariance factors").disk_bytes < est.row("covariance factors").disk_bytes / 40


def test_disk_over_budget_is_refused_and_the_default_budget_comes_from_the_machine(tmp_path):
    cfg = load_config("micro")
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    machine = budget.machine_budget(cfg, tmp_path / "store")
    assert machine.memory_bytes and machine.memory_bytes > est.peak()[1] and "80%" in machine.memory_source
    assert machine.disk_bytes and machine.disk_bytes > 0 and "free space" in machine.disk_source
    budget.check(cfg, est, machine)  # the micro profile fits any machine
    assert budget.machine_budget(cfg).disk_bytes is None  # no store, no disk_gb: disk unchecked
    tight = load_config("micro", {"budget": {"disk_gb": 1e-6}})
    with pytest.raises(StrideConfigError, match="of disk, over the budget of 1.0 KB \\(budget.disk_gb\\)"):
        budget.check(tight, est, budget.machine_budget(tight))
    with pytest.raises(StrideConfigError, match="memory_gb"):
        load_config("micro", {"budget": {"memory_gb": -1}})


def test_parameter_counts_of_published_configs_without_weights():
    from transformers import GPT2Config, Qwen2Config

    assert budget.ModelShapes.from_hf_config(GPT2Config()).n_params == 124_439_808  # GPT-2 small
    qwen = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)
    assert budget.ModelShapes.from_hf_config(qwen).n_params == 494_032_768  # Qwen2.5-0.5B


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_llama_family_shapes_match_a_built_model(family, tied):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from stride_assets.engine.ekfac import linearized

    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family](
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=500, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    shapes = budget.ModelShapes.from_hf_config(config)
    assert shapes.exact and shapes.n_params == sum(p.numel() for p in model.parameters())
    assert set(shapes.linears) == {(name, m.in_features, m.out_features, m.bias is not None)
                                   for name, m in linearized(model).named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.fixture(scope="module")
def micro_model():
    """The micro profile's tiny GPT-2 as the base_model stage builds it (untrained) and its training texts."""
    from stride_assets.engine import corpus as corpus_mod
    from stride_assets.engine import lm
    from stride_assets.engine import shards as shards_mod

    cfg = load_config("micro")
    passages = pl.concat(list(shards_mod.load_shards(cfg.corpus).values()))
    train, _ = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    tokenizer = lm.train_tokenizer(train["text"].to_list(), cfg.model.tiny.vocab_size)
    return lm.build_tiny_gpt2(tokenizer, cfg.model.tiny, cfg.model.max_length), tokenizer, train["text"].to_list()


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("form,basis", [("logit", "linear"), ("head", "linear"), ("activation", "mlp")])
def test_the_estimate_matches_a_real_bank_features_and_model(micro_model, form, basis, tmp_path, one_torch_thread):
    import torch

    from stride_assets.engine import lm
    from stride_assets.engine.backbone import encode_all, make_site
    from stride_assets.engine.design import shard_K
    from stride_assets.engine.ekfac import linearized
    from stride_assets.engine.operators import OperatorBank

    model, tokenizer, texts = micro_model
    cfg = load_config("micro", {"operators": {"form": form, "basis": basis}})
    shapes = budget.model_shapes(cfg)
    assert shapes == budget.ModelShapes.from_hf_config(model.config)  # the config alone gives the built model's
    assert shapes.n_params == sum(p.numel() for p in model.parameters())
    linears = {(name, m.in_features, m.out_features, m.bias is not None)
               for name, m in linearized(model).named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == set(shapes.linears)

    n = 40
    est = budget.estimate(cfg, shapes, sizes={"s": n})
    K = shard_K(cfg.design.K, cfg.design.d, n, cfg.corpus.shard_size)  # the shard's operators, as subset_design
    oc = cfg.operators
    site = make_site(model, form, oc.layer)
    assert (site.in_dim, site.out_dim) == budget.site_dims(form, shapes)
    bank = OperatorBank(K, site.in_dim, site.out_dim, oc.rank, oc.basis, oc.mlp_hidden, oc.init_scale, 0)
    state = bank.state_dict()
    assert est.row("operator matrices A").memory_bytes == _bytes([bank.A])
    assert est.row("operator matrices A").memory_bytes + est.row("operator basis + buffers").memory_bytes == \
        _bytes(state.values())
    params = _bytes(p for p in bank.parameters())
    assert est.row("gradients + Adam moments").memory_bytes == 3 * params
    saved = bank.save(tmp_path / "operators.safetensors").stat().st_size
    assert _bytes(state.values()) <= saved <= _bytes(state.values()) + 2048  # + the safetensors header

    batch = lm.encode_batch(tokenizer, texts[:n], cfg.model.max_length)
    feats = encode_all(site, batch)
    assert feats.shape[1] == cfg.model.max_length  # passages longer than max_length: T is the full width
    assert est.row("cached features").memory_bytes == _bytes([feats])
    assert est.row("token ids").memory_bytes == _bytes(batch.values())


def test_columns_bank_matches_the_estimate(micro_model):
    import inspect

    from stride_assets.engine.backbone import make_site
    from stride_assets.engine.config import OperatorConfig
    from stride_assets.engine.operators import OperatorBank

    if "columns" not in OperatorConfig.model_fields or "columns" not in inspect.signature(OperatorBank).parameters:
        pytest.skip("operators.columns not available")
    model, _, _ = micro_model
    cfg = load_config("micro", {"operators": {"form": "logit", "columns": 24}})
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    site, oc = make_site(model, "logit"), cfg.operators
    bank = OperatorBank(cfg.design.K, site.in_dim, site.out_dim, oc.rank, columns=24)
    assert est.row("operator matrices A").memory_bytes == cfg.design.K * oc.rank * 24 * 4 == _bytes([bank.A])
    assert est.row("operator matrices A").memory_bytes + est.row("operator basis + buffers").memory_bytes == \
        _bytes(bank.state_dict().values())


def test_a_big_vocabulary_keeps_the_member_pairs_probabilities_as_the_estimate_says(tmp_path):
    """GPT-2's vocabulary: the shard's base probabilities (n x T x V) are over the cache limit, its member pairs'
    at their columns are not; the row's bytes are those of the tensor ColumnLogits keeps."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from stride_assets.engine.backbone import make_site
    from stride_assets.engine.column_logits import ColumnLogits
    from stride_assets.engine.design import draw_design
    from stride_assets.engine.operators import OperatorBank

    folder = tmp_path / "gpt2-head"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50257, n_positions=16)).save_pretrained(folder)
    cfg = load_config("micro", {"model": {"path": str(folder), "max_length": 16}, "design": {"K": 6, "d": 2},
                                "operators": {"form": "logit", "columns": 8}, "corpus": {"shard_size": 256}})
    rows = {r.what: r for r in budget.estimate(cfg, budget.model_shapes(cfg)).rows}
    assert "base probabilities (kept: under 256 MiB)" not in rows
    n, T, d, m = 256, 16, 2, 8  # n x T x (V + 1) x 4 B = 823 MB
    assert rows["member pairs' base probabilities (kept: under 256 MiB)"].memory_bytes == n * d * m * (T - 1) * 4
    site = make_site(GPT2LMHeadModel.from_pretrained(folder).eval(), "logit")
    design = draw_design(n, 6, d, seed=0)
    bank = OperatorBank(6, site.in_dim, site.out_dim, 4, columns=m)
    bank.set_columns(torch.randint(0, site.out_dim, (6, m)))
    losses = ColumnLogits(site, bank, torch.randn(n, T, site.in_dim),
                          pairs=tuple(torch.as_tensor(a) for a in design.member_table()))
    assert losses.p is None and losses.pair_p.numel() * 4 == n * d * m * (T - 1) * 4


def test_ekfac_factor_bytes_match_kronfluence(micro_model, tmp_path, one_torch_thread):
    """Kronfluence's factor files of the micro model: the estimate plus only the safetensors headers."""
    from stride_assets.engine import lm
    from stride_assets.engine.ekfac import Influence, lm_objective

    model, tokenizer, texts = micro_model
    cfg = load_config("micro", {"attribution": {"method": "ekfac"}})
    est = budget.estimate(cfg, budget.model_shapes(cfg))
    batch = lm.encode_batch(tokenizer, texts[:16], cfg.model.max_length)
    folder = Influence(model, lm_objective, batch_size=8).fit(batch, tmp_path / "factors")
    written = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    predicted = est.disk("influence_factors")
    assert predicted <= written <= predicted * 1.02 + 16_384


def test_constants_copied_to_keep_budget_free_of_torch_match_their_sources():
    from stride_assets.engine.column_logits import PROBABILITY_CACHE_BYTES

    assert budget.COLUMN_CACHE_BYTES == PROBABILITY_CACHE_BYTES
