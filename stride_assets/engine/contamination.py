"""Contamination audit: look for leaks of query items into the training data.

A query is *contaminated* when the training set holds a copy of it, exactly or lightly edited
(benchmark leakage). ``audit`` flags (query, example) pairs of any score table where the example
is among the query's top-k by influence *and* there is evidence of copying: it shares at least
``min_overlap`` of the query's word n-grams (or, when asked for, its score is an extreme outlier
within the query). Influence alone is not evidence (a helpful example may be a different passage
on the same topic), and text overlap alone is not a leak the model used. ``audit_markdown``
summarises the flags.

Measuring a method on planted copies (``light_edit``, ``plant_copies``, ``recall_at_k``) is a
benchmark concern: it lives in the harness, ``evaluation.planting``, which reuses ``ranks`` and
the input helpers from here. This module is pure pipeline engine: no Dagster, nothing from
``evaluation``.

Scores follow the harness convention: (Q, n) floats, positive = training on the example lowers
the query's loss. Ties in a ranking are broken in a seeded random order, so a method gets no
credit for ties (e.g. the exact zeros of a Lasso) beyond chance.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Sequence

import numpy as np
import polars as pl

from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.result import escape_markdown

_WORD = re.compile(r"\w+")


# --- ranking ----------------------------------------------------------------------------------


def ranks(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """0-based rank (Q, n) of every example within its query's row, highest score first.

    NaN ranks last; ties are broken in a seeded random order, drawn independently per query.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    tiebreak = np.random.default_rng(seed).random(scores.shape)
    out = np.empty(scores.shape, dtype=np.int64)
    for q, row in enumerate(scores):
        out[q, np.lexsort((tiebreak[q], -row))] = np.arange(len(row))
    return out


# --- audit ------------------------------------------------------------------------------------


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of a text (the whole text as one gram when it has fewer words)."""
    words = [w.lower() for w in _WORD.findall(text)]
    n = min(n, len(words))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)} if n else set()


def ngram_overlap(query: str, example: str, n: int = 5) -> float:
    """Share of the query's word n-grams that also occur in the example (0 for a query without words)."""
    grams = word_ngrams(query, n)
    if not grams:
        return 0.0
    words = len(_WORD.findall(query))
    return len(grams & word_ngrams(example, min(n, words))) / len(grams)


def longest_shared(query: str, example: str) -> str:
    """The longest run of consecutive words (lower-cased) that the query and the example share."""
    a, b = [w.lower() for w in _WORD.findall(query)], [w.lower() for w in _WORD.findall(example)]
    m = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return " ".join(a[m.a : m.a + m.size])


def audit(scores: pl.DataFrame, queries: pl.DataFrame, corpus: pl.DataFrame, k: int = 10,
          min_overlap: float = 0.3, n: int = 5, z_extreme: float | None = None, seed: int = 0) -> pl.DataFrame:
    """Suspected leaks: pairs among a query's top ``k`` by positive score, with evidence of copying.

    ``scores`` (query_id, example_id, score); a pair absent from it scores 0 (the sparse form the
    benchmark writes). ``queries`` (query_id, text), ``corpus`` (example_id, text). The rule: flag
    example i for query q when
        rank of i within q <= k  and  score > 0  and
        (overlap >= min_overlap  or  z >= z_extreme),
    overlap being the share of the query's word ``n``-grams found in the example and z the score's
    z-score within the query's row (all examples). The z path is off by default: a sparse (Lasso)
    row makes every nonzero score an outlier, so z alone would flag any pick of a sparse method.

    Returns one row per flag: query_id, example_id, rank (1 = most influential), score, z, overlap,
    textual (overlap >= min_overlap), shared (the longest common word run), reason.

    Defaults, measured on the pydoc corpus: 96% of ``light_edit`` copies (rate 0.1) keep >= 30% of
    the query's word 5-grams, while 86 of 100 test queries share that much with no training passage
    (the other 14 have natural near-duplicates: the same docs filed under two topics).
    """
    for frame, cols, name in ((scores, ("query_id", "example_id", "score"), "scores"),
                              (queries, ("query_id", "text"), "queries"), (corpus, ("example_id", "text"), "corpus")):
        _require_columns(frame, cols, name)
        if frame.is_empty():
            raise StrideInputError(f"audit: {name} is empty")
    if k < 1 or not 0 < min_overlap <= 1:
        raise StrideInputError(f"audit needs k >= 1 and min_overlap in (0, 1], got k={k}, min_overlap={min_overlap}")
    q_ids, e_ids = queries["query_id"].to_list(), corpus["example_id"].to_list()
    S = np.zeros((len(q_ids), len(e_ids)))
    where = (_index(q_ids, scores["query_id"], "query"), _index(e_ids, scores["example_id"], "example"))
    S[where] = scores["score"].to_numpy()
    std = S.std(axis=1, keepdims=True)
    Z = np.divide(S - S.mean(axis=1, keepdims=True), std, out=np.zeros_like(S), where=std > 0)
    R = ranks(S, seed)
    q_texts, e_texts = queries["text"].to_list(), corpus["text"].to_list()
    rows = []
    for q, i in zip(*np.nonzero((R < k) & (S > 0))):
        overlap = ngram_overlap(q_texts[q], e_texts[i], n)
        textual, extreme = overlap >= min_overlap, z_extreme is not None and Z[q, i] >= z_extreme
        if not (textual or extreme):
            continue
        evidence = [f"shares {overlap:.0%} of the query's word {n}-grams"] if textual else []
        evidence += [f"score z {Z[q, i]:.1f} >= {z_extreme:g}"] if extreme else []
        rows.append({"query_id": q_ids[q], "example_id": e_ids[i], "rank": int(R[q, i]) + 1, "score": float(S[q, i]),
                     "z": float(Z[q, i]), "overlap": overlap, "textual": textual,
                     "shared": longest_shared(q_texts[q], e_texts[i]),
                     "reason": f"influence rank {int(R[q, i]) + 1} of {len(e_ids)}; " + " and ".join(evidence)})
    schema = {"query_id": pl.Utf8, "example_id": pl.Utf8, "rank": pl.Int64, "score": pl.Float64, "z": pl.Float64,
              "overlap": pl.Float64, "textual": pl.Boolean, "shared": pl.Utf8, "reason": pl.Utf8}
    return pl.DataFrame(rows, schema=schema).sort(["query_id", "rank"])


def audit_markdown(leaks: pl.DataFrame, top: int = 20) -> str:
    """A markdown summary of ``audit``'s flags: counts, then the ``top`` flags by overlap and score."""
    lines = ["# Contamination audit", ""]
    if leaks.is_empty():
        return "\n".join(lines + ["No suspected leaks."])
    textual = int(leaks["textual"].sum())
    lines += [f"{leaks.height} suspected leaks in {leaks['query_id'].n_unique()} queries "
              f"({textual} with textual evidence, {leaks.height - textual} on an extreme score alone); "
              f"median shared n-grams {leaks['overlap'].median():.0%}.", "",
              "| query | example | rank | score | z | overlap | longest shared words |",
              "|---|---|---|---|---|---|---|"]
    for r in leaks.sort(["overlap", "score"], descending=True).head(top).iter_rows(named=True):
        shared = r["shared"] if len(r["shared"]) <= 60 else r["shared"][:57] + "..."
        lines.append(f"| {r['query_id']} | {r['example_id']} | {r['rank']} | {r['score']:.4g} | {r['z']:.1f} | "
                     f"{r['overlap']:.0%} | {escape_markdown(shared)} |")
    if leaks.height > top:
        lines += ["", f"... and {leaks.height - top} more (see the parquet file)."]
    return "\n".join(lines)


def leaks_by_document(leaks: pl.DataFrame) -> pl.DataFrame:
    """``audit``'s flags (with a ``doc_id`` column: ``documents.with_doc_id``) per (query, document): the
    document's flagged ``chunks``, their ``example_ids``, the best ``rank``, the largest ``overlap`` and
    the summed ``score``; a long document leaking through several windows is one row."""
    _require_columns(leaks, ("query_id", "example_id", "doc_id", "rank", "score", "overlap"), "leaks")
    return (
        leaks.group_by("query_id", "doc_id")
        .agg(pl.len().cast(pl.Int64).alias("chunks"), pl.col("example_id").sort().alias("example_ids"),
             pl.col("rank").min().alias("rank"), pl.col("overlap").max().alias("overlap"),
             pl.col("score").sum().alias("score"))
        .sort(["query_id", "rank", "doc_id"])
    )


def documents_markdown(by_doc: pl.DataFrame, top: int = 20) -> str:
    """A markdown section of ``leaks_by_document``: the ``top`` (query, document) pairs by overlap."""
    if by_doc.is_empty():
        return ""
    lines = ["## Per document", "", f"{by_doc.height} (query, document) pairs over "
             f"{by_doc['doc_id'].n_unique()} documents.", "", "| query | document | chunks | best rank | overlap |",
             "|---|---|---|---|---|"]
    for r in by_doc.sort(["overlap", "score"], descending=True).head(top).iter_rows(named=True):
        lines.append(f"| {r['query_id']} | {r['doc_id']} | {r['chunks']} | {r['rank']} | {r['overlap']:.0%} |")
    return "\n".join(lines)


# --- helpers ----------------------------------------------------------------------------------


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StrideInputError(f"{name} lacks columns {missing} (has {frame.columns})")


def _index(ids: Sequence[str], wanted: pl.Series, what: str) -> np.ndarray:
    """Positions of ``wanted`` ids in ``ids``; an unknown id is an input error."""
    position = {v: j for j, v in enumerate(ids)}
    unknown = [v for v in wanted.unique().to_list() if v not in position]
    if unknown:
        raise StrideInputError(f"{len(unknown)} unknown {what} id(s), e.g. {unknown[:3]}")
    return np.array([position[v] for v in wanted.to_list()], dtype=np.int64)
