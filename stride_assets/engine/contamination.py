"""Contamination audit: plant copies of query items in the training data, and look for leaks.

A query is *contaminated* when the training set holds a copy of it, exactly or lightly edited
(benchmark leakage). Two uses:

1. Measuring a method. ``plant_copies`` adds copies of some queries at known rates, so the answer
   is known; ``recall_at_k`` is the share of a contaminated query's planted copies that a
   method ranks among that query's k most influential examples.
2. Auditing any score table. ``audit`` flags (query, example) pairs where the example is among
   the query's top-k by influence *and* there is evidence of copying: it shares at least
   ``min_overlap`` of the query's word n-grams (or, when asked for, its score is an extreme
   outlier within the query). Influence alone is not evidence (a helpful example may be a
   different passage on the same topic), and text overlap alone is not a leak the model used.
   ``audit_markdown`` summarises the flags.

Scores follow the harness convention: (Q, n) floats, positive = training on the example lowers
the query's loss. Ties in a ranking are broken in a seeded random order, so a method gets no
credit for ties (e.g. the exact zeros of a Lasso) beyond chance. Pure engine: no Dagster.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Sequence

import numpy as np
import polars as pl

from stride_assets.engine.errors import StrideInputError

KINDS = ("exact", "edited")  # how a planted copy differs from its query
PLANTED_PREFIX = "planted/"  # planted example ids: planted/00000, ... (numbered by position, not by query)
_WORD = re.compile(r"\w+")


# --- planting ---------------------------------------------------------------------------------


def light_edit(text: str, rng: np.random.Generator, rate: float = 0.1) -> str:
    """``text`` with about ``rate`` of its words edited: each edit drops a word, swaps it with the
    next one, or replaces one of its characters. Whitespace between kept words is kept.

    At least one word is edited, so the result always differs; with the default rate most word
    n-grams survive (an edit breaks at most the n-grams that span it). Deterministic given ``rng``.
    """
    if not 0 < rate <= 1:
        raise StrideInputError(f"edit rate must be in (0, 1], got {rate}")
    parts = re.split(r"(\s+)", text)  # words at even indices, separators at odd ones
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    if not words:
        raise StrideInputError("cannot edit a text without words")
    edits, alive = max(1, round(rate * len(words))), len(words)
    for pos in sorted(rng.choice(len(words), size=min(edits, len(words)), replace=False).tolist()):
        i = words[pos]
        op = ("drop", "swap", "char")[int(rng.integers(3))]
        nxt = words[pos + 1] if pos + 1 < len(words) else None
        if op == "drop" and alive > 1 and parts[i]:  # never drop the last word
            parts[i], alive = "", alive - 1
            if i + 1 < len(parts):
                parts[i + 1] = ""  # and the separator after it
        elif op == "swap" and nxt is not None and parts[nxt] and parts[nxt] != parts[i]:
            parts[i], parts[nxt] = parts[nxt], parts[i]
        elif parts[i]:  # "char", or an edit that could not apply here
            j = int(rng.integers(len(parts[i])))
            letter = "abcdefghijklmnopqrstuvwxyz".replace(parts[i][j].lower(), "")[int(rng.integers(25))]
            parts[i] = parts[i][:j] + letter + parts[i][j + 1 :]
    return "".join(parts).strip()


def plant_copies(
    train_texts: Sequence[str], train_ids: Sequence[str], query_texts: Sequence[str], query_ids: Sequence[str],
    rates: dict[str, float], copies: int = 1, seed: int = 0, edit_rate: float = 0.1,
) -> tuple[list[str], list[str], pl.DataFrame]:
    """A training set with ``copies`` copies of some queries inserted at random positions.

    ``rates[kind]`` (kind in ``KINDS``) is the fraction of queries contaminated with that kind;
    the kinds draw disjoint queries, so the rates must sum to at most 1. "edited" copies are
    independent ``light_edit``s of the query. Original examples keep their order; planted ids are
    ``planted/<position number>``, which mark them as planted without telling which query they
    copy (methods only see texts anyway). Returns (texts, ids, planted), planted a frame
    (query_id, example_id, kind) sorted by query and example.
    """
    _check_planting(train_texts, train_ids, query_texts, query_ids, rates, copies)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(query_ids))
    sources: list[tuple[int, str]] = []  # (query index, kind) per contaminated query
    start = 0
    for kind in KINDS:
        count = int(round(rates.get(kind, 0.0) * len(query_ids)))
        sources += [(int(q), kind) for q in sorted(order[start : start + count].tolist())]
        start += count
    planted_texts, planted_meta = [], []
    for q, kind in sources:
        for _ in range(copies):
            text = query_texts[q] if kind == "exact" else light_edit(query_texts[q], rng, edit_rate)
            planted_texts.append(text)
            planted_meta.append((query_ids[q], kind))
    total = len(train_texts) + len(planted_texts)
    slots = rng.permutation(total)[: len(planted_texts)]  # slots[j]: where planted copy j goes
    texts: list[str | None] = [None] * total
    ids: list[str | None] = [None] * total
    for j, slot in enumerate(slots.tolist()):
        texts[slot] = planted_texts[j]
    rest = iter(zip(train_texts, train_ids))
    number = {slot: f"{PLANTED_PREFIX}{rank:05d}" for rank, slot in enumerate(sorted(slots.tolist()))}
    for i in range(total):
        if i in number:
            ids[i] = number[i]
        else:
            texts[i], ids[i] = next(rest)
    planted = pl.DataFrame(
        {"query_id": [m[0] for m in planted_meta], "example_id": [number[s] for s in slots.tolist()],
         "kind": [m[1] for m in planted_meta]},
        schema={"query_id": pl.Utf8, "example_id": pl.Utf8, "kind": pl.Utf8},
    ).sort(["query_id", "example_id"])
    return texts, ids, planted  # type: ignore[return-value]


def _check_planting(train_texts, train_ids, query_texts, query_ids, rates, copies) -> None:
    if not train_texts or not query_texts:
        raise StrideInputError("plant_copies needs at least one training text and one query")
    if len(train_texts) != len(train_ids) or len(query_texts) != len(query_ids):
        raise StrideInputError(f"texts and ids differ in length: train {len(train_texts)}/{len(train_ids)}, "
                               f"queries {len(query_texts)}/{len(query_ids)}")
    unknown = set(rates) - set(KINDS)
    if unknown:
        raise StrideInputError(f"unknown contamination kinds {sorted(unknown)}; use {KINDS}")
    bad = {k: r for k, r in rates.items() if not 0 <= r <= 1}
    if bad:
        raise StrideInputError(f"rates must be fractions in [0, 1], got {bad}")
    if sum(rates.values()) > 1 + 1e-9:
        raise StrideInputError(f"rates sum to {sum(rates.values()):.3f} > 1 (each query gets at most one kind)")
    if copies < 1:
        raise StrideInputError(f"copies must be >= 1, got {copies}")
    if any(str(i).startswith(PLANTED_PREFIX) for i in train_ids):
        raise StrideInputError(f"training ids already start with {PLANTED_PREFIX!r}; planted ids would collide")


# --- recall of planted copies -----------------------------------------------------------------


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


def recall_at_k(scores: np.ndarray, query_ids: Sequence[str], example_ids: Sequence[str], planted: pl.DataFrame,
                ks: Sequence[int], seed: int = 0) -> dict:
    """Mean over contaminated queries of (planted copies in the query's top k) / (planted copies).

    Returns {"recall_at_k": {k: value}, "by_kind": {kind: {k: value}}, "queries": contaminated
    queries, "planted": copies}. With c copies per query, recall at k < c is at most k / c.
    """
    scores = np.asarray(scores)
    _require_columns(planted, ("query_id", "example_id", "kind"), "planted")
    if scores.shape != (len(query_ids), len(example_ids)):
        raise StrideInputError(
            f"scores {scores.shape} do not match {len(query_ids)} queries x {len(example_ids)} examples")
    if planted.is_empty():
        raise StrideInputError("no planted copies: nothing to recall")
    if not ks or min(ks) < 1:
        raise StrideInputError(f"ks must be positive, got {list(ks)}")
    q_index = _index(query_ids, planted["query_id"], "query")
    rank = ranks(scores, seed)[q_index, _index(example_ids, planted["example_id"], "example")]
    hits = planted.select("query_id", "kind").with_columns(
        [pl.Series(f"hit{k}", rank < k) for k in ks])
    per_query = hits.group_by("query_id", "kind").agg([pl.col(f"hit{k}").mean() for k in ks])

    def means(frame: pl.DataFrame) -> dict[int, float]:
        return {int(k): float(frame[f"hit{k}"].mean()) for k in ks}

    return {"recall_at_k": means(per_query),
            "by_kind": {kind: means(per_query.filter(pl.col("kind") == kind))
                        for kind in KINDS if kind in set(per_query["kind"])},
            "queries": per_query.height, "planted": planted.height}


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
                     f"{r['overlap']:.0%} | {shared.replace('|', '/')} |")
    if leaks.height > top:
        lines += ["", f"... and {leaks.height - top} more (see the parquet file)."]
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
