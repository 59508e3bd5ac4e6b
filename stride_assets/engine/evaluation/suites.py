"""Named benchmarks: a task, the methods to compare on it, and the protocol (full or quick).

    digits-mlp            scikit-learn's load_digits, MLP classifier, STRIDE in logit form and on the hidden layer
    pydoc-gpt             the embedded Python docs, a small GPT-2 trained here, STRIDE in activation (and logit) form
    PATH --label COL      any tabular parquet/csv: numeric features + label column, MLP
    PATH --text COL       any text parquet/jsonl: a small GPT-2 trained on it
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.bench import MethodSpec, Protocol
from stride_assets.engine.evaluation.stride_method import StrideSettings
from stride_assets.engine.evaluation.task import Task

LAMBDA_GRID = [{"lambda_ratio": r} for r in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)]
DAMPING_GRID = [{"damping": d} for d in (1e-3, 1e-2, 1e-1, 1.0)]


@dataclass
class Suite:
    task: Task
    specs: list[MethodSpec]
    protocol: Protocol


def baseline_specs(task: Task, model_probe=None) -> list[MethodSpec]:
    """Every applicable baseline, with the settings it may choose on validation."""
    from stride_assets.engine.evaluation.methods import applicable

    grids = {"logra": DAMPING_GRID, "if_exact": DAMPING_GRID,
             "tfidf": [{"on": "words"}, {"on": "token_ids"}] if hasattr(task, "token_ids") else [{"on": "words"}]}
    return [MethodSpec(name, "baseline", grid=grids.get(name, [{}])) for name in applicable(task, model_probe)]


def classifier_stride(quick: bool) -> dict[str, StrideSettings]:
    """STRIDE on an MLP classifier: logit form, and the hidden-layer (activation) form.

    K, d and rank were chosen on the digits validation draw (benchmarks/ablation_digits.json):
    rank 16 -> 64 raised validation LDS 0.48 -> 0.53, K 512/d 16 -> K 1024/d 32 to 0.56.
    """
    base = StrideSettings().with_(
        design={"K": 256 if quick else 1024, "d": 16 if quick else 32},
        operators={"form": "logit", "rank": 64},
        training={"steps": 100 if quick else 250, "batch_size": 2048, "lr": 1e-2, "stability_weight": 1.0},
        recovery={"n_jobs": -1},
    )
    return {"stride_logit": base, "stride_hidden": base.with_(operators={"form": "activation"})}


def lm_stride(quick: bool) -> dict[str, StrideSettings]:
    """STRIDE on a small GPT-2: activation form at the default layer, and the logit form."""
    base = StrideSettings().with_(
        design={"K": 64 if quick else 256, "d": 4 if quick else 8},
        operators={"form": "activation", "rank": 16},
        training={"steps": 100 if quick else 1000, "batch_size": 32},
        recovery={"n_jobs": -1},
    )
    return {"stride": base, "stride_logit": base.with_(operators={"form": "logit"})}


def _specs(task: Task, stride: dict[str, StrideSettings], stride_seeds: int) -> list[MethodSpec]:
    """STRIDE variants (one per seed when stride_seeds > 1: name_s0, name_s1, ...) and the baselines."""
    strides = []
    for name, settings in stride.items():
        for seed in range(stride_seeds):
            seeded = settings.with_(design={"seed": seed}, training={"seed": seed}) if seed else settings
            strides.append(MethodSpec(f"{name}_s{seed}" if stride_seeds > 1 else name, "stride", grid=LAMBDA_GRID,
                                      stride=seeded))
    return strides + baseline_specs(task)


QUICK = Protocol(m=16, m_val=8, noise_subsets=4, removal_queries=2, removal_ks=[10], removal_random=1)


def build(name: str, *, quick: bool = False, label: str | None = None, text: str | None = None,
          seed: int = 0, stride_seeds: int = 1) -> Suite:
    """The suite for a benchmark name or a user data path (STRIDE repeated over ``stride_seeds`` seeds)."""
    protocol = replace(QUICK) if quick else Protocol()
    if name == "digits-mlp":
        from stride_assets.engine.evaluation.classifier import digits_task

        task = digits_task(seed=seed)
        return Suite(task, _specs(task, classifier_stride(quick), stride_seeds), protocol)
    if name == "pydoc-gpt":
        from stride_assets.engine.evaluation.lm_task import pydoc_task

        task = pydoc_task(seed=seed, quick=quick)
        return Suite(task, _specs(task, lm_stride(quick), stride_seeds), protocol)
    path = Path(name)
    if not path.exists():
        raise StrideInputError(f"unknown benchmark {name!r}: use digits-mlp, pydoc-gpt, or a data file path")
    if (label is None) == (text is None):
        raise StrideInputError(f"benchmark on a file needs exactly one of --label COL (tabular) or --text COL (text)")
    if label is not None:
        from stride_assets.engine.evaluation.classifier import tabular_task

        task = tabular_task(path, label, seed=seed)
        return Suite(task, _specs(task, classifier_stride(quick), stride_seeds), protocol)
    from stride_assets.engine.evaluation.lm_task import text_task

    task = text_task(path, text, seed=seed)
    return Suite(task, _specs(task, lm_stride(quick), stride_seeds), protocol)
