"""Harder planted contamination: paraphrased queries and partial copies inside unrelated passages.

``planting.plant_copies`` plants exact or lightly edited copies, which every method (and a word
n-gram match) finds. ``plant_variants`` plants, at (low) rates per kind:

- ``exact``: the query verbatim (the reference);
- ``edited``: ``planting.light_edit`` (as the easy scenario);
- ``paraphrase``: ``paraphrase``, word-level noise without synonyms: words replaced by words of
  the corpus vocabulary, dropped, and shuffled locally, so few word 5-grams survive;
- ``embedded``: the first words of the query (a share of what the model sees of it) put inside an
  unrelated training passage, a few words after its start.

All deterministic given the seed; planted ids and insertion as ``plant_copies`` (which inserts them).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import polars as pl

from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.planting import light_edit, plant_copies

HARD_KINDS = ("exact", "edited", "paraphrase", "embedded")


def paraphrase(text: str, rng: np.random.Generator, vocabulary: Sequence[str], replace: float = 0.15,
               drop: float = 0.1, window: float = 2.5) -> str:
    """``text`` with each word replaced (probability ``replace``) by a random ``vocabulary`` word or
    dropped (``drop``), then the words shuffled locally (each moves less than ``window`` places).
    Whitespace is normalised to single spaces; the result always differs from the text."""
    words = text.split()
    if not words or not vocabulary:
        raise StrideInputError("paraphrase needs a text with words and a vocabulary")
    u = rng.random(len(words))
    out = [str(vocabulary[int(rng.integers(len(vocabulary)))]) if x < replace else w
           for x, w in zip(u, words) if not replace <= x < replace + drop] or words[:1]
    order = np.argsort(np.arange(len(out)) + rng.uniform(0, window, len(out)), kind="stable")
    out = [out[i] for i in order]
    if out == words:  # nothing happened (a very short text): replace one word
        out[int(rng.integers(len(out)))] = next(v for v in rng.permutation(vocabulary) if v not in words)
    return " ".join(out)


def embed(text: str, host: str, rng: np.random.Generator, span: int, lead: tuple[int, int] = (2, 6)) -> str:
    """The first ``span`` words of ``text`` inserted into ``host`` after its first ``lead`` words
    (drawn in [lead[0], lead[1]])."""
    words, around = text.split(), host.split()
    at = min(len(around), int(rng.integers(lead[0], lead[1] + 1)))
    return " ".join(around[:at] + words[: max(1, span)] + around[at:])


def plant_variants(
    train_texts: Sequence[str], train_ids: Sequence[str], query_texts: Sequence[str], query_ids: Sequence[str],
    rates: dict[str, float], seed: int = 0, *, edit_rate: float = 0.1, visible_words: Sequence[int] | None = None,
    embed_share: float = 0.5,
) -> tuple[list[str], list[str], pl.DataFrame]:
    """One planted example per contaminated query, of the kind its rate drew (kinds draw disjoint
    queries); returns (texts, ids, planted (query_id, example_id, kind)) as ``plant_copies``.

    ``visible_words[q]``: how many of query q's words the model sees (its loss is on them; default
    all); an ``embedded`` copy holds ``embed_share`` of them. Hosts and the vocabulary come from the
    training texts.
    """
    unknown = set(rates) - set(HARD_KINDS)
    if unknown:
        raise StrideInputError(f"unknown contamination kinds {sorted(unknown)}; use {HARD_KINDS}")
    if sum(rates.values()) > 1 + 1e-9 or any(not 0 <= r <= 1 for r in rates.values()):
        raise StrideInputError(f"rates must be fractions summing to at most 1, got {rates}")
    rng = np.random.default_rng(seed)
    vocabulary = sorted({w for t in train_texts for w in t.split()})
    visible = list(visible_words) if visible_words is not None else [len(t.split()) for t in query_texts]
    make: dict[str, Callable[[int], str]] = {
        "exact": lambda q: query_texts[q],
        "edited": lambda q: light_edit(query_texts[q], rng, edit_rate),
        "paraphrase": lambda q: paraphrase(query_texts[q], rng, vocabulary),
        "embedded": lambda q: embed(query_texts[q], train_texts[int(rng.integers(len(train_texts)))], rng,
                                    round(embed_share * visible[q])),
    }
    order, start, sources = rng.permutation(len(query_ids)), 0, []
    for kind in HARD_KINDS:
        count = int(round(rates.get(kind, 0.0) * len(query_ids)))
        sources += [(int(q), kind) for q in sorted(order[start : start + count].tolist())]
        start += count
    if not sources:
        return list(train_texts), list(train_ids), pl.DataFrame(
            schema={"query_id": pl.Utf8, "example_id": pl.Utf8, "kind": pl.Utf8})
    texts = [make[kind](q) for q, kind in sources]
    # plant_copies inserts each text once (rate 1 of these "queries", keyed by position) at random places
    keys = [str(j) for j in range(len(sources))]
    out_texts, out_ids, placed = plant_copies(train_texts, train_ids, texts, keys, {"exact": 1.0}, seed=seed + 1)
    source = pl.DataFrame({"query_id": keys, "source": [query_ids[q] for q, _ in sources],
                           "variant": [kind for _, kind in sources]})
    planted = (placed.join(source, on="query_id").select(pl.col("source").alias("query_id"), "example_id",
                                                         pl.col("variant").alias("kind"))
               .sort(["query_id", "example_id"]))
    return out_texts, out_ids, planted
