"""The stages of a STRIDE run, one module each, and the one table that wires them (``STAGES``).

    training_corpus[shard] -> subset_design[shard] -> steering_operators[shard] --\\
    base_model ------------------------------------------------/                     perturbation_matrix[batch|shard]
    query_set[batch] -> query_features[batch] (the queries at the site, once) --------/        |
    influence_scores[batch]  (fan-in over shards: block-diagonal membership)  <---------------/
    curated_dataset, selected_dataset, contamination_report   (fan-in over batches)
    attribution_report[batch], curation_report   (HTML pages of the scores and of the curated outputs;
    the first shades each query's tokens by the stored operators / factors, so it reads them too)

That is ``attribution.method: stride``. With ``ekfac`` the STRIDE stages (subset_design,
steering_operators, perturbation_matrix) leave the graph and ``influence_factors`` (Kronfluence's
factors on the whole corpus) feeds ``influence_scores[batch]``; ``ensemble`` has both. A spec's
``methods`` says which methods it belongs to; ``stages_for(method)`` is the table of one method.

Each stage module has ``run(cfg, store, log, **keys) -> StageResult``: it reads its inputs from
the store, writes its named artifacts (atomically, with ``args.json`` beside them) and returns
what the caller shows and tracks. The base model is frozen: it does not follow the corpus (the
tiny default trains once on the shards present when it is built), so the query set and the base
model read the corpus source rather than the training_corpus blocks.

To add a stage: write ``stages/<name>.py`` with its ``run`` and add one ``StageSpec`` below.
"""

from __future__ import annotations

from stride_assets.engine import checks, registry
from stride_assets.engine.registry import StageSpec
from stride_assets.engine.stages import (
    attribution_report,
    base_model,
    contamination_report,
    curated_dataset,
    curation_report,
    influence_factors,
    influence_scores,
    perturbation_matrix,
    query_features,
    query_set,
    selected_dataset,
    steering_operators,
    subset_design,
    training_corpus,
)

STRIDE_ONLY = ("stride", "ensemble")  # the stages of the STRIDE method
EKFAC_ONLY = ("ekfac", "ensemble")  # Kronfluence's factors
_INFLUENCE = dict(keys=("batch",), group="attribution", kinds=("scikitlearn", "parquet"), eager=True, job="recovery",
                  checks=(checks.influence_scores_usable,))

ALL_STAGES: tuple[StageSpec, ...] = (
    StageSpec("base_model", base_model.run,
              sections=("corpus", "model"), modules=("corpus", "shards", "lm", "losses", "token_windows", "formats"),
              group="model", kinds=("pytorch", "transformers"), job="model"),
    StageSpec("training_corpus", training_corpus.run, keys=("shard",), reads_source=True,
              sections=("corpus",), modules=("corpus", "shards", "preflight", "token_windows", "formats"),
              group="data", kinds=("polars", "parquet"), job="shard"),
    StageSpec("query_set", query_set.run, keys=("batch",), reads_source=True,
              sections=("corpus", "queries"), modules=("corpus", "shards", "formats"),
              group="data", kinds=("polars", "parquet"), job="queries"),
    StageSpec("subset_design", subset_design.run, upstream=("training_corpus",), keys=("shard",),
              sections=("design",), modules=("design", "shards"),
              group="attribution", kinds=("numpy", "scipy"), job="shard", methods=STRIDE_ONLY),
    StageSpec("steering_operators", steering_operators.run,
              upstream=("base_model", "subset_design", "training_corpus"), keys=("shard",),
              sections=("operators", "training", "model"),
              modules=("stride", "backbone", "operators", "training", "measure", "losses", "shards", "lm", "formats"),
              group="attribution", kinds=("pytorch", "safetensors"), job="shard", methods=STRIDE_ONLY,
              checks=(checks.operators_not_collapsed, checks.operators_favour_members)),
    StageSpec("query_features", query_features.run, upstream=("query_set", "base_model"), keys=("batch",),
              sections=("operators.form", "operators.layer", "model"),
              modules=("stride", "backbone", "losses", "lm", "formats"),
              group="attribution", kinds=("pytorch", "safetensors"), eager=True, job="queries", methods=STRIDE_ONLY),
    StageSpec("perturbation_matrix", perturbation_matrix.run,
              upstream=("query_set", "query_features", "steering_operators", "base_model"), keys=("shard", "batch"),
              sections=("measure", "model"), modules=("stride", "backbone", "operators", "measure", "losses", "lm",
                                                       "formats"),
              group="attribution", kinds=("pytorch", "parquet"), eager=True, job="measure", methods=STRIDE_ONLY),
    StageSpec("influence_factors", influence_factors.run, upstream=("base_model", "training_corpus"),
              sections=("attribution", "model"), modules=("attribution", "ekfac", "lm", "shards", "formats"),
              group="attribution", kinds=("pytorch", "safetensors"), eager=True, job="factors", methods=EKFAC_ONLY),
    # one stage, three wirings: what influence_scores reads depends on the method
    StageSpec("influence_scores", influence_scores.run,
              upstream=("perturbation_matrix", "subset_design", "training_corpus"), methods=("stride",),
              triggers=("perturbation_matrix",),  # a changed shard is re-measured first: its block triggers
              sections=("recovery",), modules=("stride", "recovery", "attribution", "documents"), **_INFLUENCE),
    StageSpec("influence_scores", influence_scores.run,
              upstream=("influence_factors", "query_set", "training_corpus", "base_model"), methods=("ekfac",),
              triggers=("influence_factors", "query_set"), sections=("attribution", "model"),
              modules=("attribution", "ekfac", "lm", "documents", "formats"), **_INFLUENCE),
    StageSpec("influence_scores", influence_scores.run,
              upstream=("perturbation_matrix", "subset_design", "training_corpus", "influence_factors"),
              methods=("ensemble",), triggers=("perturbation_matrix", "influence_factors"),
              sections=("recovery", "attribution", "model"),
              modules=("stride", "recovery", "attribution", "ekfac", "lm", "documents", "formats"),
              **_INFLUENCE),
    StageSpec("curated_dataset", curated_dataset.run, upstream=("influence_scores", "training_corpus"),
              sections=("curation",), modules=("curation", "documents", "datasets_out", "stages._derived"),
              group="curation", kinds=("polars", "parquet"), eager=True, triggers=("influence_scores",),
              job="curation",
              checks=(checks.curated_dataset_not_empty,)),
    StageSpec("selected_dataset", selected_dataset.run, upstream=("influence_scores", "training_corpus", "query_set"),
              sections=("selection",), modules=("selection", "datasets_out", "stages._derived"),
              group="curation", kinds=("polars", "parquet"), eager=True, triggers=("influence_scores",),
              job="curation"),
    StageSpec("contamination_report", contamination_report.run,
              upstream=("influence_scores", "training_corpus", "query_set"),
              sections=("contamination",), modules=("contamination", "documents"),
              group="curation", kinds=("polars", "parquet"), eager=True, triggers=("influence_scores",),
              job="curation"),
    # pages people can read, rebuilt in the same jobs as what they show
    # per-token shading re-applies the method's stored operators (STRIDE) or factors (EK-FAC)
    *(StageSpec("attribution_report", attribution_report.run,
                upstream=("influence_scores", "query_set", "training_corpus", "base_model", *extra), keys=("batch",),
                sections=("report",), modules=("html_report", "html_page", "contamination", "token_attribution",
                                               "query", "measure", "recovery", "attribution", "lm", "formats"),
                group="reports", kinds=("html",), eager=True, triggers=("influence_scores",), job="recovery",
                methods=(method,))
      for method, extra in (("stride", ("steering_operators", "subset_design")), ("ekfac", ("influence_factors",)),
                            ("ensemble", ("steering_operators", "subset_design", "influence_factors")))),
    StageSpec("curation_report", curation_report.run,
              upstream=("curated_dataset", "contamination_report", "query_set", "training_corpus"),
              sections=("contamination.ngram",), modules=("html_report", "html_page", "contamination"),
              group="reports", kinds=("html",), eager=True, triggers=("curated_dataset", "contamination_report"),
              job="curation"),
)


def stages_for(method: str) -> tuple[StageSpec, ...]:
    """The stages of a run whose ``attribution.method`` is ``method``, in table order."""
    return registry.for_method(ALL_STAGES, method)


STAGES: tuple[StageSpec, ...] = stages_for("stride")  # the default method's stages
