"""Planted contamination: copies of query items put into a training set, so the answer is known.

``plant_copies`` adds copies of some queries at known rates, exact or ``light_edit``-ed;
``recall_at_k`` is the share of a contaminated query's planted copies that a method ranks among
that query's k most influential examples. ``contamination_bench`` runs the scenario on pydoc.

A benchmark concern, so a harness module: moved here from ``engine.contamination``, which keeps
the pipeline's audit (``audit``, ``audit_markdown``) and the seeded ``ranks`` that both use.

Scores follow the harness convention: (Q, n) floats, positive = training on the example lowers
the query's loss; ties in a ranking are broken in a seeded random order (``contamination.ranks``).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import polars as pl

from stride_assets.engine.contamination import _index, _require_columns, ranks
from stride_assets.engine.errors import StrideInputError

KINDS = ("exact", "edited")  # how a planted copy differs from its query
PLANTED_PREFIX = "planted/"  # planted example ids: planted/00000, ... (numbered by position, not by query)


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
