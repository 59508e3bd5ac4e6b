"""Memory and disk of every stage, predicted from the config and the model's shapes before any work.

    shapes = model_shapes(cfg)                     # the model's config.json (AutoConfig): no weights loaded
    est = estimate(cfg, shapes, sizes, queries)    # sizes {shard: training examples}, queries {batch: queries}
    print(est.table(budget))
    check(cfg, est, machine_budget(cfg, store))    # StrideConfigError naming the setting to change

A row is one thing a stage holds: ``memory_bytes`` alive at the stage's peak for its largest block (one
shard, one query batch: blocks run one at a time), ``disk_bytes`` what the run writes for it over every
shard and query batch, and the formula it came from. A stage's peak is the sum of its rows. The sizes
follow the code: the operator bank (operators.py: basis in_dim x r, A K x r x C float32, the feature
statistics), its gradient and Adam moments (training.py), the cached features (n x T x in_dim float32),
the response blocks (Q x K float32), Kronfluence's factors (ekfac.py: per tracked Linear an (in x in) and
an (out x out) covariance, their eigenvectors, the out x in corrected eigenvalues). The rows marked ``≈``
estimate what autograd keeps (logits, log-softmax and their gradients; transformer activations) and the
bytes per row of a parquet table; the others are exact counts, checked against real tensors in
tests/test_budget.py. ``preflight`` prints the table and refuses a run over ``budget:`` (default: 80% of
the machine's RAM, the free space of the store's filesystem).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stride_assets.engine.config import StrideConfig, default_layer_index
from stride_assets.engine.design import shard_K
from stride_assets.engine.errors import StrideConfigError, StrideInputError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
F32 = 4
MEMORY_SHARE = 0.8  # of the machine's RAM, when budget.memory_gb is not set
EVAL_BATCH = 64  # lm.example_losses' batch (the base model's train/held-out NLL)
KRONFLUENCE_QUERY_BATCH = 16  # ekfac.Influence.query_batch_size
COLUMN_CACHE_BYTES = 256 * 2**20  # column_logits.PROBABILITY_CACHE_BYTES (tests/test_budget.py checks the copy)
SCORE_ROW_DISK = 40  # ≈ bytes per row of scores.parquet (two ids, an index, a float)
SCORE_ROW_MEMORY = 64  # ≈ bytes per row of the scores frame (polars strings, the join)
STRIDE_METHODS = ("stride", "ensemble")
EKFAC_METHODS = ("ekfac", "ensemble")
GATED_MLP = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
             "gemma3_text", "phi3", "olmo", "olmo2", "granite", "cohere", "starcoder2", "smollm3"}
ABSOLUTE_POSITIONS = {"gpt2", "gpt_neo", "opt", "gpt_bigcode", "biogpt", "xglm"}
QKV_BIAS_ONLY = {"qwen2", "qwen2_moe"}  # biased q/k/v projections, unbiased o_proj
EXACT = {"gpt2", "qwen2", "llama", "mistral"}  # n_params and linears counted exactly (tests/test_budget.py)


def human(n: float) -> str:
    """Bytes in decimal units: 512 B, 1.2 KB, 3.4 MB, 5.6 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class ModelShapes:
    """What the estimate needs of a model, read from its config (no weights).

    ``linears``: every ``nn.Linear`` of the model as Kronfluence tracks it (GPT-2's Conv1D layers
    converted, ``ekfac.linearized``): (name, in_features, out_features, bias); the output head last.
    """

    model_type: str
    hidden: int
    vocab: int
    n_layer: int
    n_head: int
    ffn: int
    n_params: int
    dtype_bytes: int
    linears: tuple[tuple[str, int, int, bool], ...]
    exact: bool  # n_params and linears counted exactly (GPT-2) or estimated from the config

    @property
    def head(self) -> tuple[str, int, int, bool]:
        return self.linears[-1]

    def describe(self) -> str:
        count = "exact count" if self.exact else "estimated from the config"
        return (f"{self.model_type}, {self.n_layer} layers, hidden {self.hidden}, vocab {self.vocab:,}, "
                f"{self.n_params:,} parameters ({count}), {self.dtype_bytes} B per weight")

    @classmethod
    def from_hf_config(cls, config: Any, dtype: str = "float32") -> "ModelShapes":
        """Shapes of a transformers causal LM from its ``PretrainedConfig``."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        h, V = int(text.hidden_size), int(text.vocab_size)
        L, heads = int(text.num_hidden_layers), int(text.num_attention_heads)
        ffn = next((int(v) for v in (getattr(text, name, None) for name in
                                     ("n_inner", "intermediate_size", "ffn_dim", "ffn_hidden_size")) if v), 4 * h)
        mt = str(getattr(text, "model_type", "") or type(text).__name__)
        tied = bool(getattr(text, "tie_word_embeddings", True))
        linears: list[tuple[str, int, int, bool]] = []
        if mt == "gpt2":
            for i in range(L):
                p = f"transformer.h.{i}"
                linears += [(f"{p}.attn.c_attn", h, 3 * h, True), (f"{p}.attn.c_proj", h, h, True),
                            (f"{p}.mlp.c_fc", h, ffn, True), (f"{p}.mlp.c_proj", ffn, h, True)]
        else:  # the Llama family's names (model.layers.i.self_attn.q_proj, ...); other families: the same shapes
            kv = int(getattr(text, "num_key_value_heads", None) or heads)
            hd = int(getattr(text, "head_dim", None) or h // heads)
            if mt in QKV_BIAS_ONLY:
                qkv_bias, o_bias = True, False
            else:
                qkv_bias = o_bias = bool(getattr(text, "attention_bias", mt not in GATED_MLP))
            mlp_bias = bool(getattr(text, "mlp_bias", mt not in GATED_MLP))
            experts = int(getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 1)
            gated = mt in GATED_MLP or getattr(text, "hidden_act", "") in ("silu", "swish")
            for i in range(L):
                p = f"model.layers.{i}"
                linears += [(f"{p}.self_attn.q_proj", h, heads * hd, qkv_bias),
                            (f"{p}.self_attn.k_proj", h, kv * hd, qkv_bias),
                            (f"{p}.self_attn.v_proj", h, kv * hd, qkv_bias),
                            (f"{p}.self_attn.o_proj", heads * hd, h, o_bias)]
                for e in range(experts):
                    q = f"{p}.mlp" + (f".experts.{e}" if experts > 1 else "")
                    if gated:
                        linears.append((f"{q}.gate_proj", h, ffn, mlp_bias))
                    linears += [(f"{q}.up_proj", h, ffn, mlp_bias), (f"{q}.down_proj", ffn, h, mlp_bias)]
        linears.append(("lm_head", h, V, False))
        body = sum(i * o + (o if b else 0) for _, i, o, b in linears[:-1])
        positions = int(getattr(text, "max_position_embeddings", 0) or 0) * h if mt in ABSOLUTE_POSITIONS else 0
        norm = h if mt in GATED_MLP else 2 * h  # RMSNorm: a weight; LayerNorm: weight and bias
        n_params = V * h + positions + body + (2 * L + 1) * norm + (0 if tied else V * h)
        return cls(model_type=mt, hidden=h, vocab=V, n_layer=L, n_head=heads, ffn=ffn, n_params=n_params,
                   dtype_bytes=DTYPE_BYTES.get(dtype, 4), linears=tuple(linears), exact=mt in EXACT)


def model_shapes(cfg: StrideConfig) -> ModelShapes:
    """The shapes of the run's base model: the tiny default's config (as ``lm.build_tiny_gpt2`` makes it,
    with its full vocabulary), or ``AutoConfig`` of ``model.path`` (config.json only)."""
    mc = cfg.model
    if mc.path is None:
        from transformers import GPT2Config

        t = mc.tiny
        config = GPT2Config(vocab_size=t.vocab_size, n_positions=mc.max_length, n_embd=t.n_embd, n_layer=t.n_layer,
                            n_head=t.n_head, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
        return ModelShapes.from_hf_config(config, "float32")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(mc.path, trust_remote_code=mc.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise StrideInputError(f"cannot read the config of model {mc.path!r} [{type(exc).__name__}: {exc}]") from exc
    return ModelShapes.from_hf_config(config, mc.dtype)


@dataclass(frozen=True)
class Row:
    """One thing a stage holds: bytes in memory at the stage's peak, bytes on disk over the run."""

    stage: str
    what: str
    memory_bytes: int
    disk_bytes: int
    formula: str
    settings: tuple[str, ...] = ()  # what shrinks it, for the refusal


@dataclass
class Estimate:
    """Rows in stage order, and what they assumed (``notes``)."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stages(self) -> list[str]:
        return list(dict.fromkeys(r.stage for r in self.rows))

    def memory(self, stage: str) -> int:
        """A stage's predicted peak memory: the sum of its rows."""
        return sum(r.memory_bytes for r in self.rows if r.stage == stage)

    def peak(self) -> tuple[str, int]:
        """The stage with the largest peak memory, and that peak."""
        return max(((s, self.memory(s)) for s in self.stages()), key=lambda x: x[1])

    def disk(self, stage: str | None = None) -> int:
        return sum(r.disk_bytes for r in self.rows if stage is None or r.stage == stage)

    def row(self, what: str, stage: str | None = None) -> Row:
        found = [r for r in self.rows if r.what == what and (stage is None or r.stage == stage)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} rows {what!r}" + (f" in stage {stage!r}" if stage else ""))
        return found[0]

    def table(self, budget: "Budget | None" = None) -> str:
        """The estimate as text: a line per row, a peak/total line per stage, then the budget."""
        lines = ["predicted memory (peak per stage) and disk (all artifacts), before any work:"]
        lines += [f"  {note}" for note in self.notes]
        width = max([len(r.what) for r in self.rows] + [20])
        lines.append(f"  {'stage':<20} {'what':<{width}} {'memory':>10} {'disk':>10}  formula")
        for stage in self.stages():
            for r in (r for r in self.rows if r.stage == stage):
                lines.append(f"  {stage:<20} {r.what:<{width}} {human(r.memory_bytes):>10} "
                             f"{human(r.disk_bytes):>10}  {r.formula}")
            lines.append(f"  {stage:<20} {'= peak memory, disk':<{width}} {human(self.memory(stage)):>10} "
                         f"{human(self.disk(stage)):>10}")
        stage, peak = self.peak()
        lines.append(f"  peak memory {human(peak)} ({stage}); disk {human(self.disk())} in all")
        if budget is not None:
            lines.append(f"  budget: memory {budget.describe_memory()}; disk {budget.describe_disk()}")
        return "\n".join(lines)


def _acts(shapes: ModelShapes, layers: int, rows: int, T: int) -> tuple[int, str]:
    """≈ activations autograd keeps for ``layers`` transformer blocks on ``rows`` x T tokens."""
    per = 16 * shapes.hidden + 2 * shapes.n_head * T
    return (layers * rows * T * per * shapes.dtype_bytes,
            f"≈ layers x rows x T x (16 h + 2 heads T) x {shapes.dtype_bytes} B = {layers} x {rows} x {T} x {per:,} "
            f"x {shapes.dtype_bytes}")


def site_dims(form: str, shapes: ModelShapes) -> tuple[int, int]:
    """(in_dim, out_dim C) of the operators' site (backbone.py): logit C = vocabulary, head/activation C = hidden."""
    return (shapes.hidden, shapes.vocab if form == "logit" else shapes.hidden)


def layers_above(oc, shapes: ModelShapes) -> int:
    """Decoder layers the activation form runs above its site (``operators.layer``, else the default)."""
    return shapes.n_layer - (default_layer_index(shapes.n_layer) if oc.layer is None else oc.layer)


def estimate(cfg: StrideConfig, shapes: ModelShapes, sizes: dict[str, int] | None = None,
             queries: dict[str, int] | None = None) -> Estimate:
    """Every stage's rows for ``cfg`` on a model of ``shapes``.

    ``sizes`` ({shard: training examples}, as ``preflight`` finds them): without it, one shard of
    ``corpus.shard_size`` examples (so K = design.K). ``queries`` ({batch: queries}): without it, one
    batch of ``queries.n_holdout`` + the prompts.
    """
    est = Estimate()
    add = est.rows.append
    dc, method = cfg.design, cfg.attribution.method
    sizes = dict(sizes) if sizes else {"(one full shard)": cfg.corpus.shard_size}
    queries = dict(queries) if queries else {"default": cfg.queries.n_holdout + len(cfg.queries.prompts)}
    Ks = {s: shard_K(dc.K, dc.d, n, cfg.corpus.shard_size) for s, n in sizes.items()}
    n, n_all, K, K_all = max(sizes.values()), sum(sizes.values()), max(Ks.values()), sum(Ks.values())
    Q, Q_all = max(queries.values()), sum(queries.values())
    T, V, L, wb, P = cfg.model.max_length, shapes.vocab, shapes.n_layer, shapes.dtype_bytes, shapes.n_params
    est.notes += [f"model: {shapes.describe()}",
                  f"corpus: {len(sizes)} shard(s) of up to n={n:,} training examples ({n_all:,} in all), T={T} tokens"
                  + (f"; K up to {K} per shard ({K_all} in all)" if method in STRIDE_METHODS else ""),
                  f"queries: {len(queries)} batch(es) of up to Q={Q:,} ({Q_all:,} in all)"]
    weights = Row("", "model weights", P * wb, 0, f"n_params x {wb} B = {P:,} x {wb}",
                  ("model.dtype: bfloat16", "a smaller model"))

    # base_model: the frozen model (trained here for the tiny default)
    if cfg.model.path is None:
        t = cfg.model.tiny
        add(Row("base_model", "model weights", P * F32, P * F32, f"n_params x 4 B = {P:,} x 4 (trained, saved float32)",
                ("model.tiny (n_embd, n_layer, vocab_size)",)))
        add(Row("base_model", "LM training: grads + AdamW moments", 3 * P * F32, 0,
                f"3 x n_params x 4 B = 3 x {P:,} x 4",
                ("model.tiny (n_embd, n_layer, vocab_size)",)))
        add(Row("base_model", "logits per LM step", 3 * t.batch_size * T * V * F32, 0,
                f"≈ 3 x B x T x V x 4 B = 3 x {t.batch_size} x {T} x {V:,} x 4 (logits, log-softmax, grad)",
                ("model.tiny.batch_size", "model.max_length")))
        mem, formula = _acts(shapes, L, t.batch_size, T)
        add(Row("base_model", "activations per LM step", mem, 0, formula,
                ("model.tiny.batch_size", "model.max_length")))
        add(Row("base_model", "token ids of the corpus", n_all * T * 16, 0, f"n x T x 2 x 8 B = {n_all:,} x {T} x 16",
                ("model.max_length",)))
    else:
        add(Row("base_model", weights.what, weights.memory_bytes, 0, weights.formula + " (on disk already)",
                weights.settings))
    add(Row("base_model", "logits per evaluation batch", 2 * EVAL_BATCH * T * V * F32, 0,
            f"≈ 2 x {EVAL_BATCH} x T x V x 4 B = 2 x {EVAL_BATCH} x {T} x {V:,} x 4", ("model.max_length",)))

    # training_corpus, subset_design: text and the membership pairs
    passages = round(n_all / max(1e-9, 1 - cfg.corpus.holdout_fraction))
    text = passages * (cfg.corpus.chunk_chars + 40)
    add(Row("training_corpus", "passages (train + held out)", 2 * text, text,
            f"≈ passages x (corpus.chunk_chars + 40) B = {passages:,} x {cfg.corpus.chunk_chars + 40}",
            ("corpus.max_examples",)))
    if method in STRIDE_METHODS:
        add(Row("subset_design", "membership pairs", n * dc.d * 16 * 2, n_all * dc.d * 16,
                f"n x d x 16 B = {n_all:,} x {dc.d} x 16 (subset, example_index int64)", ("design.d",)))
        _stride_rows(cfg, shapes, est, weights, Ks, n, K, K_all, Q, Q_all)
    if method in EKFAC_METHODS:
        _ekfac_rows(cfg, shapes, est, weights, n_all, Q, Q_all)
    if method in STRIDE_METHODS:
        _recovery_rows(cfg, est, K_all, n_all, Q, Q_all)
    return est


def _bank_shapes(cfg: StrideConfig, shapes: ModelShapes) -> tuple[int, int, int, int, int]:
    """(in_dim, C, C kept per operator, column-index width m, basis parameters) of an operator bank."""
    oc = cfg.operators
    in_dim, C = site_dims(oc.form, shapes)
    columns = getattr(oc, "columns", None)
    m = min(columns, C) if columns and oc.form == "logit" else 0
    hid = oc.mlp_hidden
    basis = in_dim * oc.rank if oc.basis == "linear" else in_dim * hid + hid + hid * oc.rank + oc.rank
    return in_dim, C, m or C, m, basis


def bank_bytes(cfg: StrideConfig, shapes: ModelShapes, K: int) -> dict[str, int]:
    """Bytes of one operator bank of K operators: ``A`` (K x r x C float32), ``basis`` (its weights) and
    ``buffers`` (feature mean/std, the column index of a bank with ``operators.columns``)."""
    in_dim, _C, Cm, m, basis = _bank_shapes(cfg, shapes)
    return {"A": K * cfg.operators.rank * Cm * F32, "basis": basis * F32, "buffers": 2 * in_dim * F32 + K * m * 8}


def _bank_settings(cfg: StrideConfig) -> tuple[str, ...]:
    if cfg.operators.form == "logit":
        return ("operators.form: head (r x d_model per operator instead of r x vocabulary)",
                "operators.columns (logit form: r x columns per operator)", "operators.rank", "design.K")
    return ("operators.rank", "design.K")


def _stride_rows(cfg: StrideConfig, shapes: ModelShapes, est: Estimate, weights: Row, Ks: dict[str, int], n: int,
                 K: int, K_all: int, Q: int, Q_all: int) -> None:
    """steering_operators (the largest shard's, every shard's bank on disk) and perturbation_matrix."""
    add = est.rows.append
    oc, tc, mc = cfg.operators, cfg.training, cfg.measure
    T, V, r, B = cfg.model.max_length, shapes.vocab, oc.rank, tc.batch_size
    in_dim, C, Cm, m, basis = _bank_shapes(cfg, shapes)
    bank = bank_bytes(cfg, shapes, K)
    banks = [bank_bytes(cfg, shapes, k) for k in Ks.values()]
    c_name = "C" if Cm == C else "columns"
    a_formula = f"K x r x {c_name} x 4 B = {K} x {r} x {Cm:,} x 4 ({oc.form} form: C = {C:,})"
    settings = _bank_settings(cfg)
    stage = "steering_operators"
    add(Row(stage, "model weights", weights.memory_bytes, 0, weights.formula, weights.settings))
    add(Row(stage, "token ids", n * T * 16, 0, f"n x T x 2 x 8 B = {n:,} x {T} x 16", ("corpus.shard_size",)))
    add(Row(stage, "cached features", n * T * in_dim * F32, 0, f"n x T x in_dim x 4 B = {n:,} x {T} x {in_dim:,} x 4",
            ("corpus.shard_size", "model.max_length")))
    add(Row(stage, "operator matrices A", bank["A"], sum(b["A"] for b in banks), a_formula, settings))
    add(Row(stage, "operator basis + buffers", bank["basis"] + bank["buffers"],
            sum(b["basis"] + b["buffers"] for b in banks),
            f"basis {'in_dim x r' if oc.basis == 'linear' else 'MLP'} x 4 + 2 x in_dim x 4"
            + (" + K x m x 8" if m else "") + f" B = {basis:,} x 4 + 2 x {in_dim:,} x 4"
            + (f" + {K} x {m} x 8" if m else ""),
            ("operators.basis", "operators.rank")))
    params = bank["A"] + bank["basis"]
    lazy = K * 8 if tc.optimizer == "lazy_adam" else 0
    add(Row(stage, "gradients + Adam moments", 3 * params + lazy, 0,
            f"3 x bank parameters x 4 B = 3 x {params // F32:,} x 4" + (f" + K x 8 (lazy_adam steps)" if lazy else ""),
            settings))
    column_path = bool(m) and not oc.background  # column_logits.applies: a column bank on the logit site
    if column_path:  # column_logits.ColumnLogits keeps the shard's base probabilities when they fit
        cached, d = n * T * (V + 1) * F32, cfg.design.d
        pairs = n * d * m * (T - 1) * F32  # or, on a big vocabulary, the member pairs' at their columns
        if cached <= COLUMN_CACHE_BYTES:
            add(Row(stage, "base probabilities (kept: under 256 MiB)", cached, 0,
                    f"n x T x (V + 1) x 4 B = {n:,} x {T} x {V + 1:,} x 4", ("corpus.shard_size", "model.max_length")))
        elif pairs <= COLUMN_CACHE_BYTES:
            add(Row(stage, "member pairs' base probabilities (kept: under 256 MiB)", pairs, 0,
                    f"n x d x columns x (T - 1) x 4 B = {n:,} x {d} x {m:,} x {T - 1} x 4",
                    ("corpus.shard_size", "design.d", "operators.columns", "model.max_length")))
    Bs = tc.non_member_pairs
    batches = ("training.batch_size", "training.stability_batch_size")
    add(Row(stage, "logits per training step", (4 * B + 6 * Bs) * T * V * F32, 0,
            f"≈ (4 x B + 6 x B_s) x T x V x 4 B = (4 x {B} + 6 x {Bs}) x {T} x {V:,} x 4 (base + steered logits, "
            "log-softmax, grads)", batches + ("model.max_length",)))
    add(Row(stage, "operator shifts per step", 3 * (B + Bs) * T * C * F32, 0,
            f"≈ 3 x (B + B_s) x T x C x 4 B = 3 x ({B} + {Bs}) x {T} x {C:,} x 4",
            batches + (("operators.form: head",) if oc.form == "logit" else ())))
    if oc.form == "activation":
        mem, formula = _acts(shapes, layers_above(oc, shapes), B + Bs, T)
        add(Row(stage, "layers above the site", mem, 0, formula,
                batches + ("operators.layer (higher: fewer layers above)",)))
    if tc.linearity_weight > 0:
        Nl = tc.linearity_batch
        mem = K * K * F32 + Nl * T * (4 * V + 2 * C) * F32 + 2 * Nl * r * Cm * F32
        add(Row(stage, "linearity term", mem, 0,
                f"K x K x 4 + Nl x T x (4V + 2C) x 4 + 2 x Nl x r x C x 4 B (Nl = training.linearity_batch {Nl})",
                ("training.linearity_batch", "training.linearity_weight: 0")))

    feats = Q * T * in_dim * F32
    feats_formula = f"Q x T x in_dim x 4 B = {Q:,} x {T} x {in_dim:,} x 4 (one query batch)"
    queries = ("fewer queries per batch (queries.n_holdout, queries.batch_dir)", "model.max_length")
    stage = "query_features"
    add(Row(stage, "model weights", weights.memory_bytes, 0, weights.formula, weights.settings))
    add(Row(stage, "query features", 2 * feats, Q_all * T * in_dim * F32,
            f"2 x {feats_formula} (computed + saved); disk: every batch's", queries))
    qb = min(mc.query_batch, Q)
    if oc.form == "logit":  # the base pass keeps each token's log-normaliser for the column banks
        add(Row(stage, "base logits per query batch + log-normalisers", 2 * qb * T * V * F32, Q_all * T * F32,
                f"2 x qb x T x V x 4 B, qb = measure.query_batch {qb}; disk: Q x T x 4 B",
                ("measure.query_batch",)))

    stage = "perturbation_matrix"
    add(Row(stage, "model weights", weights.memory_bytes, 0, weights.formula, weights.settings))
    add(Row(stage, "query features", feats, 0, feats_formula, queries))
    add(Row(stage, "operator bank", sum(bank.values()), 0, "A + basis + buffers (as above)", settings))
    if mc.mode == "first_order" and column_path:
        u = min(C, K * Cm)  # the bank's distinct columns (column_logits.loss_gradient), at most K x columns
        add(Row(stage, "logits + gradient at the bank's columns per query batch", 4 * qb * T * u * F32
                + qb * r * u * F32, 0, f"≈ 4 x qb x T x u x 4 + qb x r x u x 4 B, u = min(C, K x columns) = {u:,}, "
                f"qb = measure.query_batch {qb}", ("measure.query_batch", "operators.columns")))
    elif mc.mode == "first_order":
        add(Row(stage, "logits + gradient per query batch", (4 * V + 2 * C + in_dim) * qb * T * F32 + qb * r * Cm * F32,
                0, f"≈ qb x T x (4V + 2C + in_dim) x 4 + qb x r x C x 4 B, qb = measure.query_batch {qb}",
                ("measure.query_batch",)))
        if oc.form == "activation":
            mem, formula = _acts(shapes, layers_above(oc, shapes), qb, T)
            add(Row(stage, "layers above the site", mem, 0, formula, ("measure.query_batch",)))
    else:
        ch = min(mc.operator_chunk, K)
        add(Row(stage, "steered logits per operator chunk", ch * T * (in_dim + C + 2 * V) * F32, 0,
                f"≈ chunk x T x (in_dim + C + 2V) x 4 B = {ch} x {T} x {in_dim + C + 2 * V:,} x 4",
                ("measure.operator_chunk", "measure.mode: first_order")))
    add(Row(stage, "responses", 2 * Q * K * F32, Q_all * K_all * F32,
            f"Q x K x 4 B per block = {Q:,} x {K} x 4; disk: all queries x all K = {Q_all:,} x {K_all} x 4",
            ("design.K", "fewer queries per batch (queries.n_holdout, queries.batch_dir)")))


def _recovery_rows(cfg: StrideConfig, est: Estimate, K_all: int, n_all: int, Q: int, Q_all: int) -> None:
    """influence_scores of the STRIDE method (and the STRIDE half of the ensemble)."""
    add = est.rows.append
    rc, d, stage = cfg.recovery, cfg.design.d, "influence_scores"
    queries = "fewer queries per batch (queries.n_holdout, queries.batch_dir)"
    add(Row(stage, "responses of every shard", 2 * Q * K_all * 8, 0,
            f"2 x Q x sum K x 8 B = 2 x {Q:,} x {K_all} x 8 (float64)", ("design.K", queries)))
    add(Row(stage, "membership (block diagonal)", n_all * d * 40, 0,
            f"≈ n x d x 40 B = {n_all:,} x {d} x 40 (CSR/CSC)",
            ("design.d",)))
    if rc.solver == "sklearn":
        mem, formula = 2 * Q * n_all * 8, f"2 x Q x n x 8 B = 2 x {Q:,} x {n_all:,} x 8 (per-query coefficients)"
    elif rc.solver == "fista":
        mem, formula = 6 * Q * n_all * 8, f"≈ 6 x Q x n x 8 B = 6 x {Q:,} x {n_all:,} x 8 (FISTA iterates)"
    else:
        side = min(K_all, n_all)
        mem = 2 * K_all * n_all * 8 + side * side * 8 + 2 * Q * n_all * 8
        formula = f"2 x K x n x 8 + min(K, n)^2 x 8 + 2 x Q x n x 8 B (K {K_all}, n {n_all:,}, Q {Q:,}; dense ridge)"
    add(Row(stage, "recovery coefficients", mem, 0, formula,
            (queries,) + (("recovery.solver: sklearn",) if rc.solver != "sklearn" else ())))
    if cfg.attribution.method == "stride":
        per_query = n_all if rc.solver == "ridge" else min(K_all, n_all)
        add(Row(stage, "influence scores", Q * per_query * SCORE_ROW_MEMORY,
                Q_all * per_query * SCORE_ROW_DISK + Q_all * rc.top_k * (cfg.corpus.chunk_chars + 40),
                f"≈ Q x {'n' if rc.solver == 'ridge' else 'min(K, n)'} non-zeros x {SCORE_ROW_MEMORY} B = {Q:,} x "
                f"{per_query:,}; disk x {SCORE_ROW_DISK} B + top_k tables",
                (queries, "recovery.top_k", "recovery.lambda_ratio (higher: sparser)")))


def _ekfac_rows(cfg: StrideConfig, shapes: ModelShapes, est: Estimate, weights: Row, n_all: int, Q: int,
                Q_all: int) -> None:
    """influence_factors and the EK-FAC half of influence_scores (ekfac.py, Kronfluence)."""
    add = est.rows.append
    ac = cfg.attribution
    T, V, B, L = cfg.model.max_length, shapes.vocab, ac.batch_size, shapes.n_layer
    tracked = [x for x in shapes.linears if ac.include_head or x is not shapes.head]
    sides = [(i + (1 if b else 0), o) for _, i, o, b in tracked]  # Kronfluence appends a 1 to a biased layer's input
    cov = sum(a * a + g * g for a, g in sides) * F32
    eig = sum(a * a + a + g * g + g for a, g in sides) * F32
    lam = sum(a * g for a, g in sides) * F32
    biggest = max(max(a, g) for a, g in sides)
    module = max(a * g for a, g in sides)
    factor_settings = ((("attribution.include_head: false",) if ac.include_head else ())
                       + ("attribution.strategy: diagonal",))
    layers = f"{len(tracked)} tracked Linear layers" + (" incl. the head" if ac.include_head else "")
    weights2 = Row("", "model weights + linearized copy", 2 * weights.memory_bytes, 0, f"2 x ({weights.formula})",
                   weights.settings)
    stage = "influence_factors"
    add(Row(stage, weights2.what, weights2.memory_bytes, 0, weights2.formula, weights2.settings))
    add(Row(stage, "token ids of the corpus", n_all * T * 16, 0, f"n x T x 2 x 8 B = {n_all:,} x {T} x 16",
            ("model.max_length",)))
    if ac.strategy in ("ekfac", "kfac"):
        add(Row(stage, "covariance factors", cov, cov, f"sum (in^2 + out^2) x 4 B over {layers}", factor_settings))
        add(Row(stage, "eigenvectors + eigenvalues", eig, eig, f"sum (in^2 + in + out^2 + out) x 4 B over {layers}",
                factor_settings))
        add(Row(stage, "eigendecomposition (float64)", 3 * biggest * biggest * 8, 0,
                f"3 x side^2 x 8 B, largest side {biggest:,}", factor_settings))
    if ac.strategy in ("ekfac", "diagonal"):
        add(Row(stage, "corrected eigenvalues (lambda)", lam, lam, f"sum in x out x 4 B over {layers}",
                factor_settings))
        add(Row(stage, "per-sample gradients", 2 * B * module * F32, 0,
                f"2 x B x largest layer x 4 B = 2 x {B} x {module:,} x 4",
                ("attribution.batch_size",) + factor_settings))
    add(Row(stage, "logits per Kronfluence batch", 3 * B * T * V * F32, 0,
            f"≈ 3 x B x T x V x 4 B = 3 x {B} x {T} x {V:,} x 4", ("attribution.batch_size", "model.max_length")))
    mem, formula = _acts(shapes, L, B, T)
    add(Row(stage, "activations per Kronfluence batch", mem, 0, formula,
            ("attribution.batch_size", "model.max_length")))

    stage = "influence_scores"
    loaded = {"ekfac": eig + lam, "kfac": eig, "diagonal": lam}[ac.strategy]
    qb = min(KRONFLUENCE_QUERY_BATCH, Q)
    tracked_params = sum(a * g for a, g in sides)
    add(Row(stage, weights2.what, weights2.memory_bytes, 0, weights2.formula, weights2.settings))
    add(Row(stage, "factors (loaded)", loaded, 0, f"the {ac.strategy} factors above", factor_settings))
    add(Row(stage, "preconditioned query gradients", 2 * qb * tracked_params * F32, 0,
            f"2 x {qb} queries x tracked parameters x 4 B = 2 x {qb} x {tracked_params:,} x 4", factor_settings))
    add(Row(stage, "per-sample training gradients", 2 * B * module * F32, 0,
            f"2 x B x largest layer x 4 B = 2 x {B} x {module:,} x 4", ("attribution.batch_size",) + factor_settings))
    add(Row(stage, "logits + activations per batch", 3 * B * T * V * F32 + _acts(shapes, L, B, T)[0], 0,
            f"≈ 3 x B x T x V x 4 B + activations (B = attribution.batch_size {B})",
            ("attribution.batch_size", "model.max_length")))
    dense = 4 + 8 + 12 + (3 * 8 if ac.method == "ensemble" else 0)
    add(Row(stage, "influence scores (dense)", Q * n_all * (dense + SCORE_ROW_MEMORY),
            Q_all * n_all * SCORE_ROW_DISK + Q_all * cfg.recovery.top_k * (cfg.corpus.chunk_chars + 40),
            f"≈ Q x n x {dense + SCORE_ROW_MEMORY} B = {Q:,} x {n_all:,} (every pair scored); "
            f"disk x {SCORE_ROW_DISK} B",
            ("fewer queries per batch (queries.n_holdout, queries.batch_dir)", "corpus.max_examples")))


# --- the budget ---------------------------------------------------------------------------------

def machine_memory() -> int | None:
    """Total RAM of this machine (os.sysconf, else /proc/meminfo), capped by a cgroup memory limit."""
    total: int | None = None
    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
        except OSError:
            pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and (total is None or int(value) < total):
            total = int(value)
    return total


def free_disk(path: str | os.PathLike[str]) -> int:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing folder)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


@dataclass(frozen=True)
class Budget:
    """Bytes a run may use (None: not checked) and where each limit came from."""

    memory_bytes: int | None
    disk_bytes: int | None
    memory_source: str = "budget.memory_gb"
    disk_source: str = "budget.disk_gb"

    def describe_memory(self) -> str:
        return "not checked" if self.memory_bytes is None else f"{human(self.memory_bytes)} ({self.memory_source})"

    def describe_disk(self) -> str:
        return "not checked" if self.disk_bytes is None else f"{human(self.disk_bytes)} ({self.disk_source})"


def machine_budget(cfg: StrideConfig, store_root: str | os.PathLike[str] | None = None) -> Budget:
    """``cfg.budget``, its unset limits from the machine: 80% of the RAM; the free space of the store's
    filesystem (no disk limit when neither ``budget.disk_gb`` nor a store is given)."""
    bc = cfg.budget
    if bc.memory_gb is not None:
        memory, memory_source = int(bc.memory_gb * 1e9), "budget.memory_gb"
    else:
        total = machine_memory()
        memory = None if total is None else int(MEMORY_SHARE * total)
        memory_source = (f"budget.memory_gb unset: {MEMORY_SHARE:.0%} of this machine's {human(total)} of RAM"
                         if total else "")
    if bc.disk_gb is not None:
        disk, disk_source = int(bc.disk_gb * 1e9), "budget.disk_gb"
    elif store_root is not None:
        disk, disk_source = free_disk(store_root), f"budget.disk_gb unset: free space at {store_root}"
    else:
        disk, disk_source = None, ""
    return Budget(memory, disk, memory_source, disk_source)


def _fixes(rows: list[Row], key: Callable[[Row], int], total: int) -> tuple[list[Row], list[str]]:
    """The rows that make up most of ``total`` (largest first, at most 3) and the settings that shrink them."""
    top: list[Row] = []
    for row in sorted(rows, key=key, reverse=True):
        if len(top) == 3 or (top and sum(key(r) for r in top) >= 0.8 * total) or key(row) <= 0:
            break
        top.append(row)
    return top, list(dict.fromkeys(s for r in top for s in r.settings))


def check(cfg: StrideConfig, estimate: Estimate, budget: Budget) -> None:
    """Raise ``StrideConfigError`` when a stage's peak memory or the run's disk exceeds ``budget``, naming
    the stage, the predicted and allowed bytes, the largest parts and the settings that shrink them."""
    if not cfg.budget.enforce:
        return
    def tail(setting: str) -> str:
        return f"; or raise {setting} (budget.enforce: false runs anyway)"

    if budget.memory_bytes is not None:
        over = [(s, estimate.memory(s)) for s in estimate.stages() if estimate.memory(s) > budget.memory_bytes]
        if over:
            stage, need = max(over, key=lambda x: x[1])
            rows = [r for r in estimate.rows if r.stage == stage]
            top, fixes = _fixes(rows, lambda r: r.memory_bytes, need)
            parts = ", ".join(f"{r.what} {human(r.memory_bytes)} ({r.formula})" for r in top)
            raise StrideConfigError(
                f"stage {stage} would need about {human(need)} of memory, over the budget of "
                f"{human(budget.memory_bytes)} ({budget.memory_source}): mostly {parts}. "
                f"Change {', '.join(fixes)}{tail('budget.memory_gb')}")
    if budget.disk_bytes is not None and estimate.disk() > budget.disk_bytes:
        need = estimate.disk()
        top, fixes = _fixes(estimate.rows, lambda r: r.disk_bytes, need)
        parts = ", ".join(f"{r.stage} {r.what} {human(r.disk_bytes)} ({r.formula})" for r in top)
        raise StrideConfigError(
            f"the run's artifacts would need about {human(need)} of disk, over the budget of "
            f"{human(budget.disk_bytes)} ({budget.disk_source}): mostly {parts}. Change {', '.join(fixes)}"
            f"{tail('budget.disk_gb')}")


def _rows_in(path: Path) -> int:
    """Rows of a query file (parquet, jsonl/ndjson) without parsing its texts."""
    if path.suffix.lower() == ".parquet":
        import polars as pl

        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def query_counts(cfg: StrideConfig, holdout_passages: int) -> dict[str, int]:
    """{batch: queries} as ``shards.load_batch`` will build them (best effort: an unreadable file counts
    zero here, and its own stage reports it)."""
    from stride_assets.engine import shards as shards_mod

    qc = cfg.queries
    counts = {shards_mod.DEFAULT_BATCH: min(qc.n_holdout, holdout_passages) + len(qc.prompts)}
    try:
        if qc.path:
            counts[shards_mod.DEFAULT_BATCH] += _rows_in(Path(qc.path).expanduser())
        for name, path in shards_mod._batch_files(qc).items():
            counts[name] = _rows_in(path)
    except Exception:  # noqa: BLE001  a missing or corrupt file: its own stage says what is wrong with it
        pass
    return counts


def preflight_budget(cfg: StrideConfig, sizes: dict[str, int], holdout_passages: int,
                     store_root: str | os.PathLike[str] | None = None,
                     log: Callable[[str], None] | None = None) -> Estimate | None:
    """Estimate the run on the shards found, show it through ``log``, refuse it when over budget.
    A model whose config cannot be read (a hub id offline) skips the estimate; loading it fails later."""
    try:
        shapes = model_shapes(cfg)
    except StrideInputError as exc:
        if log:
            log(f"memory/disk estimate skipped: {exc}")
        return None
    est = estimate(cfg, shapes, sizes, query_counts(cfg, holdout_passages))
    budget = machine_budget(cfg, store_root)
    if log:
        log(est.table(budget))
    check(cfg, est, budget)
    return est
