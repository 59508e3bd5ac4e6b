"""Contamination audit (stride_assets.engine.contamination) and its benchmark scenario, on planted signals
(stride_assets.engine.evaluation.planting, .contamination_bench)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stride_assets import tracking
from stride_assets.engine.contamination import audit, audit_markdown, ngram_overlap
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.planting import light_edit, plant_copies, recall_at_k

pytestmark = [
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),  # sdpa under vmap
    pytest.mark.usefixtures("one_torch_thread"),
]

VOCAB = [f"w{i}" for i in range(400)]


def passages(count: int, words: int = 40, seed: int = 0) -> list[str]:
    """Random passages over a 400-word vocabulary: two of them share (almost) no 5-gram."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(VOCAB, size=words)) for _ in range(count)]


PASSAGE = ("The assignment statement evaluates the expression list (remember that this can be a single "
           "expression or a comma-separated list, the latter yielding a tuple) and assigns the single "
           "resulting object to each of the target lists, from left to right. Assignment is defined "
           "recursively depending on the form of the target (list).")


def test_light_edit_changes_the_text_but_keeps_most_ngrams() -> None:
    edits = [light_edit(PASSAGE, np.random.default_rng(seed)) for seed in range(30)]
    assert all(e != PASSAGE for e in edits)
    assert light_edit(PASSAGE, np.random.default_rng(3)) == edits[3]  # deterministic given the rng
    assert len(set(edits)) > 25  # and it depends on it
    n_words = len(PASSAGE.split())
    assert all(abs(len(e.split()) - n_words) <= 0.15 * n_words for e in edits)
    assert np.mean([ngram_overlap(PASSAGE, e, 3) for e in edits]) > 0.6
    assert min(ngram_overlap(PASSAGE, e, 5) for e in edits) > 0.3  # the audit's default threshold
    heavy = light_edit(PASSAGE, np.random.default_rng(0), rate=1.0)
    assert ngram_overlap(PASSAGE, heavy, 5) < 0.2  # the rate is what keeps the n-grams
    assert light_edit("word", np.random.default_rng(0)) != "word"  # one word: still edited


def test_plant_copies_is_seeded_and_at_the_asked_rates() -> None:
    train, queries = passages(50), passages(20, seed=1)
    train_ids, query_ids = [f"t{i}" for i in range(50)], [f"q{i}" for i in range(20)]
    rates = {"exact": 0.1, "edited": 0.25}
    texts, ids, planted = plant_copies(train, train_ids, queries, query_ids, rates, copies=3, seed=7)

    kinds = planted.group_by("kind").agg(pl.col("query_id").n_unique(), pl.len())
    assert dict(kinds.select("kind", "query_id").iter_rows()) == {"exact": 2, "edited": 5}  # 0.1 and 0.25 of 20
    assert dict(kinds.select("kind", "len").iter_rows()) == {"exact": 6, "edited": 15}  # 3 copies each
    assert planted.group_by("query_id").agg(pl.col("kind").n_unique())["kind"].max() == 1  # kinds are disjoint
    assert len(texts) == len(ids) == 50 + 21 and len(set(ids)) == len(ids)
    # the original examples keep their order; planted ids say "planted" and nothing about the query
    assert [t for t, i in zip(texts, ids) if not i.startswith("planted/")] == train
    assert set(planted["example_id"]) == {i for i in ids if i.startswith("planted/")}
    assert not any(q in e for e in planted["example_id"] for q in query_ids)
    by_id, query_text = dict(zip(ids, texts)), dict(zip(query_ids, queries))
    for q, e, kind in planted.iter_rows():
        copy = by_id[e]
        if kind == "exact":
            assert copy == query_text[q]
        else:
            assert copy != query_text[q] and ngram_overlap(query_text[q], copy) > 0.3
    positions = [j for j, i in enumerate(ids) if i.startswith("planted/")]
    assert min(positions) < 40 and max(positions) > 30  # spread over the set, not appended at the end

    again = plant_copies(train, train_ids, queries, query_ids, rates, copies=3, seed=7)
    assert again[0] == texts and again[1] == ids and again[2].equals(planted)
    other = plant_copies(train, train_ids, queries, query_ids, rates, copies=3, seed=8)
    assert other[1] != ids or not other[2].equals(planted)
    assert plant_copies(train, train_ids, queries, query_ids, {"exact": 0.0})[2].is_empty()


def test_recall_at_k_on_a_planted_score_matrix() -> None:
    n = 20
    query_ids, example_ids = ["q0", "q1", "q2"], [f"e{i}" for i in range(n)]
    planted = pl.DataFrame({"query_id": ["q0", "q0", "q1", "q1"], "example_id": ["e3", "e7", "e5", "e9"],
                            "kind": ["exact", "exact", "edited", "edited"]})
    scores = np.zeros((3, n))

    def place(q: int, order: list[int]) -> None:  # the examples in ``order`` take ranks 0, 1, 2, ...
        others = [i for i in range(n) if i not in order]
        scores[q, order + others] = np.linspace(1.0, 0.05, n)

    place(0, [3, 0, 1, 2, 4, 5, 7])  # e3 rank 0, e7 rank 6
    place(1, [0, 1, 5] + list(range(10, 20)) + [9])  # e5 rank 2, e9 rank 13
    result = recall_at_k(scores, query_ids, example_ids, planted, [1, 5, 10])
    assert result["recall_at_k"] == pytest.approx({1: 0.25, 5: 0.5, 10: 0.75})
    assert result["by_kind"]["exact"] == pytest.approx({1: 0.5, 5: 0.5, 10: 1.0})
    assert result["by_kind"]["edited"] == pytest.approx({1: 0.0, 5: 0.5, 10: 0.5})
    assert result["queries"] == 2 and result["planted"] == 4


def test_recall_gives_ties_no_credit_beyond_chance() -> None:
    """All-zero scores (a Lasso that found nothing): copies at the first indices must not be 'found'."""
    n, Q = 400, 40
    planted = pl.DataFrame({"query_id": [f"q{q}" for q in range(Q)], "example_id": [f"e{q % 3}" for q in range(Q)],
                            "kind": ["exact"] * Q})
    result = recall_at_k(np.zeros((Q, n)), [f"q{q}" for q in range(Q)], [f"e{i}" for i in range(n)], planted, [10])
    assert result["recall_at_k"][10] < 0.2  # chance is 10 / 400


def _audit_case():
    """Three queries; the corpus holds an exact copy of q0, an edited copy of q1, and a copy of q2
    that scores low; for every query an unrelated example scores highest."""
    queries = passages(3, seed=1)
    corpus = passages(30, seed=2)
    corpus[10], corpus[11], corpus[12] = queries[0], light_edit(queries[1], np.random.default_rng(0)), queries[2]
    rows = []
    for q in range(3):
        rows += [(f"q{q}", f"e{i}", float(s)) for i, s in zip(range(20, 30), np.linspace(0.2, 0.01, 10))]
        rows += [(f"q{q}", "e5", 5.0)]  # the most influential example, with no text in common
    rows += [("q0", "e10", 1.0), ("q1", "e11", 0.8), ("q2", "e12", -0.5)]  # e12 copies q2 but is not influential
    scores = pl.DataFrame(rows, schema=["query_id", "example_id", "score"], orient="row")  # absent pairs score 0
    return (scores, pl.DataFrame({"query_id": ["q0", "q1", "q2"], "text": queries}),
            pl.DataFrame({"example_id": [f"e{i}" for i in range(30)], "text": corpus}))


def test_audit_flags_influential_copies_and_not_influential_strangers() -> None:
    scores, queries, corpus = _audit_case()
    leaks = audit(scores, queries, corpus, k=5)
    assert {(q, e) for q, e in leaks.select("query_id", "example_id").iter_rows()} == {("q0", "e10"), ("q1", "e11")}
    assert leaks.columns == ["query_id", "example_id", "rank", "score", "z", "overlap", "textual", "shared", "reason"]
    exact = leaks.filter(pl.col("example_id") == "e10").row(0, named=True)
    assert exact["rank"] == 2 and exact["overlap"] == 1.0 and exact["textual"]
    assert "rank 2 of 30" in exact["reason"] and "5-grams" in exact["reason"]
    assert exact["shared"] == queries["text"][0].lower()
    assert 0.3 <= leaks.filter(pl.col("example_id") == "e11")["overlap"][0] < 1.0
    # beyond the top k, a copy is not flagged; an extreme z alone flags only when asked to
    assert audit(scores, queries, corpus, k=1).is_empty()
    with_z = audit(scores, queries, corpus, k=5, z_extreme=4.0)
    strangers = with_z.filter(pl.col("example_id") == "e5")
    assert strangers.height == 3 and not strangers["textual"].any() and "z" in strangers["reason"][0]

    summary = audit_markdown(leaks)
    assert "2 suspected leaks in 2 queries" in summary and "| q0 | e10 | 2 |" in summary
    assert "No suspected leaks" in audit_markdown(audit(scores, queries, corpus, k=1))


def test_bad_inputs_fail_early() -> None:
    train, queries = passages(5), passages(2, seed=1)
    tid, qid = [f"t{i}" for i in range(5)], ["q0", "q1"]
    for bad in ({"exact": 1.5}, {"edited": -0.1}, {"exact": 0.6, "edited": 0.6}, {"paraphrase": 0.1}):
        with pytest.raises(StrideInputError):
            plant_copies(train, tid, queries, qid, bad)
    with pytest.raises(StrideInputError, match="at least one"):
        plant_copies([], [], queries, qid, {"exact": 0.5})
    with pytest.raises(StrideInputError, match="length"):
        plant_copies(train, tid[:3], queries, qid, {"exact": 0.5})
    with pytest.raises(StrideInputError, match="copies"):
        plant_copies(train, tid, queries, qid, {"exact": 0.5}, copies=0)
    with pytest.raises(StrideInputError, match="collide"):
        plant_copies(train, ["planted/00000", *tid[1:]], queries, qid, {"exact": 0.5})
    with pytest.raises(StrideInputError):
        light_edit("   ", np.random.default_rng(0))

    planted = pl.DataFrame({"query_id": ["q0"], "example_id": ["t1"], "kind": ["exact"]})
    with pytest.raises(StrideInputError, match="do not match"):
        recall_at_k(np.zeros((2, 4)), qid, tid, planted, [1])
    with pytest.raises(StrideInputError, match="columns"):
        recall_at_k(np.zeros((2, 5)), qid, tid, planted.drop("kind"), [1])
    with pytest.raises(StrideInputError, match="unknown example"):
        recall_at_k(np.zeros((2, 5)), qid, tid, planted.with_columns(example_id=pl.lit("t9")), [1])
    with pytest.raises(StrideInputError, match="ks"):
        recall_at_k(np.zeros((2, 5)), qid, tid, planted, [0])

    scores, queries_f, corpus = _audit_case()
    with pytest.raises(StrideInputError, match="columns"):
        audit(scores, queries_f, corpus.rename({"text": "body"}))
    with pytest.raises(StrideInputError, match="empty"):
        audit(scores.clear(), queries_f, corpus)
    with pytest.raises(StrideInputError, match="unknown example"):
        stray = pl.DataFrame({"query_id": ["q0"], "example_id": ["nope"], "score": [1.0]})
        audit(scores.vstack(stray), queries_f, corpus)
    with pytest.raises(StrideInputError, match="min_overlap"):
        audit(scores, queries_f, corpus, min_overlap=0.0)


def test_cli_bench_contamination_quick(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    from mlflow.tracking import MlflowClient

    from stride_assets import cli
    from stride_assets.engine.evaluation import contamination_bench

    out = tmp_path / "contam"
    assert cli.main(["bench", "contamination", "--quick", "--no-mlflow", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| stride_logit |" in printed and "recall@10" in printed
    report = json.loads((out / "report.json").read_text())
    methods = {"stride_logit", "repsim", "grad_dot", "tfidf", "kronfluence_ekfac"}
    assert set(report) == methods | {"protocol", "base_model"}
    planted = pl.read_parquet(out / "planted.parquet")
    assert planted.columns == ["query_id", "example_id", "kind"]
    assert planted.height == 8  # 4 + 4 of 40 queries, one copy each
    for name in methods:
        stats = report[name]
        assert {"recall_at_k", "k", "planted", "rates", "seconds"} <= set(stats)
        assert stats["k"] == [1, 5, 10] and set(stats["recall_at_k"]) == {"1", "5", "10"}
        assert stats["planted"] == planted.height and stats["rates"] == {"exact": 0.1, "edited": 0.1}
        by_kind = [v for r in stats["recall_at_k_by_kind"].values() for v in r.values()]
        values = [*stats["recall_at_k"].values(), *by_kind]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert stats["recall_at_k"]["1"] <= stats["recall_at_k"]["5"] <= stats["recall_at_k"]["10"]
    assert report["stride_logit"]["recall_at_k"]["10"] >= 0.5  # chance is 10 / 308
    leaks = pl.read_parquet(out / "audit.parquet")
    flagged_copies = leaks.join(planted, on=["query_id", "example_id"], how="semi").height
    assert flagged_copies == report["stride_logit"]["audit"]["planted_flagged"]
    assert (out / "audit.md").read_text().startswith("# Contamination audit")
    assert (out / "recall_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert report["protocol"]["n"] == 300 + planted.height and report["protocol"]["quick"] is True

    # the MLflow run the CLI logs without --no-mlflow
    run_id = tracking.log_bench(contamination_bench.tracked_run(report, out), mlflow_uri)
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(run_id)
    assert run.data.metrics["stride_logit.recall_at_10"] == report["stride_logit"]["recall_at_k"]["10"]
