"""Sites, operator bank, measurement and training on tiny transformers built from configs."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from stride_assets.engine.backbone import ActivationSite, decoder_layers, default_layer, encode_all, make_site
from stride_assets.engine.config import StrideConfig, TrainConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.measure import responses
from stride_assets.engine.operators import OperatorBank, top_direction_energy
from stride_assets.engine.training import PairSampler, train_operators

VOCAB = 64


def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=3, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def batch_of(n=24, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 9:] = 0  # one right-padded row
    return {"input_ids": ids, "attention_mask": mask}


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return Qwen2ForCausalLM(cfg).eval()


MODELS = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2}


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("form", ["activation", "logit", "head"])
def test_zero_operator_reproduces_base_outputs_exactly(arch, form):
    model, batch = MODELS[arch](), batch_of()
    with torch.no_grad():
        reference = model(**batch).logits
    site = make_site(model, form)
    feats = encode_all(site, batch, batch_size=7)
    bank = OperatorBank(6, site.in_dim, site.out_dim, rank=4, init_scale=0.1).zero_()
    ops = torch.arange(24) % 6
    with torch.no_grad():
        steered = site.logits(feats, batch, bank.shift(feats, ops))
        plain = site.logits(feats, batch)
    assert torch.equal(plain, reference.float())
    assert torch.equal(steered, reference.float())
    # the lower layers were only skipped inside the call: the model is intact afterwards
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)


@pytest.mark.parametrize("arch", MODELS)
def test_activation_site_skips_frozen_layers_below_the_hook(arch):
    model, batch = MODELS[arch](), batch_of(n=4)
    site = ActivationSite(model, layer=2)
    feats = site.encode(batch)
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in
             enumerate(decoder_layers(model))]
    with torch.no_grad():
        site.logits(feats, batch)
    for h in hooks:
        h.remove()
    assert calls == [2]


def test_default_layer_and_range_checks():
    model = gpt2()
    assert default_layer(model) == 2  # round(2/3 * 3)
    with pytest.raises(StrideConfigError, match="out of range"):
        ActivationSite(model, layer=3)
    with pytest.raises(StrideConfigError, match="unknown operator form"):
        make_site(model, "weights")
    with pytest.raises(StrideConfigError, match="MLP classifiers; a language model takes head, logit, activation"):
        make_site(model, StrideConfig().with_(operators={"form": "pre_activation"}).operators.form)


BANKS = {"dense": {}, "columns": {"columns": 20}, "factored": {"output_rank": 5}}


@pytest.mark.parametrize("form,bank_kind", [("activation", "dense"), ("logit", "dense"), ("head", "dense"),
                                            ("logit", "columns"), ("logit", "factored")])
def test_first_order_matches_exact_for_small_shifts(form, bank_kind):
    model, batch = gpt2(), batch_of(n=6)
    site = make_site(model, form)
    scale = 1e-3 if form == "head" else 1e-4  # same size of response (the loss differences float32 resolves)
    bank = OperatorBank(10, site.in_dim, site.out_dim, rank=4, init_scale=scale, seed=1, **BANKS[bank_kind])
    if bank_kind == "columns":
        bank.set_columns(torch.stack([torch.randperm(VOCAB)[:20] for _ in range(10)]))
    bank.set_feature_stats(encode_all(site, batch), batch["attention_mask"])
    fo = responses(site, bank, batch, "first_order")
    ex = responses(site, bank, batch, "exact", operator_chunk=3)
    assert fo.shape == ex.shape == (6, 10)
    assert np.corrcoef(fo.ravel(), ex.ravel())[0, 1] > 0.999
    assert np.abs(fo - ex).max() < 0.02 * np.abs(ex).max()


def test_head_form_operators_are_sized_by_the_model_not_the_vocabulary():
    site = make_site(gpt2(), "head")
    assert (site.in_dim, site.out_dim) == (32, 32)  # n_embd, whatever VOCAB is
    assert make_site(gpt2(), "logit").out_dim == VOCAB


@pytest.mark.parametrize("m", [4, 1])  # contract scatters (m > C / 8) or gathers (m <= C / 8)
def test_column_bank_equals_the_dense_bank_it_scatters_into(m):
    K, C, r = 6, 10, 3
    dense = OperatorBank(K, 5, C, r, init_scale=0.1, seed=1)
    sparse = OperatorBank(K, 5, C, r, init_scale=0.1, seed=1, columns=m)
    index = torch.stack([torch.randperm(C)[:m] for _ in range(K)])
    index[2, m - 1] = C  # a padded slot: its weight is zeroed and never reaches an output
    sparse.set_columns(index)
    with torch.no_grad():
        dense.A.zero_()
        for k in range(K):
            keep = index[k] < C
            dense.A[k][:, index[k][keep]] = sparse.A[k][:, keep]
    assert sparse.A[2, :, m - 1].abs().sum() == 0
    assert torch.equal(sparse.dense_A(), dense.A)
    feats, ops = torch.randn(4, 7, 5), torch.tensor([0, 2, 5, 1])
    assert torch.allclose(dense.shift(feats, ops), sparse.shift(feats, ops))
    projected = torch.randn(4, r, C)
    assert torch.allclose(dense.contract(projected), sparse.contract(projected, chunk_elements=40), atol=1e-6)


def test_member_columns_are_the_tokens_members_predict_most():
    from stride_assets.engine.operators import member_columns

    design = draw_design(12, 4, 1, seed=0)
    targets = torch.arange(12).reshape(12, 1) % 7  # example i predicts token i mod 7
    mask = torch.ones_like(targets)
    index = member_columns(design.membership, targets, mask, 7, cap=7)
    M = design.membership.toarray()
    for k in range(4):
        want = {int(t) for t in targets[M[k].astype(bool), 0]}
        assert {int(c) for c in index[k] if c < 7} == want  # its members' tokens, padding after
    assert member_columns(design.membership, targets, mask, 7, cap=1).shape == (4, 1)


def test_operator_bank_save_load_round_trip(tmp_path):
    bank = OperatorBank(5, 8, 12, rank=3, basis="mlp", mlp_hidden=7, seed=2)
    bank.set_feature_stats(torch.randn(4, 3, 8) * 3 + 1)
    path = bank.save(tmp_path / "ops.safetensors")
    again = OperatorBank.load(path)
    feats = torch.randn(2, 3, 8)
    ops = torch.tensor([1, 4])
    assert torch.equal(bank.shift(feats, ops), again.shift(feats, ops))


def test_pair_sampler_members_and_non_members():
    design = draw_design(50, 10, 3, seed=0)
    sampler = PairSampler(design, seed=0)
    M = design.membership.toarray()
    s, e = sampler.members(150)  # exactly one epoch: every member pair once
    assert M[s, e].all()
    assert len(set(zip(s.tolist(), e.tolist()))) == 150
    s2, e2 = sampler.non_members(500)
    assert not M[s2, e2].any()


@pytest.mark.parametrize("form", ["activation", "logit", "head"])
def test_training_lowers_member_loss_more_than_non_member_loss(form):
    model = gpt2()
    batch = batch_of(n=48, T=12, seed=1)
    design = draw_design(48, 8, 2, seed=0)
    site = make_site(model, form)
    feats = encode_all(site, batch)
    bank = OperatorBank(design.K, site.in_dim, site.out_dim, rank=8, seed=0)
    bank.set_feature_stats(feats, batch["attention_mask"])
    cfg = TrainConfig(steps=150, batch_size=24, lr=3e-2, stability_weight=1.0, log_every=50)
    log = train_operators(site, bank, feats, batch, design, cfg, log=lambda _: None)
    assert log.rows[-1]["fidelity"] < log.rows[0]["fidelity"]
    Y = responses(site, bank, batch, "exact")  # loss_base - loss_k, per (example, operator)
    member = design.membership.toarray().T.astype(bool)
    gain_members, gain_others = Y[member].mean(), Y[~member].mean()
    print(f"{form}: member loss drop {gain_members:.4f}, non-member {gain_others:.4f}")
    assert gain_members > 0
    assert gain_members > gain_others + 0.01
    assert top_direction_energy(bank) < 0.9


def test_linearity_term_trains_and_is_logged():
    model = gpt2()
    batch = batch_of(n=20, seed=2)
    design = draw_design(20, 6, 2, seed=0)
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    bank = OperatorBank(design.K, site.in_dim, site.out_dim, rank=2)
    cfg = TrainConfig(steps=5, batch_size=8, linearity_weight=1.0, linearity_sketch=4, linearity_batch=4, log_every=1)
    log = train_operators(site, bank, feats, batch, design, cfg, log=lambda _: None)
    assert all("linearity" in row and np.isfinite(row["linearity"]) for row in log.rows)


def test_damping_term_shrinks_the_operators_and_is_logged():
    """damping_weight adds w_d ||W^T A_k||^2 on the member pairs' operators: same seeds, smaller weight changes
    (measured as the change itself, which rescaling the basis against A cannot hide)."""
    model = gpt2()
    batch = batch_of(n=20, seed=2)
    design = draw_design(20, 6, 2, seed=0)
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    norms = {}
    for w in (0.0, 10.0):
        bank = OperatorBank(design.K, site.in_dim, site.out_dim, rank=2, seed=0)
        cfg = TrainConfig(steps=40, batch_size=8, lr=3e-2, damping_weight=w, log_every=1)
        log = train_operators(site, bank, feats, batch, design, cfg, log=lambda _: None)
        assert ("damping" in log.rows[-1]) == (w > 0)
        with torch.no_grad():
            norms[w] = float(bank.damping(torch.arange(design.K)))
            W = bank.basis.weight
            assert np.isclose(norms[w], float(sum((W.T @ bank.A[k]).pow(2).sum() for k in range(design.K))) / design.K,
                              rtol=1e-4)
    assert norms[10.0] < 0.5 * norms[0.0]


def test_nan_loss_is_a_clear_error():
    from stride_assets.engine.errors import StrideNumericalError

    model = gpt2()
    batch = batch_of(n=8)
    design = draw_design(8, 4, 2, seed=0)
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    feats[0, 0, 0] = float("nan")
    bank = OperatorBank(4, site.in_dim, site.out_dim, rank=2)
    with pytest.raises(StrideNumericalError, match="not finite"):
        train_operators(site, bank, feats, batch, design, TrainConfig(steps=3, batch_size=8), log=lambda _: None)


def test_row_adam_matches_adam_on_touched_rows_and_leaves_the_others() -> None:
    from stride_assets.engine.training import RowAdam

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 2, 3))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.Adam([b], lr=0.1)
    lazy = RowAdam(a)
    for _ in range(5):  # every row used every step: exactly Adam
        for p in (a, b):
            p.grad = None
            (p ** 2).sum().backward()
        reference.step()
        lazy.step(torch.arange(6), 0.1)
    assert torch.allclose(a, b, atol=1e-5)  # same formula; float rounding differs from the fused kernel
    before = a.detach().clone()
    a.grad = torch.ones_like(a)
    lazy.step(torch.tensor([1, 4, 1]), 0.1)  # duplicates count once
    moved = (a.detach() != before).flatten(1).any(1)
    assert moved.tolist() == [False, True, False, False, True, False]


# base probabilities computed per step / kept for the whole shard / kept for the member pairs only (the full
# shard's 16 x 12 x 65 x 4 B do not fit in 20,000, its 32 member pairs' 32 x 12 x 11 x 4 B do)
@pytest.mark.parametrize("cache_bytes", [0, 1 << 30, 20_000])
@pytest.mark.parametrize("with_batch", [False, True])  # targets' base NLL computed per step / kept
def test_column_losses_equal_the_dense_losses_without_the_vocabulary(cache_bytes, with_batch):
    """The vocabulary-free losses of a column bank (column_logits) equal the site's full-vocabulary ones."""
    from stride_assets.engine.column_logits import ColumnLogits, applies
    from stride_assets.engine.operators import member_columns
    from stride_assets.engine.stride import targets
    from stride_assets.engine.training import SiteLosses

    model, batch = gpt2(), batch_of(n=16, T=12, seed=3)
    design = draw_design(16, 5, 2, seed=0)
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    index = member_columns(design.membership, *targets(batch), VOCAB, cap=12)  # the cap binds: some targets miss
    bank = OperatorBank(design.K, site.in_dim, VOCAB, rank=3, init_scale=0.5, seed=0, columns=index.shape[1])
    bank.set_columns(index).set_feature_stats(feats, batch["attention_mask"])
    assert applies(site, bank) and not applies(make_site(model, "head"), bank)
    subsets, examples = (torch.as_tensor(a) for a in design.member_table())
    fast = ColumnLogits(site, bank, feats, cache_bytes, batch=batch if with_batch else None, pairs=(subsets, examples))
    dense = SiteLosses(site, bank)
    assert (fast.p is None) == (cache_bytes < 1 << 30) and (fast.base_nll is None) != with_batch
    assert (fast.pair_p is None) == (cache_bytes != 20_000)
    mixed = torch.tensor([0, 3, 3, 15, 7]), torch.tensor([1, 0, 4, 2, 2])
    members = examples[[0, 5, 9, 17, 30]], subsets[[0, 5, 9, 17, 30]]  # read from the kept member pairs
    for (rows, ops), name in [(mixed, "fidelity"), (mixed, "stability"), (members, "fidelity")]:
        sub = {k: v[rows] for k, v in batch.items()}
        want = getattr(dense, name)(feats[rows], sub, rows, ops)
        got = getattr(fast, name)(feats[rows], sub, rows, ops)
        assert want > 1e-3 and torch.allclose(got, want, rtol=1e-4, atol=1e-6), name
        params = (bank.A, bank.basis.weight)  # the gradient written out in column_logits reaches both
        g_fast = torch.autograd.grad(got, params)
        g_dense = torch.autograd.grad(getattr(dense, name)(feats[rows], sub, rows, ops), params)
        for fast_part, dense_part in zip(g_fast, g_dense):
            assert dense_part.abs().max() > 0
            assert torch.allclose(fast_part, dense_part, rtol=1e-3, atol=1e-6), name
    if fast.pair_p is not None:  # the member pairs' fidelity reads the kept blocks, the mixed pairs' the head
        def fidelity(rows, ops):
            return fast.fidelity(feats[rows], {k: v[rows] for k, v in batch.items()}, rows, ops)

        before = fidelity(*members), fidelity(*mixed)
        fast._padded_weight = torch.zeros_like(fast._padded_weight)  # a head that reads nothing
        assert fidelity(*members) == before[0] and fidelity(*mixed) != before[1]


def test_member_pairs_are_kept_when_an_operator_has_no_members():
    """A draw can leave a subset empty: the member pairs' probabilities are still kept, and read as computed."""
    from stride_assets.engine.column_logits import ColumnLogits

    model, batch = gpt2(), batch_of(n=8, T=12, seed=3)
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    bank = OperatorBank(4, site.in_dim, VOCAB, rank=3, init_scale=0.5, columns=5)
    bank.set_columns(torch.randint(0, VOCAB, (4, 5), generator=torch.Generator().manual_seed(0)))
    subsets, examples = torch.tensor([0, 0, 2, 3]), torch.tensor([1, 4, 2, 7])  # operator 1: no members
    kept = ColumnLogits(site, bank, feats, 10_000, pairs=(subsets, examples))
    computed = ColumnLogits(site, bank, feats, 0)
    assert kept.p is None and kept.pair_p.shape[0] == 4 and computed.pair_p is None
    sub = {k: v[examples] for k, v in batch.items()}
    assert torch.allclose(kept.fidelity(feats[examples], sub, examples, subsets),
                          computed.fidelity(feats[examples], sub, examples, subsets), rtol=1e-6)


def test_steered_column_shift_gradient_matches_finite_differences():
    """column_logits' hand-written backward of (delta, sum p s, s_y) against torch.autograd.gradcheck in float64."""
    from stride_assets.engine.column_logits import _Steered

    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    A = (0.3 * torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    p = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64)
    p = p / (2 * p.sum(1, keepdim=True))  # the columns hold half of each token's mass
    p[:, -1] = 0  # a padded slot
    assert torch.autograd.gradcheck(lambda c, a: _Steered.apply(c, a, p, None)[:2], (codes, A))
    where = torch.randint(0, 5, (3, 5), generator=gen)  # 4 (= m): the target is none of the columns
    assert (where == 4).any() and (where < 4).any()
    assert torch.autograd.gradcheck(lambda c, a: _Steered.apply(c, a, p, where), (codes, A))
    s_y = _Steered.apply(codes, A, p, where)[2]
    s = torch.bmm(A.transpose(1, 2), codes.transpose(1, 2))
    expected = torch.where(where < 4, s.gather(1, where.clamp_max(3).unsqueeze(1)).squeeze(1), 0.0)
    assert torch.allclose(s_y, expected)


@pytest.mark.parametrize("kind", [{"columns": 4}, {"columns": 4, "background": True}, {"output_rank": 3}])
def test_column_and_factored_banks_round_trip(tmp_path, kind):
    bank = OperatorBank(5, 8, 12, rank=3, seed=2, init_scale=0.1, **kind)
    if "columns" in kind:
        bank.set_columns(torch.stack([torch.randperm(12)[:4] for _ in range(5)]))
    with torch.no_grad():
        for extra in (bank.G, bank.U):
            if extra is not None:
                extra.normal_()
    again = OperatorBank.load(bank.save(tmp_path / "ops.safetensors"))
    feats, ops = torch.randn(2, 3, 8), torch.tensor([1, 4])
    assert torch.equal(bank.shift(feats, ops), again.shift(feats, ops))
    assert bank.shift(feats, ops).abs().sum() > 0


def test_vocabulary_sized_operators_are_refused_above_the_guard_and_columns_pass():
    from stride_assets.engine.config import StrideConfig
    from stride_assets.engine.stride import MAX_DENSE_OUTPUTS, Stride

    cfg = GPT2Config(vocab_size=MAX_DENSE_OUTPUTS + 1, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    site = make_site(GPT2LMHeadModel(cfg).eval(), "logit")
    design = draw_design(12, 4, 2, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 50, (12, 8), generator=g), "attention_mask": torch.ones(12, 8, dtype=torch.long)}
    dense = StrideConfig().with_(operators={"form": "logit", "rank": 2})
    with pytest.raises(StrideConfigError, match="operators.columns"):
        Stride(site, dense)._bank_for(design, batch)
    bank = Stride(site, dense.with_(operators={"columns": 64}))._bank_for(design, batch)
    assert bank.sparse and bank.A.shape[-1] <= 50  # at most the tokens the members predict


@pytest.mark.parametrize("m", [4, 20])  # 8m <= C gathers the operators' columns, 8m > C scatters them
def test_column_first_order_needs_no_vocabulary_and_equals_the_dense_gradient(m):
    """A column bank's first-order responses from the loss gradient at its own columns only
    (column_logits.loss_gradient) equal those of the dense bank it scatters into, with and without the
    stored log-normalisers, on padded rows and a loss mask."""
    from stride_assets.engine.config import StrideConfig
    from stride_assets.engine.measure import first_order
    from stride_assets.engine.stride import Stride

    model, batch = gpt2(), batch_of(n=8, T=12, seed=5)
    batch["loss_mask"] = (torch.arange(12) >= 4).long().expand(8, 12).clone()
    site = make_site(model, "logit")
    feats = encode_all(site, batch)
    K = 6
    bank = OperatorBank(K, site.in_dim, VOCAB, rank=3, init_scale=0.3, seed=2, columns=m)
    index = torch.stack([torch.randperm(VOCAB)[:m] for _ in range(K)])
    index[0, m // 2:] = VOCAB  # an operator with unused slots
    bank.set_columns(index).set_feature_stats(feats, batch["attention_mask"])
    dense = OperatorBank(K, site.in_dim, VOCAB, rank=3, seed=2)
    dense.load_state_dict({**bank.state_dict(), "A": bank.dense_A(), "column_index": dense.column_index})
    want = first_order(site, dense, feats, batch)
    got = first_order(site, bank, feats, batch)
    assert want.abs().max() > 1e-3 and torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    _, lse = Stride(site, StrideConfig()).base_pass(batch, feats)
    assert lse.shape == batch["input_ids"].shape
    stored = responses(site, bank, batch, feats=feats, lse=lse, query_batch=16)
    assert np.array_equal(stored, responses(site, bank, batch, feats=feats, query_batch=16))
    (g_col,) = torch.autograd.grad(first_order(site, bank, feats, batch, differentiable=True).sum(), bank.A)
    assert torch.isfinite(g_col).all() and g_col.abs().sum() > 0


def test_contract_keeps_the_scattered_bank_only_while_it_is_unchanged():
    K, C, r, m = 6, 10, 3, 4
    bank = OperatorBank(K, 5, C, r, init_scale=0.1, seed=1, columns=m)
    bank.set_columns(torch.stack([torch.randperm(C - 2)[:m] for _ in range(K)]))  # outputs 8, 9 in none
    projected = torch.randn(4, r, C)

    def fresh() -> torch.Tensor:  # the dense product, from nothing kept
        return torch.einsum("nrc,krc->nk", projected, bank.dense_A())

    with torch.no_grad():
        assert torch.allclose(bank.contract(projected, chunk_elements=40), fresh(), atol=1e-6)
        kept = bank._scattered_cache
        assert kept is not None and torch.allclose(bank.contract(projected, chunk_elements=40), fresh(), atol=1e-6)
        assert bank._scattered_cache is kept  # reused
        bank.A.mul_(2.0)  # an optimizer step or a load: the kept copy is stale
        assert torch.allclose(bank.contract(projected, chunk_elements=40), fresh(), atol=1e-6)
        bank.A = torch.nn.Parameter(3.0 * bank.A)  # a replaced parameter (its version count starts again)
        assert torch.allclose(bank.contract(projected, chunk_elements=40), fresh(), atol=1e-6)
        bank.set_columns(torch.stack([torch.randperm(C - 2)[:m] for _ in range(K)]))
        assert torch.allclose(bank.contract(projected, chunk_elements=40), fresh(), atol=1e-6)
        columns = bank.column_index.unique()  # sorted: the outputs some operator keeps (as loss_gradient's)
        assert columns.numel() < C
        assert torch.allclose(bank.contract(projected[..., columns], columns=columns), fresh(), atol=1e-6)
    out = bank.contract(projected)  # with autograd: nothing kept, the graph reaches A
    out.sum().backward()
    assert bank.A.grad is not None and bank._scattered_cache is None
