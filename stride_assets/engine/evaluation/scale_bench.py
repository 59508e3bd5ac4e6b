"""``stride bench scale``: what STRIDE and the gradient baselines cost at the model and corpus sizes users bring.

One run on this machine's CPU, one thread, CPU seconds of this process (``time.process_time``: what the
work takes on one idle core; other jobs sharing the cores barely move it):

- models: the default profile's tiny GPT-2 (``model.tiny``, built by ``lm.build_tiny_gpt2`` and trained
  ``model_steps`` steps here), an intermediate GPT-2 (6 layers x 384 with GPT-2's 50,257-token vocabulary)
  and GPT-2 small (``gpt2-124m``, 12 x 768), the last two built by ``engine/architectures.py`` with random
  weights (cost does not depend on the weights), saved with ``save_pretrained`` and loaded back with
  ``lm.load_model`` as a user's model is; EK-FAC at a 50k vocabulary runs with ``include_head=False``
  (``ekfac.tracked_modules`` refuses a 50,257-side factor);
- text: 400-character passages (``corpus.chunk_text``) of the Python standard library's source files, then
  the installed packages' .py files when more are needed: real text, read offline, no synthetic data;
- n: 1k, 3k, 10k, 30k, 100k training passages at the default size, 1k at the larger ones, plus one row
  gpt2-124m x 100k assembled from measured rates (``extrapolated``); 1,000 queries (held-out passages).

Methods, each as one-time seconds (do not depend on the queries) + per-query seconds, stage by stage:

- ``stride``: the default profile's STRIDE (``resources/profiles/default.yaml``, read with
  ``config.load_config``; its operator form as configured), run as the pipeline runs it: the corpus in
  shards of ``corpus.shard_size`` passages, each with its own design (``design.K`` subsets per full shard,
  ``design.shard_K``) and operator bank trained ``training.epochs`` (``shard_training``); per query, the
  responses to every shard's bank and one Lasso over the block-diagonal design. Stages are the facade's
  phases (``engine/stride.py``): cache, fit (one-time), measure, recover (per query). Lasso: one job;
- ``stride_logit_dense``: the same with ``operators.form: logit`` and no ``columns`` (every operator over
  the whole vocabulary), for comparison;
- ``logra``: per-example training gradients CountSketch-projected (``GradientSpace``, "auto": 4,096
  dimensions above 16,384 parameters), the damped Gram matrix and its Cholesky factor (``DampedSolver``,
  damping 1.0 as chosen on pydoc-gpt), per query its projected gradient, the solve and the scores;
- ``kronfluence_ekfac``: ``ekfac.Influence`` (Kronfluence): covariance pass, eigendecomposition, lambda
  pass (timed as three phases, the work of ``fit_all_factors``), then pairwise scores; Kronfluence scores
  ``query_batch_size`` (16) queries per pass over the training set, so a query costs 1/16 of that pass.

What is measured on part of the work and scaled linearly (every stage says which in its ``how``):

- work that is the same for every shard (a shard's design, bank set-up and training steps; a shard bank's
  responses) is measured on one shard and multiplied by the shards; operator training on a few steps
  (seconds per step over a 0-step fit) times the steps, unless the shard's steps fit ``full_steps_s``;
- per-example passes (feature caching, logra's gradients, Kronfluence's covariance and lambda passes) are
  measured on a prefix of the training set and scaled by n; Kronfluence's scores are fitted affine in the
  number of training examples over two prefixes;
- per-query stages are measured on a subset of the 1,000 queries; the Lasso always at full size
  (K_all x n, the block-diagonal design of every shard), on responses tiled from the one measured bank
  (its columns permuted per shard); logra's Gram matrix and scores above ``LOGRA_ROWS`` rows on that many
  rows (tiled from the measured gradients), the Cholesky factor at full size.

Peak memory is the process's resident set (sampled every 20 ms) during each stage of the work actually
done (prefixes where scaled), beside ``engine/budget.py``'s prediction for the full run.

    OMP_NUM_THREADS=1 stride bench scale --out .stride/scale [--quick]
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import shutil
import statistics
import sysconfig
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from stride_assets.engine import stride as stride_module
from stride_assets.engine.backbone import Batch, encode_all, make_site, take
from stride_assets.engine.config import StrideConfig, load_config
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.stride import Stride
from stride_assets.engine.evaluation.meter import Meter, metered

Log = Callable[[str], None]
CLOCK: Callable[[], float] = time.process_time  # set_clock: CPU seconds of this process, or wall seconds

QUERIES = 1_000  # the ratio's query count, and the query set
LOGRA_DAMPING = 1.0  # pydoc-gpt's validation choice (benchmarks/reports/pydoc-gpt.json)
LOGRA_ROWS = 8_192  # logra's Gram matrix and scores on at most this many rows, scaled linearly above
TOKENIZER_TEXTS = 5_000  # passages the models' tokenizers are learned on
BASELINES = {"logra": "logra", "kronfluence_ekfac": "kronfluence_ekfac"}
STRIDE_FORMS = ("stride", "stride_logit_dense", "stride_logit_columns")
COLUMNS = 1_024  # stride_logit_columns: operators.columns when the profile sets none


# --- timing (shared with benchmarks/bench_cost.py) ------------------------------------------------


def set_clock(kind: str) -> None:
    """'cpu': this process's CPU seconds (with one thread, the wall time on an idle core); 'wall': elapsed."""
    global CLOCK
    CLOCK = time.process_time if kind == "cpu" else time.perf_counter


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn`` took on ``CLOCK``, and its result."""
    start = CLOCK()
    out = fn()
    return CLOCK() - start, out


def median_of(run: Callable[[], tuple[float, Any]], repeats: int, slow: float = 20.0) -> tuple[float, list[float], Any]:
    """Median seconds of ``repeats`` calls of ``run`` (-> seconds, result); one call if the first takes > ``slow``."""
    runs, out = [], None
    for _ in range(repeats):
        s, out = run()
        runs.append(s)
        if s > slow:
            break
    return statistics.median(runs), runs, out


def parse_size(text: str) -> tuple[int, int, int]:
    """'LxE' or 'LxExH' -> (n_layer, n_embd, n_head); heads default to n_embd / 32 (at least 2)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 2:
        parts.append(max(2, parts[1] // 32))
    return parts[0], parts[1], parts[2]


class ClockedStride(Stride):
    """The engine's facade with its phases timed on ``CLOCK`` (the facade's own is wall time)."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = CLOCK()
        try:
            yield
        finally:
            self.seconds[name] += CLOCK() - start


def spent(stride: Stride, phase: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The seconds ``fn`` added to ``stride.seconds[phase]``, and its result."""
    before = stride.seconds[phase]
    out = fn()
    return stride.seconds[phase] - before, out


def optimizer_step_seconds(stride: Stride, K: int, repeats: int = 5) -> float:
    """One AdamW update of a bank's parameters with dense gradients (as ``train_operators`` makes)."""
    params = [p for p in stride.new_bank(K).parameters() if p.requires_grad]
    tc = stride.cfg.training
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # allocates the moments
    return statistics.median(timed(opt.step)[0] for _ in range(repeats))


def fit_rate(stride: Stride, feats: torch.Tensor, batch: Batch, design, steps: int, *, all_steps: bool | None,
             step_budget: float, full_budget: float = 0.0, repeats: int = 3, fit0_repeats: int | None = 3,
             time_cap: float | None = None) -> dict[str, Any]:
    """Seconds of ``fit_operators`` on one design: a 0-step fit (the bank's set-up, sampler, optimizer, and
    what a column bank computes once) and seconds per training step.

    After a 2-step warm-up, ``fit0_repeats`` 0-step fits (None: 1, or 3 when one is fast); then either one fit
    of all ``steps`` (``all_steps``; None: when the warm-up predicts at most ``full_budget`` seconds) or
    ``repeats`` fits of a few steps each (a fresh bank each), sized so they take about ``step_budget``
    seconds together (and stopping once they took ``time_cap``; when the warm-up and the 0-step fit alone
    took longer, the warm-up's 2 steps are the measure). Per step: the training loop's own seconds
    (``TrainLog.seconds``, which leave out the set-up) over its steps; the difference of two whole fits was
    the measure before, and where a shard's set-up takes ~30 s (a big vocabulary's log-normalisers) its noise
    was larger than a few steps.
    """
    from stride_assets.engine.training import UndertrainedOperatorsWarning

    base = stride.training

    def fit(n_steps: int) -> tuple[float, Any]:
        stride.training = base.model_copy(update={"steps": n_steps})
        with warnings.catch_warnings():  # a few steps measure seconds per step, not operators
            warnings.simplefilter("ignore", UndertrainedOperatorsWarning)
            return spent(stride, "fit", lambda: stride.fit_operators(feats, batch, design, lambda _: None))

    def init() -> None:  # the bank's set-up alone, as fit_operators opens with it
        with stride.phase("fit"):
            stride.new_bank(design.K).to(feats.device).set_feature_stats(feats, batch.get("attention_mask"))

    try:
        bank_init_s = spent(stride, "fit", init)[0]
        warm_s, (warm_bank, warm_log) = fit(2)  # warm-up; also sizes the measured fits
        first = fit(0)[0]
        count = fit0_repeats if fit0_repeats is not None else (3 if first * 3 < step_budget / 4 else 1)
        fit0 = statistics.median([first] + [fit(0)[0] for _ in range(count - 1)])
        guess = max(warm_log.seconds / 2, 1e-6)
        if all_steps is None:
            all_steps = guess * steps <= full_budget
        if all_steps:
            call_s, (bank, log) = fit(steps)
            per_step, measured, runs, bank_steps = log.seconds / max(steps, 1), steps, [], steps
        elif time_cap is not None and warm_s + fit0 > time_cap:  # slow set-up: the warm-up's 2 steps are the measure
            bank, runs, bank_steps = warm_bank, [guess], 2
            per_step, measured = runs[0], 2
        else:
            chunk = int(min(20, max(2, round(step_budget / 3 / guess))))
            runs, total = [], 0.0
            for _ in range(repeats):
                call_s, (bank, log) = fit(chunk)
                runs.append(log.seconds / chunk)
                total += call_s
                if time_cap is not None and total > time_cap:
                    break
            per_step, measured, bank_steps = statistics.median(runs), chunk * len(runs), chunk
    finally:
        stride.training = base
    return {"bank_init_s": bank_init_s, "warm_s": warm_s, "fit0_s": fit0, "per_step_s": per_step, "steps": steps,
            "steps_measured": measured, "bank_steps": bank_steps, "per_step_runs_s": runs, "all_steps": all_steps,
            "train_s_measured": log.seconds if all_steps else None, "bank": bank}


# --- memory ---------------------------------------------------------------------------------------

MIB = 2**20  # every MB of the report is a MiB, as meter.rss_mb's


def trim_memory() -> None:
    """Collect garbage and hand freed heap back to the system (glibc), so the next stage's peak is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_rss() -> Iterator[Meter]:
    """``meter.metered`` after a trim: the block's ``peak_rss_mb`` (MiB) is its own, not the last stage's."""
    trim_memory()
    with metered() as meter:
        yield meter


# --- text and models ------------------------------------------------------------------------------


def python_passages(count: int, chunk_chars: int = 400, min_chars: int = 32, seed: int = 0) -> tuple[list[str], str]:
    """``count`` distinct passages of Python source (the standard library's .py files in path order, then
    the installed packages'), cut by ``corpus.chunk_text``, in a seeded random order; and where they came from."""
    from stride_assets.engine.corpus import chunk_text
    from stride_assets.engine.errors import StrideInputError

    paths = sysconfig.get_paths()
    stdlib, packages = Path(paths["stdlib"]), Path(paths["purelib"])
    seen: set[str] = set()
    out: list[str] = []
    used: list[str] = []
    for root in (stdlib, packages):
        for path in sorted(root.rglob("*.py")):
            if root == stdlib and "site-packages" in path.relative_to(root).parts:
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for passage in chunk_text(text, chunk_chars, min_chars):
                if passage not in seen:
                    seen.add(passage)
                    out.append(passage)
            if len(out) >= count:
                break
        used.append(str(root))
        if len(out) >= count:
            break
    if len(out) < count:
        raise StrideInputError(f"only {len(out):,} passages of Python source here, {count:,} needed")
    order = np.random.default_rng(seed).permutation(len(out))[:count]
    return [out[i] for i in order], f"{chunk_chars}-character passages of the .py files under {' then '.join(used)}"


@dataclass(frozen=True)
class ModelSize:
    """One rung of the model ladder: the profile's tiny GPT-2 (``architecture`` None) or a real architecture,
    the n it is measured at, and how much of the baselines' per-example work is measured there."""

    name: str
    architecture: str | None = None
    layers: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    ns: tuple[int, ...] = (1_000,)
    ekfac_fit: int = 1_000  # training examples of Kronfluence's covariance and lambda passes
    ekfac_queries: int = 16  # queries scored ...
    ekfac_train: tuple[int, int] = (250, 1_000)  # ... against two prefixes of the training set


@dataclass(frozen=True)
class Budgets:
    """How much is measured before scaling (seconds are CPU seconds)."""

    model_steps: int = 200  # LM training steps of the tiny default model (random weights for the others)
    pool: int = 8_192  # training passages tokenized; prefix measurements draw from them
    cache_s: float = 10.0  # feature caching measured, per form and size
    step_budget: float = 10.0  # measured operator steps per form and size
    full_steps_s: float = 15.0  # a shard's bank is trained all its steps when that is predicted under this
    measure_s: float = 6.0  # measured responses per form and size
    lasso_s: float = 6.0  # measured Lasso per form and n
    grad_s: float = 20.0  # logra training gradients
    query_grad_s: float = 4.0  # logra query gradients
    time_cap: float = 60.0  # stop the few-step fits once they took this long


FULL_LADDER = (
    ModelSize("default", ns=(1_000, 3_000, 10_000, 30_000, 100_000)),
    ModelSize("gpt2-6x384", "gpt2-124m", layers=6, overrides={"n_embd": 384, "n_head": 6},
              ekfac_fit=32, ekfac_queries=4, ekfac_train=(8, 32)),
    ModelSize("gpt2-124m", "gpt2-124m", ekfac_fit=8, ekfac_queries=2, ekfac_train=(2, 6)),
    ModelSize("qwen2.5-0.5b-2l", "qwen2.5-0.5b", layers=2, ekfac_fit=8, ekfac_queries=2, ekfac_train=(2, 6)),
)
QUICK_LADDER = (ModelSize("default", ns=(1_000, 3_000), ekfac_fit=128, ekfac_queries=4, ekfac_train=(32, 96)),)
QUICK_BUDGETS = Budgets(model_steps=10, pool=1_024, cache_s=1.0, step_budget=1.0, full_steps_s=0.0, measure_s=0.5,
                        lasso_s=0.5, grad_s=1.5, query_grad_s=0.5, time_cap=3.0)
EXTRAPOLATE = ("gpt2-124m", 100_000)  # a row assembled from that model's rates and the default size's n-parts


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> Batch:
    from stride_assets.engine import lm

    return lm.encode_batch(tokenizer, texts, max_length)


def build_model(size: ModelSize, cfg: StrideConfig, texts: list[str], workdir: Path, budgets: Budgets,
                log: Log) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The model of a rung, frozen, its tokenizer and what was done to make it (not part of any method's cost)."""
    from stride_assets.engine import architectures, lm

    start = time.perf_counter()
    max_length = cfg.model.max_length
    if size.architecture is None:
        tiny = cfg.model.tiny
        tokenizer = lm.train_tokenizer(texts[:TOKENIZER_TEXTS], tiny.vocab_size)
        model = lm.build_tiny_gpt2(tokenizer, tiny, max_length)
        batch = _encode(tokenizer, texts[:budgets.pool], max_length)
        lm.train_lm(model, batch["input_ids"], batch["attention_mask"], steps=budgets.model_steps,
                    batch_size=tiny.batch_size, lr=tiny.lr, weight_decay=tiny.weight_decay, seed=tiny.seed,
                    log_every=max(1, budgets.model_steps // 2), log=lambda m: log(f"    {m}"))
        info = {"built": f"lm.build_tiny_gpt2 (model.tiny of the profile), trained {budgets.model_steps} steps "
                         f"on the first {min(budgets.pool, len(texts)):,} training passages"}
    else:
        path = architectures.build(size.architecture, workdir / size.name, texts[:TOKENIZER_TEXTS],
                                   layers=size.layers, overrides=dict(size.overrides) or None, max_length=max_length,
                                   log=lambda m: log(f"    {m}"))
        model, tokenizer = lm.load_model(str(path))
        info = {"built": f"architectures.build({size.architecture!r}, layers={size.layers}, "
                         f"overrides={dict(size.overrides)}) with random weights, save_pretrained, lm.load_model",
                "path_removed_after": True}
    cfgm = model.config
    info.update(params=int(sum(p.numel() for p in model.parameters())), vocab=int(cfgm.vocab_size),
                n_layer=int(cfgm.num_hidden_layers), n_embd=int(cfgm.hidden_size), tokenizer_tokens=len(tokenizer),
                build_wall_s=time.perf_counter() - start)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer, info


class TokenTask:
    """What the gradient baselines take of a task, on any causal LM: ``LMTask``'s losses."""

    kind = "lm"

    def __init__(self) -> None:
        from stride_assets.engine.evaluation.lm_task import LMTask

        self._lm = LMTask

    def functional_loss(self, model: torch.nn.Module):
        return self._lm.functional_loss(self, model)

    def example_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return self._lm.example_loss(self, model, batch)


def _rows(batch: Batch, count: int) -> Batch:
    """The first ``count`` rows of ``batch``, repeated cyclically when it has fewer."""
    n = next(iter(batch.values())).shape[0]
    return take(batch, torch.arange(count) % n)


def _shard_sizes(n: int, shard_size: int) -> list[int]:
    """Shard sizes of n passages as the pipeline cuts them: full shards, then the rest."""
    sizes = [shard_size] * (n // shard_size)
    return sizes + [n % shard_size] if n % shard_size else sizes


def _scaled(m: int, n: int, what: str = "examples") -> str:
    return "measured" if m >= n else f"scaled from {m:,} of {n:,} {what}"


def _stage(seconds: float, how: str, peak: float, per: str = "one_time", **extra: Any) -> dict[str, Any]:
    return {"seconds": float(seconds), "per": per, "how": how, "peak_rss_mb": round(float(peak), 1), **extra}


# --- STRIDE ---------------------------------------------------------------------------------------


def stride_rates(form: str, cfg: StrideConfig, model: torch.nn.Module, train: Batch, queries: Batch,
                 budgets: Budgets, log: Log) -> dict[str, Any]:
    """One full shard of STRIDE on ``model``: caching rate, the shard's fit, a shard bank's responses."""
    from stride_assets.engine.design import draw_design, shard_K
    from stride_assets.engine.shards import derive_seed
    from stride_assets.engine.stages.steering_operators import shard_training

    oc, dc, shard_size = cfg.operators, cfg.design, cfg.corpus.shard_size
    pool = next(iter(train.values())).shape[0]
    stride = ClockedStride(make_site(model, oc.form, oc.layer), cfg)
    check = getattr(stride_module, "check_dense_size", None)  # the facade's refusal, before any work
    if check is not None and stride.columns() is None:
        check(stride.site, oc)
    shard = take(train, torch.arange(min(shard_size, pool)))
    out: dict[str, Any] = {"form": oc.form, "columns": oc.columns, "layer": getattr(stride.site, "layer", None)}

    with peak_rss() as mem:  # caching, shard by shard (the pipeline caches each shard alone), within the budget
        probe = min(8, pool)
        stride.cache_features(take(train, torch.arange(probe)))  # warm-up
        rate = timed(lambda: stride.cache_features(take(train, torch.arange(probe))))[0] / probe
        target = int(min(pool, max(probe, budgets.cache_s / max(rate, 1e-9))))
        cumulative, done, total, feats = [], 0, 0.0, None
        while done < target:
            step = min(shard_size, target - done)
            s, f = spent(stride, "cache", lambda: stride.cache_features(take(train, torch.arange(done, done + step))))
            feats = f if feats is None else feats
            done, total = done + step, total + s
            cumulative.append((done, total))
            if total > budgets.cache_s and done >= probe:
                break
    out.update(cache_per_example_s=total / done, cache_measured=cumulative, cache_peak_mb=mem.peak_rss_mb)
    tiled = feats.shape[0] < shard_size
    if tiled:  # the shard's cost needs its full size: the prefix's features repeated (the work is the same)
        feats = feats[torch.arange(shard_size) % feats.shape[0]]
    log(f"    {form}: caching {out['cache_per_example_s'] * 1e3:.2f} ms/example (measured on {done:,})")

    name = "shard-00000"
    with peak_rss() as mem:
        design_s, design = timed(lambda: draw_design(shard_size, shard_K(dc.K, dc.d, shard_size, shard_size), dc.d,
                                                     derive_seed(dc.seed, name)))
        tc = shard_training(cfg.training, shard_size, dc.d, name)
        stride.training = tc
        fit = fit_rate(stride, feats, shard, design, tc.steps, all_steps=None, step_budget=budgets.step_budget,
                       full_budget=budgets.full_steps_s, fit0_repeats=None, time_cap=budgets.time_cap)
    bank = fit.pop("bank")
    out.update(design_s=design_s, K_shard=design.K, fit=fit, fit_peak_mb=mem.peak_rss_mb, features_tiled=tiled,
               shard_fixed_s=design_s + fit["fit0_s"])
    log(f"    {form}: shard of {shard_size} (K {design.K}): fixed {out['shard_fixed_s']:.2f}s + "
        f"{fit['per_step_s'] * 1e3:.1f} ms/step x {tc.steps} (measured over {fit['steps_measured']} steps)")

    state = {k: v for k, v in bank.state_dict().items()}
    per_op = sum(v.numel() * v.element_size() for v in state.values() if v.dim() and v.shape[0] == design.K)
    fixed = sum(v.numel() * v.element_size() for v in state.values()) - per_op
    out.update(bank_bytes_per_operator=per_op / design.K, bank_bytes_fixed=fixed,
               operator_params=int(sum(p.numel() for p in bank.parameters() if p.requires_grad)))

    n_q = next(iter(queries.values())).shape[0]
    qb = cfg.measure.query_batch

    def measured(count: int) -> tuple[float, float, Any]:
        """As the pipeline does: the queries' features once (query_features), then a shard bank's
        responses from them (perturbation_matrix): (forward seconds, responses seconds, Y)."""
        rows = _rows(queries, count)

        def features() -> tuple[torch.Tensor, torch.Tensor | None]:
            with torch.no_grad():
                feats = encode_all(stride.site, rows, qb)
            return feats, stride.base_pass(rows, feats)[1]

        forward, (feats, lse) = timed(features)
        s, Y = spent(stride, "measure", lambda: stride.measure(bank, rows, feats=feats, lse=lse))
        return forward, s, Y

    with peak_rss() as mem:
        measured(2)  # warm-up
        probe_s = sum(measured(4)[:2]) / 4
        q_m = int(min(n_q, max(4, budgets.measure_s / max(probe_s, 1e-9))))
        q_m = max(4, q_m - q_m % qb) if q_m > qb else q_m
        forward_s, s, Y = measured(q_m)
    out.update(measure_per_query_per_shard_s=s / q_m, measure_queries=q_m, measure_peak_mb=mem.peak_rss_mb, Y=Y,
               query_forward_s=forward_s / q_m)
    log(f"    {form}: per query, its features and base loss once {forward_s / q_m * 1e3:.2f} ms, then "
        f"{s / q_m * 1e3:.2f} ms per shard bank (measured on {q_m} queries)")
    return out


def stride_recovery(rates: dict[str, Any], n: int, cfg: StrideConfig, budgets: Budgets) -> dict[str, Any]:
    """The per-query Lasso at full size: every shard's design (block diagonal) and responses tiled from the
    measured bank's (its columns permuted per shard); seconds per query over as many queries as fit the budget."""
    from stride_assets.engine.design import draw_design, shard_K
    from stride_assets.engine.shards import derive_seed

    dc, shard_size = cfg.design, cfg.corpus.shard_size
    sizes = _shard_sizes(n, shard_size)
    Ks = [shard_K(dc.K, dc.d, s, shard_size) for s in sizes]
    rng = np.random.default_rng(0)
    Y0 = np.asarray(rates["Y"], dtype=np.float64)
    K0 = Y0.shape[1]
    blocks = [Y0[:, rng.permutation(K0)[np.arange(k) % K0]] for k in Ks]
    Y = np.concatenate(blocks, axis=1)
    M = sp.block_diag([draw_design(s, k, dc.d, derive_seed(dc.seed, f"shard-{i:05d}")).membership
                       for i, (s, k) in enumerate(zip(sizes, Ks))], format="csr", dtype=np.float32)
    rc = cfg.recovery.model_copy(update={"n_jobs": 1})
    stride = ClockedStride(None, cfg)
    stride.recover(Y[:1], M, rc)  # warm-up (imports, the design's sparse formats)
    with peak_rss() as mem:
        first = spent(stride, "recover", lambda: stride.recover(Y[:2], M, rc))[0]
        more = int(min(max(0, Y.shape[0] - 2), max(1, budgets.lasso_s / max(first / 2, 1e-9) - 2)))
        rest = spent(stride, "recover", lambda: stride.recover(Y[2:2 + more], M, rc))[0] if more else 0.0
    q = 2 + more
    return {"per_query_s": (first + rest) / q, "queries": q, "K_all": int(sum(Ks)), "shards": len(sizes),
            "peak_rss_mb": mem.peak_rss_mb}


def stride_at(rates: dict[str, Any], recovery: dict[str, Any], n: int, cfg: StrideConfig, shapes: Any,
              recovery_from: str | None = None) -> dict[str, Any]:
    """STRIDE's cost at n from one shard's rates and the Lasso measured at n (``recovery``)."""
    from stride_assets.engine import budget
    from stride_assets.engine.design import shard_K
    from stride_assets.engine.stages.steering_operators import shard_training

    dc, shard_size = cfg.design, cfg.corpus.shard_size
    sizes = _shard_sizes(n, shard_size)
    S = len(sizes)
    Ks = [shard_K(dc.K, dc.d, s, shard_size) for s in sizes]
    steps = [shard_training(cfg.training, s, dc.d, f"shard-{i:05d}").steps for i, s in enumerate(sizes)]
    fit = rates["fit"]
    measured_cache = dict(rates["cache_measured"])
    cache_s = measured_cache[n] if n in measured_cache else rates["cache_per_example_s"] * n
    cache_m = n if n in measured_cache else rates["cache_measured"][-1][0]
    fit_s = S * rates["shard_fixed_s"] + fit["per_step_s"] * sum(steps)
    fit_how = (f"scaled from 1 of {S} shards: the shard's fixed {rates['shard_fixed_s']:.2f}s (design, bank set-up"
               f"{', column logits' if rates['columns'] else ''}) x {S} + {fit['per_step_s'] * 1e3:.2f} ms/step "
               f"(measured over {fit['steps_measured']} of the shard's {fit['steps']} steps) x {sum(steps):,} steps"
               + ("; features tiled from a prefix" if rates["features_tiled"] else ""))
    measure_pq = rates["query_forward_s"] + rates["measure_per_query_per_shard_s"] * S
    stages = {
        "cache": _stage(cache_s, _scaled(cache_m, n), rates["cache_peak_mb"]),
        "fit": _stage(fit_s, fit_how, rates["fit_peak_mb"]),
        "measure": _stage(measure_pq, f"scaled from {rates['measure_queries']} of {QUERIES:,} queries: their "
                                      f"features once (query_features) + 1 of {S} shard banks' responses x {S}",
                          rates["measure_peak_mb"], "per_query", query_features_s=rates["query_forward_s"]),
        "recover": _stage(recovery["per_query_s"],
                          (f"measured at full size (K_all {recovery['K_all']:,} x n {n:,}, one job) on "
                           f"{recovery['queries']} of {QUERIES:,} queries, responses tiled from one shard's bank")
                          + (f"; {recovery_from}" if recovery_from else ""),
                          recovery["peak_rss_mb"], "per_query"),
    }
    bank_bytes = sum(rates["bank_bytes_fixed"] + rates["bank_bytes_per_operator"] * k for k in Ks)
    est = budget.estimate(cfg, shapes, {f"shard-{i:05d}": s for i, s in enumerate(sizes)}, {"default": QUERIES})
    predicted = est.row("operator matrices A").disk_bytes + est.row("operator basis + buffers").disk_bytes
    method = _method(stages, bank_bytes=int(bank_bytes), bank_bytes_how=f"one bank's tensors (measured) for each of "
                   f"the {S} shards' K", bank_bytes_predicted=int(predicted),
                   predicted_peak_mb={s: round(est.memory(s) / MIB, 1) for s in
                                      ("steering_operators", "perturbation_matrix", "influence_scores")},
                   form=rates["form"], columns=rates["columns"], shards=S, K_all=int(sum(Ks)),
                   operator_steps=int(sum(steps)), operator_params_per_shard=rates["operator_params"])
    return method


def _method(stages: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A method's summary from its stages: one-time and per-query seconds, the peak, how it was obtained."""
    one = sum(s["seconds"] for s in stages.values() if s["per"] == "one_time")
    per = sum(s["seconds"] for s in stages.values() if s["per"] == "per_query")
    return {"one_time_s": one, "per_query_s": per, "end_to_end_s": one + QUERIES * per,
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
            "how": "measured" if all(s["how"].startswith("measured") for s in stages.values())
            else "partly scaled (see stages)", "stages": stages, **extra}


# --- logra ----------------------------------------------------------------------------------------


def logra_rates(model: torch.nn.Module, train: Batch, queries: Batch, ns: tuple[int, ...], budgets: Budgets,
                log: Log) -> dict[str, Any]:
    """Projected per-example gradients: training prefixes (cumulative seconds at each n reached) and queries."""
    from stride_assets.engine.evaluation.methods.gradients import GradientSpace

    task = TokenTask()
    space = GradientSpace.for_model(model, "auto", 0, "auto")
    pool = next(iter(train.values())).shape[0]
    with peak_rss() as mem:
        space.grads(task, model, _rows(train, 2))  # warm-up (vmap)
        probe = min(pool, max(space.chunk_size, 4))
        rate = timed(lambda: space.grads(task, model, take(train, torch.arange(probe))))[0] / probe
        m = int(min(pool, max(probe, budgets.grad_s / max(rate, 1e-9))))
        marks = sorted({x for x in ns if x <= m} | {m})
        parts, cumulative, done, total = [], [], 0, 0.0
        for mark in marks:
            s, G = timed(lambda: space.grads(task, model, take(train, torch.arange(done, mark))))
            parts.append(G)
            done, total = mark, total + s
            cumulative.append((done, total))
        G = torch.cat(parts)
    n_q = next(iter(queries.values())).shape[0]
    with peak_rss() as qmem:
        q_probe = timed(lambda: space.grads(task, model, _rows(queries, 2)))[0] / 2
        q_g = int(min(n_q, max(2, budgets.query_grad_s / max(q_probe, 1e-9))))
        q_s, Gq = timed(lambda: space.grads(task, model, _rows(queries, q_g)))
    log(f"    logra: {total / done * 1e3:.2f} ms per training gradient (measured on {done:,}), "
        f"{q_s / q_g * 1e3:.2f} ms per query gradient (on {q_g}); projection {space.proj_dim}")
    return {"proj_dim": space.proj_dim, "chunk_size": space.chunk_size, "grad_per_example_s": total / done,
            "grads_measured": cumulative, "grads_peak_mb": mem.peak_rss_mb, "query_grad_s": q_s / q_g,
            "query_grads": q_g, "query_peak_mb": qmem.peak_rss_mb, "G": G, "Gq": Gq}


def logra_curvature(rates: dict[str, Any], n: int, damping: float = LOGRA_DAMPING,
                    rows_cap: int = LOGRA_ROWS) -> dict[str, Any]:
    """The n-dependent part of logra: Gram matrix + Cholesky factor, and per query the solve and the scores
    against n training gradients (rows beyond the measured ones: copies; the cost depends on shapes only)."""
    from stride_assets.engine.evaluation.methods.base import DampedSolver

    G, Gq = rates["G"], rates["Gq"].double()
    k = G.shape[1]
    rows = min(n, rows_cap)
    kernel = n < k
    with peak_rss() as mem:
        Phi = G[torch.arange(rows) % G.shape[0]].double()
        gram_s, A = timed(lambda: Phi @ Phi.T if kernel else Phi.T @ Phi)
        chol_s, solver = timed(lambda: DampedSolver.fit(A, damping, size=k))
        del A
        if kernel:
            solve_s, _ = timed(lambda: solver.solve(Phi @ Gq.T))
            score_s = 0.0
        else:
            solve_s, X = timed(lambda: solver.solve(Gq.T))
            score_s, _ = timed(lambda: X.T @ Phi.T)
    scale = n / rows
    return {"form": "kernel" if kernel else "primal", "gram_s": gram_s * (1.0 if kernel else scale),
            "cholesky_s": chol_s, "solve_score_per_query_s": (solve_s + score_s * scale) / Gq.shape[0],
            "rows": rows, "side": int(solver.factor.shape[0]), "peak_rss_mb": mem.peak_rss_mb, "n": n}


def logra_at(rates: dict[str, Any], curv: dict[str, Any], n: int, model_bytes: int,
             curvature_from: str | None = None) -> dict[str, Any]:
    measured = dict(rates["grads_measured"])
    grads_s = measured[n] if n in measured else rates["grad_per_example_s"] * n
    m = n if n in measured else rates["grads_measured"][-1][0]
    k = rates["G"].shape[1]
    rows_how = "measured" if curv["rows"] >= n else f"scaled from {curv['rows']:,} of {n:,} rows (linear in n)"
    tail = f"; {curvature_from}" if curvature_from else ""
    stages = {
        "train_grads": _stage(grads_s, _scaled(m, n), rates["grads_peak_mb"]),
        "curvature": _stage(curv["gram_s"] + curv["cholesky_s"],
                            f"{'measured' if curv['rows'] >= n else 'Gram ' + rows_how + ', Cholesky measured'} "
                            f"({curv['form']} form, side {curv['side']:,}){tail}", curv["peak_rss_mb"]),
        "query": _stage(rates["query_grad_s"] + curv["solve_score_per_query_s"],
                        f"scaled from {rates['query_grads']} of {QUERIES:,} queries (gradient, solve, scores"
                        f"{'' if curv['rows'] >= n else '; scores ' + rows_how}){tail}",
                        max(rates["query_peak_mb"], curv["peak_rss_mb"]), "per_query"),
    }
    state = n * k * 4 + curv["side"] ** 2 * 8
    return _method(stages, bank_bytes=int(state),
                   bank_bytes_how="computed: n x k x 4 (projected gradients, float32) + side^2 x 8 (Cholesky factor)",
                   predicted_peak_mb=round((model_bytes + n * k * 12 + curv["side"] ** 2 * 16) / MIB, 1),
                   predicted_peak_how="model + n x k x (4 + 8) (gradients, their float64 copy) + 2 x side^2 x 8",
                   proj_dim=rates["proj_dim"], damping=LOGRA_DAMPING)


# --- EK-FAC (Kronfluence) -------------------------------------------------------------------------


def ekfac_rates(model: torch.nn.Module, cfg: StrideConfig, train: Batch, queries: Batch, size: ModelSize,
                workdir: Path, log: Log) -> dict[str, Any]:
    """Kronfluence on ``model``: the three factor phases on a prefix, then scores against two prefixes."""
    from kronfluence.arguments import FactorArguments

    from stride_assets.engine import ekfac
    from stride_assets.engine.backbone import BatchRows

    ac = cfg.attribution
    head = model.get_output_embeddings()
    include_head = ac.include_head and max(head.in_features, head.out_features) <= ekfac.MAX_FACTOR_SIDE
    with peak_rss() as mem:
        setup_s, infl = timed(lambda: ekfac.Influence(model, ekfac.lm_objective, ac.strategy, include_head,
                                                      ac.batch_size))
    phases: dict[str, Any] = {"setup": {"seconds": setup_s, "peak_rss_mb": mem.peak_rss_mb}}
    m = min(size.ekfac_fit, next(iter(train.values())).shape[0])
    fit_batch = take(train, torch.arange(m))
    factors = workdir / "ekfac_factors"
    with tempfile.TemporaryDirectory(prefix="kronfluence_", dir=workdir) as work, ekfac._quiet():
        analyzer = infl._analyzer(Path(work))
        common = dict(factors_name=ekfac.FACTORS_NAME, factor_args=FactorArguments(strategy=infl.strategy),
                      overwrite_output_dir=True)
        data = dict(dataset=BatchRows(fit_batch), per_device_batch_size=infl.batch_size)
        for name, call in (("covariance", lambda: analyzer.fit_covariance_matrices(**data, **common)),
                           ("eigendecomposition", lambda: analyzer.perform_eigendecomposition(**common)),
                           ("lambda", lambda: analyzer.fit_lambda_matrices(**data, **common))):
            with peak_rss() as mem:
                s, _ = timed(call)
            phases[name] = {"seconds": s, "peak_rss_mb": mem.peak_rss_mb}
            log(f"    kronfluence_ekfac: {name} {s:.2f}s" + ("" if name == "eigendecomposition" else f" on {m:,}"))
        shutil.rmtree(factors, ignore_errors=True)
        shutil.move(str(ekfac._factors_in(Path(work))), str(factors))
    factor_bytes = sum(f.stat().st_size for f in factors.rglob("*") if f.is_file())
    q = size.ekfac_queries
    pool = next(iter(train.values())).shape[0]
    (m1, m2), half = (min(m, pool) for m in size.ekfac_train), max(1, q // 2)
    points = []
    with peak_rss() as mem:
        for q_i, m_i in ((q, m1), (q, m2), (half, m1)):
            s, _ = timed(lambda: infl.scores(_rows(queries, q_i), take(train, torch.arange(m_i)), factors,
                                             ac.damping))
            points.append((q_i, m_i, s))
    # t = f + c_q q + c_t m: f once per scoring call (loading the factors), c_q per query (its preconditioned
    # gradient), c_t per training example per pass (its gradient against the batch's queries)
    X = np.array([[1.0, qi, mi] for qi, mi, _ in points])
    f, c_q, c_t = np.linalg.lstsq(X, np.array([t for *_, t in points]), rcond=None)[0]
    c_t = max(float(c_t), 0.0)
    c_q = max(float(c_q), 0.0)
    f = max(float(f), 0.0)
    log("    kronfluence_ekfac: scores " + ", ".join(f"{qi} queries x {mi} examples {t:.2f}s" for qi, mi, t in points)
        + f": {f:.2f}s per call + {c_q:.3f}s per query + {c_t * 1e3:.2f} ms per training example per pass")
    shutil.rmtree(factors, ignore_errors=True)
    del infl
    return {"include_head": include_head, "fit_examples": m, "phases": phases, "factor_bytes": factor_bytes,
            "score_points": points, "score_queries": q, "score_call_s": f, "score_per_query_s": c_q,
            "score_per_train_example_s": c_t,
            "query_batch": ekfac.Influence.query_batch_size, "scores_peak_mb": mem.peak_rss_mb,
            "strategy": ac.strategy, "damping": ac.damping, "batch_size": ac.batch_size}


def ekfac_at(rates: dict[str, Any], n: int, cfg: StrideConfig, shapes: Any) -> dict[str, Any]:
    from stride_assets.engine import budget

    ph, m = rates["phases"], rates["fit_examples"]
    per_pass = {k: ph[k]["seconds"] / m for k in ("covariance", "lambda")}
    qb, q = rates["query_batch"], rates["score_queries"]
    per_query = (rates["score_call_s"] / QUERIES + rates["score_per_query_s"]
                 + rates["score_per_train_example_s"] * n / qb)
    (_, m1, _), (_, m2, t2) = rates["score_points"][:2]
    exact = q == qb and m2 == n
    stages = {
        "setup": _stage(ph["setup"]["seconds"], "measured (a linearized copy of the model)",
                        ph["setup"]["peak_rss_mb"]),
        "covariance": _stage(per_pass["covariance"] * n, _scaled(m, n), ph["covariance"]["peak_rss_mb"]),
        "eigendecomposition": _stage(ph["eigendecomposition"]["seconds"], "measured",
                                     ph["eigendecomposition"]["peak_rss_mb"]),
        "lambda": _stage(per_pass["lambda"] * n, _scaled(m, n), ph["lambda"]["peak_rss_mb"]),
        "scores": _stage(t2 / q if exact else per_query,
                         f"scaled from {q} of {QUERIES:,} queries (one pass of {qb} queries over the training set)"
                         if exact else
                         "scaled: scores timed at (queries, training examples) = "
                         f"{[(a, b) for a, b, _ in rates['score_points']]}, t = f + c_q q + c_t m fitted; per query "
                         f"f / {QUERIES:,} + c_q + c_t x n / {qb} ({qb} queries "
                         "share a pass over the n training examples)",
                         rates["scores_peak_mb"], "per_query"),
    }
    ecfg = cfg.with_(attribution={"method": "ekfac", "include_head": rates["include_head"]})
    est = budget.estimate(ecfg, shapes, {"all": n}, {"default": QUERIES})
    return _method(stages, bank_bytes=int(rates["factor_bytes"]), bank_bytes_how="measured: the factors folder",
                   bank_bytes_predicted=int(est.disk("influence_factors")),
                   predicted_peak_mb={s: round(est.memory(s) / MIB, 1) for s in ("influence_factors",
                                                                                  "influence_scores")},
                   include_head=rates["include_head"], strategy=rates["strategy"],
                   note=None if rates["include_head"] else
                   f"include_head=False: the output head ({shapes.vocab:,} tokens) is over ekfac.MAX_FACTOR_SIDE")


# --- the run --------------------------------------------------------------------------------------


def stride_configs(profile: str = "default") -> dict[str, StrideConfig]:
    """The profile's STRIDE (its operator form as configured), the dense logit form beside it, and, when the
    profile's operators keep every output, the logit form on ``COLUMNS`` member tokens (``operators.columns``)."""
    cfg = load_config(profile)
    out = {"stride": cfg, "stride_logit_dense": cfg.with_(operators={"form": "logit", "columns": None})}
    if cfg.operators.columns is None:
        out["stride_logit_columns"] = cfg.with_(operators={"form": "logit", "columns": COLUMNS})
    return out


def _ratios(entry: dict[str, Any], form: str) -> dict[str, float] | None:
    """STRIDE form's end-to-end seconds over each baseline's (None: the form was refused at this size)."""
    if form not in entry or "refused" in entry[form]:
        return None
    return {b: entry[form]["end_to_end_s"] / entry[b]["end_to_end_s"] for b in BASELINES if b in entry}


def _slope(sizes: list[dict[str, Any]], name: str, method: str) -> float | None:
    rows = [s for s in sizes
            if s["model"] == name and not s.get("extrapolated") and "end_to_end_s" in s.get(method, {})]
    if len(rows) < 2:
        return None
    x = np.log([s["n"] for s in rows])
    y = np.log([s[method]["end_to_end_s"] for s in rows])
    return float(np.polyfit(x, y, 1)[0])


def _strip(rates: dict[str, Any]) -> dict[str, Any]:
    """Rates as the report keeps them (no tensors)."""
    return {k: v for k, v in rates.items() if k not in ("Y", "G", "Gq")}


def run(out: Path, quick: bool = False, log: Log = print, ladder: tuple[ModelSize, ...] | None = None,
        budgets: Budgets | None = None, profile: str = "default") -> dict[str, Any]:
    """Measure the ladder into ``out``/report.json (written atomically) and return the report."""
    from stride_assets.engine.artifacts import write_json
    from stride_assets.engine.budget import ModelShapes
    from stride_assets.engine.store import BenchFolder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ladder = ladder or (QUICK_LADDER if quick else FULL_LADDER)
    budgets = budgets or (QUICK_BUDGETS if quick else Budgets())
    started, started_cpu = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    configs = stride_configs(profile)
    cfg = configs["stride"]
    n_max = max(n for size in ladder for n in size.ns)
    texts, source = python_passages(QUERIES + n_max, cfg.corpus.chunk_chars, cfg.corpus.min_chars)
    query_texts, train_texts = texts[:QUERIES], texts[QUERIES:]
    log(f"[scale] {len(train_texts):,} training passages + {QUERIES:,} queries: {source}")
    forms = dict(configs)
    if configs["stride"].operators == configs["stride_logit_dense"].operators:
        forms.pop("stride_logit_dense")  # the same operators: measured once, reported under both names
    sizes: list[dict[str, Any]] = []
    rates_of: dict[str, dict[str, Any]] = {}
    n_parts: dict[tuple[str, int], dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix=".scale-work-", dir=out))
    try:
        for size in ladder:
            log(f"[scale] {size.name}: building")
            model, tokenizer, info = build_model(size, cfg, train_texts, workdir, budgets, log)
            log(f"[scale] {size.name}: {info['params']:,} parameters, vocab {info['vocab']:,}, "
                f"{info['n_layer']} layers x {info['n_embd']}")
            max_length = cfg.model.max_length
            pool = min(budgets.pool, len(train_texts))
            train = _encode(tokenizer, train_texts[:max(pool, cfg.corpus.shard_size)], max_length)
            queries = _encode(tokenizer, query_texts, max_length)
            shapes = ModelShapes.from_hf_config(model.config, "float32")
            model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            size_cfgs = {form: fcfg.with_(model={"path": str(workdir / size.name)}) if size.architecture else fcfg
                         for form, fcfg in configs.items()}
            rates: dict[str, Any] = {}
            for form in forms:
                try:
                    rates[form] = stride_rates(form, size_cfgs[form], model, train, queries, budgets, log)
                except StrideConfigError as exc:  # the engine refuses this form on this model: say so
                    rates[form] = {"refused": str(exc)}
                    log(f"    {form}: refused by the engine: {exc}")
            rates["logra"] = logra_rates(model, train, queries, size.ns, budgets, log)
            rates["kronfluence_ekfac"] = ekfac_rates(model, cfg, train, queries, size, workdir, log)
            for n in size.ns:
                entry: dict[str, Any] = {"model": size.name, "params": info["params"], "vocab": info["vocab"],
                                         "n": n, "n_layer": info["n_layer"], "n_embd": info["n_embd"],
                                         "queries": QUERIES, "extrapolated": False}
                parts = n_parts.setdefault((size.name, n), {})
                for form in configs:
                    src = form if form in rates else "stride"
                    if "refused" in rates[src]:
                        entry[form] = {"refused": rates[src]["refused"]}
                        continue
                    if src not in parts:
                        parts[src] = stride_recovery(rates[src], n, size_cfgs[src], budgets)
                    entry[form] = stride_at(rates[src], parts[src], n, size_cfgs[form], shapes)
                    if src != form:
                        entry[form]["same_as"] = "stride (the profile's operators are the dense logit form)"
                curv = logra_curvature(rates["logra"], n)
                parts["logra"] = curv
                entry["logra"] = logra_at(rates["logra"], curv, n, model_bytes)
                entry["kronfluence_ekfac"] = ekfac_at(rates["kronfluence_ekfac"], n, cfg, shapes)
                entry["ratio_end_to_end"] = _ratios(entry, "stride")
                entry |= {f"ratio_end_to_end_{form.removeprefix('stride_')}": _ratios(entry, form)
                          for form in configs if form != "stride"}
                sizes.append(entry)
                log(f"[scale] {size.name} n={n:,}: " + ", ".join(
                    f"{k} {entry[k]['one_time_s']:.1f}s + {entry[k]['per_query_s'] * 1e3:.1f} ms/q"
                    if "refused" not in entry[k] else f"{k} refused" for k in (*configs, *BASELINES)))
            rates_of[size.name] = {"info": info, "shapes": shapes, "model_bytes": model_bytes, "rates": rates}
            del model, train, queries
            shutil.rmtree(workdir / size.name, ignore_errors=True)
            trim_memory()
        sizes += _extrapolated(rates_of, n_parts, configs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        torch.set_num_threads(threads)
    default = ladder[0].name
    report = {
        "what": "seconds (CPU, one thread) and peak memory per stage of STRIDE (the default profile) and the "
                "gradient baselines, over model sizes and training-set sizes; ratio_end_to_end = STRIDE's "
                f"(one_time + {QUERIES:,} x per_query) / the baseline's (< 1: STRIDE is cheaper)",
        "sizes": sizes,
        "n_slope": _slope(sizes, default, "stride"),
        "n_slopes": {m: _slope(sizes, default, m) for m in (*configs, *BASELINES)},
        "n_slope_how": f"least-squares slope of log(one_time + {QUERIES:,} x per_query) against log n at the "
                       f"{default!r} size",
        "quick": quick,
        "text": {"source": source, "train_passages": len(train_texts), "queries": QUERIES, "synthetic": False},
        "settings": {
            "profile": profile,
            "stride": cfg.model_dump(include={"corpus", "design", "operators", "training", "measure", "recovery"}),
            "stride_logit_dense": {"operators": configs["stride_logit_dense"].operators.model_dump()},
            "logra": {"damping": LOGRA_DAMPING, "proj_dim": "auto", "rows_cap": LOGRA_ROWS},
            "kronfluence_ekfac": cfg.attribution.model_dump(include={"strategy", "damping", "batch_size",
                                                                      "include_head"}),
            "budgets": budgets.__dict__, "ladder": [s.__dict__ for s in ladder],
            "lasso_n_jobs": 1,
        },
        "rates": {name: {"model": {k: v for k, v in r["info"].items()},
                         **{m: _strip(x) for m, x in r["rates"].items()}} for name, r in rates_of.items()},
        "measured_vs_scaled": __doc__.split("What is measured on part of the work")[1].split("    OMP_")[0].strip(),
        "notes": [
            "Models beyond the default have random weights (engine/architectures.py): their cost, not their quality.",
            "STRIDE's Lasso runs one job (recovery.n_jobs: 1) so that seconds are one core's.",
            "peak_rss_mb is the process's resident set during a stage's measured work (prefixes where scaled); "
            "predicted_peak_mb is engine/budget.py's estimate for the full run.",
        ],
        "clock": "cpu" if CLOCK is time.process_time else "wall",
        "machine": {"threads": 1, "torch": torch.__version__, "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "total_seconds": time.perf_counter() - started,
        "total_cpu_seconds": time.process_time() - started_cpu,
    }
    write_json(report, BenchFolder(out).file("report"))
    return report


def _extrapolated(rates_of: dict[str, dict[str, Any]], n_parts: dict[tuple[str, int], dict[str, Any]],
                  configs: dict[str, StrideConfig]) -> list[dict[str, Any]]:
    """The ``EXTRAPOLATE`` row: that model's measured rates at an n measured only at the default size, whose
    n-dependent parts (the Lasso, logra's Gram matrix and scores: the same shapes) it takes."""
    name, n = EXTRAPOLATE
    donor = next((key for key in n_parts if key[1] == n and key[0] != name), None)
    if name not in rates_of or donor is None or (name, n) in n_parts:
        return []
    r = rates_of[name]
    rates, shapes, parts = r["rates"], r["shapes"], n_parts[donor]
    note = f"taken from the {donor[0]!r} size at n={n:,} (the same K_all x n / n x k problem)"
    entry: dict[str, Any] = {"model": name, "params": r["info"]["params"], "vocab": r["info"]["vocab"], "n": n,
                             "n_layer": r["info"]["n_layer"], "n_embd": r["info"]["n_embd"], "queries": QUERIES,
                             "extrapolated": True,
                             "how": f"EXTRAPOLATED: {name}'s rates measured at n=1,000 (per example, per shard, per "
                                    f"step, per query) x the counts at n={n:,}; n-dependent parts {note}"}
    for form, fcfg in configs.items():
        src = form if form in rates else "stride"
        if "refused" in rates[src]:
            entry[form] = {"refused": rates[src]["refused"]}
        elif src in parts:
            entry[form] = stride_at(rates[src], parts[src], n, fcfg, shapes, recovery_from=note)
    entry["logra"] = logra_at(rates["logra"], parts["logra"], n, r["model_bytes"], curvature_from=note)
    entry["kronfluence_ekfac"] = ekfac_at(rates["kronfluence_ekfac"], n, configs["stride"], shapes)
    for method in (*configs, *BASELINES):
        if method in entry and "refused" not in entry[method]:
            entry[method]["how"] = "extrapolated"
    entry["ratio_end_to_end"] = _ratios(entry, "stride")
    entry |= {f"ratio_end_to_end_{form.removeprefix('stride_')}": _ratios(entry, form)
              for form in configs if form != "stride"}
    return [entry]


# --- what the CLI shows ---------------------------------------------------------------------------


def _mb(b: float) -> str:
    return f"{b / MIB:,.1f}"


def _ratio_text(size: dict[str, Any], baseline: str) -> str:
    """Each STRIDE form's end-to-end ratio to ``baseline`` at this size."""
    parts = []
    for key, value in size.items():
        if key.startswith("ratio_end_to_end") and value and baseline in value:
            form = key.removeprefix("ratio_end_to_end").lstrip("_") or "stride"
            parts.append(f"{value[baseline]:.3g} ({form})")
    return ", ".join(parts)


def table(report: dict[str, Any]) -> str:
    """One line per size and method: one-time / per-query seconds, peak, state; on a baseline's line, each
    STRIDE form's end-to-end seconds over the baseline's."""
    lines = [f"| model | params | vocab | n | method | one-time s | per-query ms | peak MB | state MB | "
             f"@{QUERIES:,} q s | STRIDE / baseline |", "|" + "---|" * 11]
    for s in report["sizes"]:
        tag = (f"| {s['model']}{' (extrapolated)' if s.get('extrapolated') else ''} | {s['params'] / 1e6:,.1f}M | "
               f"{s['vocab']:,} | {s['n']:,}")
        for m in (*STRIDE_FORMS, *BASELINES):
            c = s.get(m)
            if c is None:
                continue
            if "refused" in c:
                lines.append(f"{tag} | {m} | refused by the engine | | | | | |")
                continue
            lines.append(f"{tag} | {m} | {c['one_time_s']:,.1f} | {c['per_query_s'] * 1e3:,.2f} | "
                         f"{c['peak_rss_mb']:,.0f} | {_mb(c['bank_bytes'])} | {c['end_to_end_s']:,.0f} | "
                         f"{_ratio_text(s, m) if m in BASELINES else ''} |")
    slopes = ", ".join(f"{k} {v:.2f}" for k, v in report["n_slopes"].items() if v is not None)
    lines += ["", f"n_slope (STRIDE): {report['n_slope']:.3f}  ({slopes})" if report["n_slope"] is not None
              else "n_slope: fewer than two n"]
    return "\n".join(lines)


def tracked_run(report: dict[str, Any], out: Path) -> "TrackedRun":
    """What to log: per size and method the seconds, the ratios, n_slope; report.json as a file."""
    from stride_assets.engine.evaluation.report import TrackedRun
    from stride_assets.engine.store import BenchFolder

    metrics: dict[str, Any] = {"n_slope": report["n_slope"]}
    for s in report["sizes"]:
        key = f"{s['model']}.n{s['n']}"
        for m in (*STRIDE_FORMS, *BASELINES):
            if "one_time_s" in s.get(m, {}):
                metrics[f"{key}.{m}.one_time_s"] = s[m]["one_time_s"]
                metrics[f"{key}.{m}.per_query_s"] = s[m]["per_query_s"]
        metrics |= {f"{key}.ratio.{b}": v for b, v in (s["ratio_end_to_end"] or {}).items()}
    return TrackedRun("bench scale", {"stride_bench": "scale"}, {"quick": report["quick"]},
                      {k: v for k, v in metrics.items() if v is not None}, files=[BenchFolder(out).file("report")])
