"""Configuration of a STRIDE run: one validated, serialisable object per stage.

Profiles live as YAML under ``resources/profiles/``; ``load_config`` reads one and
applies overrides. Every random choice takes its seed from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stride_assets.engine.errors import StrideConfigError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "resources" / "profiles"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FormatFields(_Strict):
    """How a row becomes a scored text (``engine/formats.py``): plain ``text`` (every token scored), a
    ``prompt_completion`` pair (the completion's tokens scored) or a chat ``messages`` list (the last
    assistant message scored; rendered with the tokenizer's chat template where it has one)."""

    format: Literal["text", "prompt_completion", "messages"] = "text"
    prompt_column: str = Field("prompt", description="prompt_completion: the unscored prompt")
    completion_column: str = Field("completion", description="prompt_completion: the scored completion")
    messages_column: str = Field("messages", description="messages: a list of {role, content}")


class CorpusConfig(FormatFields):
    """Where the training examples come from and how they are cut into passages."""

    source: Literal["pydoc", "files", "hf"] = "pydoc"
    paths: list[str] = Field(default_factory=list, description="parquet/jsonl/json/csv/txt files (source=files)")
    hf_name: str | None = Field(None, description="datasets.load_dataset name or path (source=hf)")
    hf_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    id_column: str | None = Field(None, description="stable example ids; default: derived from content")
    chunk_chars: int = Field(400, ge=32, description="pack paragraphs into passages of about this many characters")
    chunk_tokens: int | None = Field(
        None, ge=2, description="cut each document (a table row, a text file, a pydoc topic) into windows of this "
        "many tokens, each one example mapped to its document (engine/token_windows.py); None: passages as above, "
        "each read up to model.max_length tokens")
    chunk_overlap: int = Field(0, ge=0, description="tokens shared by neighbouring windows (< chunk_tokens)")
    min_chars: int = Field(32, ge=1, description="drop passages shorter than this")
    max_examples: int | None = Field(None, ge=1)
    holdout_fraction: float = Field(0.08, ge=0.0, lt=0.9, description="passages held out as query candidates")
    shard_size: int = Field(
        512, ge=2, description="passages per shard for sources without shards of their own (pydoc, hf); "
        "with source 'files' every file is a shard (a directory in paths: each of its files)")
    seed: int = 0

    @model_validator(mode="after")
    def _check_windows(self) -> "CorpusConfig":
        if self.chunk_tokens is not None and not self.chunk_overlap < self.chunk_tokens:
            raise ValueError(f"corpus.chunk_overlap={self.chunk_overlap} must be smaller than "
                             f"corpus.chunk_tokens={self.chunk_tokens} (neighbouring windows would not advance)")
        if self.chunk_tokens is not None and getattr(self, "format", "text") != "text":
            raise ValueError(f"corpus.chunk_tokens cuts plain-text documents into windows; corpus.format="
                             f"{self.format!r} rows keep their prompt/completion structure: unset chunk_tokens")
        return self

    @model_validator(mode="after")
    def _check_format(self) -> "CorpusConfig":
        if self.chunk_tokens is not None and self.format != "text":
            raise ValueError(f"corpus.chunk_tokens cuts plain text into windows; corpus.format {self.format!r} rows "
                             "are examples of their own (unset chunk_tokens)")
        return self


class QueryConfig(FormatFields):
    """The query set: held-out passages, fixed prompts, and optionally a user file (read in ``format``).

    A prompt is a string (every token scored), a ``{prompt, completion}`` or a ``{messages}`` mapping."""

    n_holdout: int = Field(100, ge=0, description="held-out passages used as queries")
    prompts: list[str | dict[str, Any]] = Field(
        default_factory=lambda: [
            "The with statement is used to wrap the execution of a block with methods defined by a context manager.",
            "A lambda expression yields an anonymous function object.",
            "Exceptions are raised by the raise statement and handled by the try statement.",
        ]
    )
    path: str | None = Field(None, description="optional parquet/jsonl of extra queries (text column as corpus)")
    batch_dir: str | None = Field(
        None, description="folder of parquet/jsonl query files: each file is one more query batch (named by its stem)")
    seed: int = 0


class TinyModelConfig(_Strict):
    """A small GPT-2 trained from scratch: architecture and training recipe, ``seed`` its initialisation.

    The default base model of the pipeline, and the recipe of the harness's LM tasks
    (``evaluation.lm_task``, which passes ``max_length`` beside it, as ``ModelConfig`` does).
    """

    vocab_size: int = Field(2048, ge=256)
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=16)
    n_head: int = Field(4, ge=1)
    steps: int = Field(600, ge=1)
    epochs: float | None = Field(
        None, gt=0, description="if set, training on n examples takes ceil(epochs * n / batch_size) steps instead "
        "of `steps`, so a model on a subset sees it as often as one on all the data sees all of it")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0

    def steps_for(self, n_examples: int) -> int:
        """Optimizer steps when training on ``n_examples`` examples: ``steps``, or from ``epochs`` when set."""
        import math

        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


class ModelConfig(_Strict):
    """The frozen base model: a transformers path/hub id, or the tiny default."""

    path: str | None = Field(None, description="local dir or hub id; None trains the tiny default")
    tokenizer_path: str | None = Field(None, description="defaults to `path`")
    trust_remote_code: bool = False
    max_length: int = Field(64, ge=4, description="tokens per example (longer passages are truncated)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)


class DesignConfig(_Strict):
    """Subset design: K subsets per ``corpus.shard_size`` examples (scaled to each shard's size),
    every example in exactly d of them."""

    K: int = Field(256, ge=2)
    d: int = Field(8, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_d(self) -> "DesignConfig":
        if not self.d < self.K:
            raise ValueError(f"each example must sit in d subsets with 1 <= d < K; got d={self.d}, K={self.K} "
                             "(d = K would put every example in every subset and measure nothing)")
        return self


def default_layer_index(n_layer: int) -> int:
    """The activation form's layer when ``operators.layer`` is None: about 2/3 of depth (paper: layer 8 of 12),
    at least 1 so some frozen layers lie below."""
    return min(max(1, round(2 * n_layer / 3)), n_layer - 1) if n_layer > 1 else 0


class OperatorConfig(_Strict):
    """Steering operators: shared basis B (rank r) plus one r x C matrix per subset."""

    form: Literal["head", "logit", "activation", "pre_activation", "full"] = Field(
        "activation", description="head (the output head's input: r x d_model per operator), logit (the logits: "
        "r x vocabulary per operator) or activation (residual stream at `layer`); pre_activation (the first "
        "layer) and full (both layers) of the benchmarks' MLP classifiers, not for language models"
    )
    layer: int | None = Field(None, description="decoder layer whose input is steered; None = round(2/3 depth)")
    rank: int = Field(16, ge=1)
    basis: Literal["linear", "mlp"] = "linear"
    mlp_hidden: int = Field(64, ge=1)
    init_scale: float = Field(1e-3, ge=0, description="std of the initial per-subset matrices")
    columns: int | None = Field(
        None, ge=1, description="logit form: each operator shifts only the `columns` tokens its members predict "
        "most (K x r x columns instead of K x r x vocabulary); None = every token")
    output_rank: int | None = Field(
        None, ge=1, description="factored form: operator k shifts by B(h) A_k U with A_k r x output_rank and one "
        "shared, learned output basis U (output_rank x C); None = A_k is r x C")
    background: bool = Field(False, description="with columns: one shared r x C matrix weighted per operator "
                             "(r weights each) for the outputs an operator does not keep")


class TrainConfig(_Strict):
    """Operator training: fidelity on members, stability on non-members, optional linearity."""

    steps: int = Field(1000, ge=0)
    epochs: float | None = Field(
        None, gt=0, description="if set, each shard trains ceil(epochs * n_shard * d / batch_size) steps instead "
        "of `steps`, so the cost of a shard follows its size")
    batch_size: int = Field(32, ge=1, description="member pairs (and as many non-member pairs) per step")
    stability_batch_size: int | None = Field(
        None, ge=1, description="non-member pairs per step for the stability term, if not batch_size")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "lazy_adam"] = Field(
        "adamw", description="lazy_adam: Adam that moves only the operators used in a step (cheaper per step)")
    fidelity_weight: float = Field(1.0, ge=0)
    stability_weight: float = Field(1.0, ge=0)
    linearity_weight: float = Field(0.0, ge=0)
    damping_weight: float = Field(0.0, ge=0, description="w_d of an L2 penalty on the weight change of the member "
                                  "pairs' operators (||W^T A_k||^2), the analogue of an influence function's damping")
    linearity_sketch: int = Field(64, ge=1, description="q, columns of the JL sketch M R")
    linearity_ridge: float = Field(1.0, gt=0, description="gamma in the sketched projection")
    linearity_batch: int = Field(8, ge=1, description="examples whose K-vector of responses is penalised")
    log_every: int = Field(25, ge=1)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps")

    @property
    def non_member_pairs(self) -> int:
        """Non-member pairs per step for the stability term (0 when it is off)."""
        return (self.stability_batch_size or self.batch_size) if self.stability_weight > 0 else 0


class MeasureConfig(_Strict):
    """The queries x K response (perturbation) matrix."""

    mode: Literal["first_order", "exact"] = "first_order"
    operator_chunk: int = Field(64, ge=1, description="operators applied at once (exact mode)")
    query_batch: int = Field(16, ge=1)
    device: str = "auto"


class RecoveryConfig(_Strict):
    """Per-query Lasso of the responses against the membership matrix."""

    solver: Literal["sklearn", "fista", "ridge"] = Field(
        "sklearn", description="Lasso by coordinate descent (sklearn) or batched FISTA; ridge: an L2 penalty instead")
    lambda_ratio: float | Literal["auto"] = Field(
        0.2, description="lambda as a fraction of each query's lambda_max, or 'auto' (held-out subsets)"
    )
    lambda_grid: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5, 0.7])
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9, description="subsets held out to choose lambda (auto)")
    fit_intercept: bool = True
    per_shard: bool = Field(
        True, description="a block-diagonal (sharded) design is solved shard by shard, each shard's subsets with "
        "their own intercept (cost linear in the shards); false: one joint Lasso with one intercept")
    max_iter: int = Field(2000, ge=1)
    tol: float = Field(1e-6, gt=0)
    n_jobs: int = Field(-1, description="parallel queries (joblib); -1 = all cores")
    top_k: int = Field(100, ge=1, description="examples kept per query in the top-k table")
    seed: int = 0

    @model_validator(mode="after")
    def _check_ratio(self) -> "RecoveryConfig":
        if self.lambda_ratio != "auto" and not 0 < float(self.lambda_ratio) < 1:
            raise ValueError("lambda_ratio must be in (0, 1) or 'auto'")
        return self


class CurationConfig(_Strict):
    """How the curated dataset is derived from the influence scores."""

    top_k_per_query: int = Field(20, ge=1, description="keep each query's top-k positive examples")
    min_score: float = Field(0.0, description="a kept example's score must exceed this")
    exclude_negative_z: float = Field(
        3.0, gt=0, description="drop examples whose summed score is below median - z * robust std of the sums"
    )
    min_negative_queries: int = Field(2, ge=1, description="... and that hurt at least this many queries")


class SelectionConfig(_Strict):
    """Data selection: the candidates with the most influence on the target queries."""

    fraction: float = Field(0.5, gt=0, le=1, description="share of the training examples to keep")
    task_column: str = Field("kind", description="query column whose values are tasks taking turns (round-robin)")


class ContaminationConfig(_Strict):
    """Contamination audit: influential examples that share text with a query."""

    k: int = Field(10, ge=1, description="look at each query's k most influential examples")
    min_overlap: float = Field(0.3, gt=0, le=1, description="share of the query's word n-grams found in the example")
    ngram: int = Field(5, ge=1)


class AttributionConfig(_Strict):
    """Which method turns the base model and corpus into influence scores.

    ``stride`` (subset design -> operators -> perturbation matrix -> sparse recovery), ``ekfac``
    (Kronfluence's influence function: factors fitted once on the training corpus, every query batch
    scored against them) or ``ensemble`` (both, each query's scores standardised and blended).
    """

    method: Literal["stride", "ekfac", "ensemble"] = "stride"
    strategy: Literal["ekfac", "kfac", "diagonal"] = Field("ekfac", description="Kronfluence's curvature")
    damping: float | None = Field(None, gt=0, description="None: Kronfluence's heuristic, 0.1 x mean eigenvalue")
    include_head: bool = Field(True, description="track the output head too (GPT-2: the tied lm_head)")
    batch_size: int = Field(32, ge=1, description="training examples per Kronfluence batch")
    ensemble_weight: float = Field(0.5, ge=0, le=1, description="weight of EK-FAC in the ensemble (STRIDE: 1 - it)")
    seed: int = Field(0, description="seeds the targets Kronfluence samples from the model for its Fisher")
    device: str = "auto"


class ReportConfig(_Strict):
    """The HTML attribution report of each query batch."""

    shown_per_side: int = Field(10, ge=1, description="most helpful and most harmful examples shown per query")
    token_queries: int = Field(
        20, ge=0, description="queries whose shown examples get per-token scores, the user's prompts first (one "
        "measurement of those queries with the stored operators or factors); 0: none")


class BudgetConfig(_Strict):
    """What the preflight lets a run use (``engine/budget.py`` predicts each stage's memory and disk
    from the config and the model's shapes, prints it, and refuses a run over budget)."""

    memory_gb: float | None = Field(
        None, gt=0, description="peak memory of any one stage, GB; None: 80% of this machine's RAM (or of its "
        "cgroup limit)")
    disk_gb: float | None = Field(
        None, gt=0, description="disk of all the run's artifacts, GB; None: free space on the store's filesystem")
    enforce: bool = Field(True, description="false: print the estimate, never refuse")


class StrideConfig(_Strict):
    """Everything one attribution run needs."""

    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    queries: QueryConfig = Field(default_factory=QueryConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    design: DesignConfig = Field(default_factory=DesignConfig)
    operators: OperatorConfig = Field(default_factory=OperatorConfig)
    training: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @model_validator(mode="after")
    def _check_window_length(self) -> "StrideConfig":
        if self.corpus.chunk_tokens is not None and self.corpus.chunk_tokens > self.model.max_length:
            raise ValueError(f"corpus.chunk_tokens={self.corpus.chunk_tokens} exceeds model.max_length="
                             f"{self.model.max_length}: every window would be truncated")
        return self

    def with_(self, **sections: dict[str, Any]) -> "StrideConfig":
        """A copy with some fields of some sections replaced, e.g. ``with_(design={"K": 128})``."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name].update(values)
        return StrideConfig.model_validate(data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_path(profile: str) -> Path:
    """A profile name (resources/profiles/NAME.yaml) or a path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in {".yaml", ".yml"}:
        path = candidate
    else:
        path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise StrideConfigError(f"unknown profile {profile!r}: no file {path} (known profiles: {known})")
    return path


# Profile sections that belong to the quality harness, not to the pipeline (engine/evaluation/config.py).
HARNESS_SECTIONS = ("evaluation",)


@dataclass(frozen=True)
class Profile:
    """A profile as loaded once: the pipeline's config and the harness's sections as written."""

    name: str
    config: StrideConfig
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pipeline(self) -> StrideConfig:
        """The config the pipeline's stages take (a spec's default ``configure``)."""
        return self.config


def load_profile(profile: str = "default", overrides: dict[str, Any] | None = None) -> Profile:
    """Read a profile and apply nested overrides, e.g. ``{"design": {"K": 128}}``."""
    path = profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StrideConfigError(f"profile {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise StrideConfigError(f"profile {path} must be a mapping of sections (corpus:, model:, ...), "
                                f"not a {type(raw).__name__}")
    merged = _deep_merge(raw, overrides or {})
    sections = {name: merged.pop(name) or {} for name in HARNESS_SECTIONS if name in merged}
    try:
        return Profile(profile, StrideConfig.model_validate(merged), sections)
    except ValueError as exc:
        raise StrideConfigError(f"invalid stride config (profile {profile!r}): {exc}") from exc


def load_config(profile: str = "default", overrides: dict[str, Any] | None = None) -> StrideConfig:
    """The pipeline's config of a profile (see ``load_profile``)."""
    return load_profile(profile, overrides).config


def resolve_device(name: str) -> str:
    """'auto' picks cuda when present, else cpu."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
