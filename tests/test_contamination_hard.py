"""The hard contamination scenario's planting (hard_planting) and its report pieces: kinds, rates,
determinism by seed, and what each kind keeps of its query."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stride_assets.engine.contamination import ngram_overlap
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation import contamination_bench
from stride_assets.engine.evaluation.hard_planting import embed, paraphrase, plant_variants

VOCAB = [f"w{i}" for i in range(400)]


def passages(count: int, words: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(VOCAB, size=words)) for _ in range(count)]


TRAIN, QUERIES = passages(50), passages(20, seed=1)
TRAIN_IDS, QUERY_IDS = [f"t{i}" for i in range(50)], [f"q{i}" for i in range(20)]
RATES = {"exact": 0.1, "paraphrase": 0.2, "embedded": 0.25}


def test_plant_variants_plants_each_kind_at_its_rate_deterministically() -> None:
    texts, ids, planted = plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, RATES, seed=5, visible_words=[20] * 20)
    counts = dict(planted.group_by("kind").len().iter_rows())
    assert counts == {"exact": 2, "paraphrase": 4, "embedded": 5}  # of 20 queries, one copy each
    assert planted["query_id"].n_unique() == planted.height  # kinds draw disjoint queries
    assert len(texts) == len(ids) == 50 + 11 and len(set(ids)) == len(ids)
    assert [t for t, i in zip(texts, ids) if not i.startswith("planted/")] == TRAIN  # originals in order
    assert set(planted["example_id"]) == {i for i in ids if i.startswith("planted/")}
    positions = [j for j, i in enumerate(ids) if i.startswith("planted/")]
    assert min(positions) < 30 < max(positions)  # spread over the set

    by_id, query = dict(zip(ids, texts)), dict(zip(QUERY_IDS, QUERIES))
    for q, e, kind in planted.iter_rows():
        copy, words = by_id[e], query[q].split()
        if kind == "exact":
            assert copy == query[q]
        elif kind == "paraphrase":
            assert copy != query[q] and ngram_overlap(query[q], copy) < 0.3  # the 5-gram audit misses it
            assert len(set(copy.split()) & set(words)) > 0.5 * len(set(words))  # most words survive
        else:  # embedded: the first half of the 20 visible words, inside a training passage
            assert " ".join(words[:10]) in copy and " ".join(words[:11]) not in copy
            host = copy.replace(" ".join(words[:10]) + " ", "")
            assert host in TRAIN and not copy.startswith(" ".join(words[:10]))
            assert ngram_overlap(query[q], copy) < 0.3

    again = plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, RATES, seed=5, visible_words=[20] * 20)
    assert again[0] == texts and again[1] == ids and again[2].equals(planted)
    other = plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, RATES, seed=6, visible_words=[20] * 20)
    assert other[0] != texts and not other[2].equals(planted)
    assert plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, {"paraphrase": 0.0})[2].is_empty()
    with pytest.raises(StrideInputError):
        plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, {"synonym": 0.1})
    with pytest.raises(StrideInputError):
        plant_variants(TRAIN, TRAIN_IDS, QUERIES, QUERY_IDS, {"exact": 0.6, "embedded": 0.6})


def test_paraphrase_and_embed_by_themselves() -> None:
    rng = np.random.default_rng(0)
    text = QUERIES[0]
    outs = [paraphrase(text, np.random.default_rng(s), VOCAB) for s in range(20)]
    assert len(set(outs)) == 20 and all(o != text for o in outs)
    assert paraphrase(text, np.random.default_rng(3), VOCAB) == outs[3]
    assert all(abs(len(o.split()) - 40) <= 12 for o in outs)  # about 10% dropped
    assert paraphrase("word", rng, VOCAB) != "word"  # a one-word text still changes
    assert paraphrase("a b c", rng, VOCAB, replace=0.0, drop=0.0, window=0.5) != "a b c"
    assert embed("x y z", "h1 h2 h3 h4", rng, span=2, lead=(2, 2)) == "h1 h2 x y h3 h4"
    assert embed("x y z", "h1", rng, span=5, lead=(3, 3)) == "h1 x y z"


def test_visible_words_and_the_hard_scenario() -> None:
    def tokenizer(text: str) -> dict:  # one token per character
        return {"input_ids": list(text)}

    assert contamination_bench.visible_words(tokenizer, "ab cd ef gh", 5) == 2  # "ab cd" is 5 characters
    assert contamination_bench.visible_words(tokenizer, "abcdefgh ij", 5) == 1  # at least one word
    assert contamination_bench.visible_words(tokenizer, "ab cd", 64) == 2
    hard = contamination_bench.Scenario.named("hard", seed=3)
    assert hard.name == "hard" and hard.seed == 3 and hard.kinds == ["exact", "paraphrase", "embedded"]
    assert max(hard.rates.values()) <= 0.05 and hard.copies == 1  # a low rate, one copy per query
    assert contamination_bench.Scenario.named("easy") == contamination_bench.Scenario()
    with pytest.raises(StrideInputError):
        contamination_bench.Scenario.named("harder")


def test_audit_stats_per_kind() -> None:
    planted = pl.DataFrame({"query_id": ["q0", "q1", "q2", "q3"], "example_id": ["e0", "e1", "e2", "e3"],
                            "kind": ["exact", "paraphrase", "paraphrase", "embedded"]})
    leaks = pl.DataFrame({"query_id": ["q0", "q1", "q1"], "example_id": ["e0", "e1", "e9"]})
    stats = contamination_bench.audit_stats(leaks, planted)
    assert stats["flagged"] == 3 and stats["planted_flagged"] == 2 and stats["other_flagged"] == 1
    assert stats["precision"] == pytest.approx(2 / 3)
    assert stats["found_by_kind"] == {"embedded": 0.0, "exact": 1.0, "paraphrase": 0.5}
