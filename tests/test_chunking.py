"""Long documents as token windows (``corpus.chunk_tokens``) and influence per document.

Windows must cover a planted document's tokens exactly, with the configured overlap and ids fixed by
the document; bad settings fail when the config loads; per-document sums and maxes follow a planted
score table (an unscored chunk counts as 0); and one micro-profile run on a file of long documents
stores every window with its document and writes ``doc_scores``.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from stride_assets.engine import documents, lm, pipeline
from stride_assets.engine import token_windows as tw
from stride_assets.engine.config import CorpusConfig, load_config
from stride_assets.engine.contamination import leaks_by_document
from stride_assets.engine.corpus import load_passages, split_holdout
from stride_assets.engine.errors import StrideConfigError
from stride_assets.engine.store import Store

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon omega".split()


def _long_text(seed: int, n_words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * (i % 5 + 1)) % len(WORDS)] for i in range(n_words))


@pytest.fixture(scope="module")
def tokenizer():
    return lm.train_tokenizer([_long_text(s, 200) for s in range(4)], 300)


def test_spans_cover_the_document_with_the_overlap() -> None:
    assert tw.spans(100, 32, 8) == [(0, 32), (24, 56), (48, 80), (68, 100)]
    assert tw.spans(10, 32, 8) == [(0, 10)]  # a short document is one window
    assert tw.spans(64, 32, 0) == [(0, 32), (32, 64)]
    for n, size, overlap in ((1000, 24, 4), (97, 16, 15), (33, 32, 0)):
        got = tw.spans(n, size, overlap)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(e - s == size for s, e in got)
        assert all(b[0] - a[0] == size - overlap for a, b in zip(got[:-2], got[1:-1]))  # steady stride
        assert all(a[1] - b[0] >= overlap for a, b in zip(got, got[1:]))  # the last one may overlap more
    with pytest.raises(StrideConfigError):
        tw.spans(10, 4, 4)


def test_windows_rebuild_a_planted_document_and_keep_their_ids(tokenizer) -> None:
    long_doc, short_doc = _long_text(1, 300), "alpha beta gamma"
    docs = pl.DataFrame({"example_id": ["long", "short"], "text": [long_doc, short_doc], "source": ["t", "t"]})
    win = tw.cut(docs, tokenizer, 16, 5)
    ids = tokenizer(long_doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 16 * 5  # really long
    mine = win.filter(pl.col("doc_id") == "long").sort("chunk_index")
    assert mine["example_id"].to_list() == [f"long#{i:04d}" for i in range(mine.height)]
    assert mine["token_start"][0] == 0 and mine["token_end"][-1] == len(ids)
    assert (mine["token_end"] - mine["token_start"]).to_list() == [16] * mine.height
    # each window's text re-encodes to its span of the document (these words never merge across a cut)
    rebuilt: list[int] = []
    for text, start, end, exact in mine.select("text", "token_start", "token_end", "tokens_exact").iter_rows():
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert exact and piece == ids[start:end]
        rebuilt = rebuilt[:start] + piece
    assert rebuilt == ids
    assert win.filter(pl.col("doc_id") == "short")["text"].to_list() == [short_doc]  # fits: kept whole
    # ids depend only on the document: another document in front changes nothing
    more = pl.concat([pl.DataFrame({"example_id": ["other"], "text": [_long_text(2, 50)], "source": ["t"]}), docs])
    again = tw.cut(more, tokenizer, 16, 5).filter(pl.col("doc_id") != "other")
    assert again.drop("tokens_exact").equals(win.drop("tokens_exact"))


def test_bad_window_settings_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        CorpusConfig(chunk_tokens=1)
    with pytest.raises(ValueError, match="chunk_overlap=8 must be smaller"):
        CorpusConfig(chunk_tokens=8, chunk_overlap=8)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        CorpusConfig(chunk_tokens=8, chunk_overlap=-1)
    with pytest.raises(ValueError, match="plain-text documents"):
        CorpusConfig(chunk_tokens=8, format="prompt_completion")
    with pytest.raises(StrideConfigError, match="exceeds model.max_length=32"):
        load_config("micro", {"corpus": {"chunk_tokens": 33}})
    cfg = load_config("micro", {"corpus": {"chunk_tokens": 32}})

    class WithBos:  # a tokenizer that adds a BOS token: a full window no longer fits
        def num_special_tokens_to_add(self) -> int:
            return 1

    with pytest.raises(StrideConfigError, match="special token"):
        tw.check_fits(WithBos(), cfg)
    missing = load_config("micro", {"corpus": {"chunk_tokens": 16}, "model": {"tokenizer_path": str(tmp_path / "no")}})
    with pytest.raises(Exception, match="not an existing local folder"):
        tw.tokenizer_for(missing, None)


def test_documents_are_held_out_whole(tokenizer) -> None:
    docs = load_passages(CorpusConfig(chunk_tokens=32, max_examples=30))
    assert docs["example_id"].str.starts_with("pydoc/").all() and not docs["example_id"].str.contains("/0").any()
    win = tw.cut(docs, tokenizer, 32, 8)
    train, holdout = split_holdout(win, 0.3, 0)
    assert holdout.height and set(train["doc_id"]).isdisjoint(holdout["doc_id"])
    doc_train, _ = split_holdout(docs, 0.3, 0)
    assert set(train["doc_id"]) == set(doc_train["example_id"])  # the same side as the whole document


CORPUS = pl.DataFrame({"example_id": ["A#0000", "A#0001", "A#0002", "B#0000", "B#0001", "C#0000"],
                       "doc_id": ["A", "A", "A", "B", "B", "C"], "chunk_index": [0, 1, 2, 0, 1, 0],
                       "text": ["a0", "a1", "a2", "b0", "b1", "c0"]})


def test_doc_scores_sum_and_max_over_chunks() -> None:
    scores = pl.DataFrame({"query_id": ["q1"] * 4 + ["q2", "q2"],
                           "example_id": ["A#0000", "A#0001", "B#0000", "B#0001", "A#0002", "C#0000"],
                           "score": [0.5, -0.2, -0.1, -0.3, -0.4, 0.25]})
    got = {(r["query_id"], r["doc_id"]): r for r in documents.doc_scores(scores, CORPUS).iter_rows(named=True)}
    assert set(got) == {("q1", "A"), ("q1", "B"), ("q2", "A"), ("q2", "C")}
    assert got["q1", "A"]["score_sum"] == pytest.approx(0.3) and got["q1", "A"]["score_max"] == pytest.approx(0.5)
    assert got["q1", "B"]["score_sum"] == pytest.approx(-0.4) and got["q1", "B"]["score_max"] == pytest.approx(-0.1)
    # A's other two chunks are unscored (0) for q2: its max is 0, not the one negative score
    assert got["q2", "A"]["score_sum"] == pytest.approx(-0.4) and got["q2", "A"]["score_max"] == 0.0
    assert (got["q2", "A"]["chunks"], got["q2", "A"]["scored_chunks"], got["q1", "B"]["chunks"]) == (3, 1, 2)
    assert got["q2", "C"]["score_max"] == pytest.approx(0.25)
    # an unchunked corpus: every example is its own document
    flat = CORPUS.select("example_id", "text")
    same = documents.doc_scores(scores, flat)
    joined = same.join(scores, left_on=["query_id", "doc_id"], right_on=["query_id", "example_id"])
    assert joined.height == same.height == scores.height and (joined["chunks"] == 1).all()
    assert (joined["score_sum"] - joined["score"]).abs().max() < 1e-6
    assert joined.select((pl.col("score_max") - pl.col("score")).abs().max()).item() < 1e-6
    assert documents.with_doc_id(scores, flat)["doc_id"].to_list() == scores["example_id"].to_list()


def test_curation_and_leaks_per_document() -> None:
    decided = pl.DataFrame({"example_id": ["A#0000", "A#0001", "B#0000", "C#0000"],
                            "decision": ["keep", "drop", "keep", "drop"]})
    scores = pl.DataFrame({"query_id": ["q"] * 4, "example_id": ["A#0000", "A#0001", "B#0001", "C#0000"],
                           "score": [1.0, -2.0, 0.5, -1.0]})
    summary = {r["doc_id"]: r for r in documents.decision_summary(decided, scores, CORPUS).iter_rows(named=True)}
    assert {d: (r["chunks"], r["kept"], r["dropped"], r["decision"]) for d, r in summary.items()} == {
        "A": (3, 1, 1, "mixed"), "B": (2, 1, 0, "keep"), "C": (1, 0, 1, "drop")}
    assert summary["A"]["score_sum"] == pytest.approx(-1.0) and summary["B"]["score_sum"] == pytest.approx(0.5)
    leaks = documents.with_doc_id(pl.DataFrame({
        "query_id": ["q", "q", "q"], "example_id": ["A#0002", "A#0000", "B#0000"], "rank": [3, 1, 2],
        "score": [0.2, 0.5, 0.3], "overlap": [0.4, 0.9, 0.35]}), CORPUS)
    by_doc = leaks_by_document(leaks)
    assert by_doc.select("doc_id", "chunks", "rank", "overlap").rows() == [("A", 2, 1, 0.9), ("B", 1, 2, 0.35)]
    assert by_doc["example_ids"][0].to_list() == ["A#0000", "A#0002"]


def test_micro_run_on_long_documents(tmp_path: Path, one_torch_thread: None) -> None:
    from pydoc_data.topics import topics

    rows = [{"id": f"doc{i:02d}", "text": topics[t][:700]} for i, t in enumerate(sorted(topics)[:14])]
    (tmp_path / "long.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config("micro", {"corpus": {"source": "files", "paths": [str(tmp_path / "long.jsonl")],
                                           "id_column": "id", "chunk_tokens": 24, "chunk_overlap": 4,
                                           "holdout_fraction": 0.15}})
    store = Store(tmp_path / "store")
    results = pipeline.run_all(cfg, store, log=lambda _: None)
    meta = results["training_corpus"][0].metadata
    assert meta["documents"] == 14 and meta["windows"] > 5 * 14

    stored = pl.concat([store.read_corpus("long"), store.read_corpus("long", "holdout")], how="diagonal")
    assert stored.height == meta["windows"]
    by_id = {r["id"]: r["text"].strip() for r in rows}  # the corpus strips every document
    tok = tw.tokenizer_for(cfg, store)
    model_tok = store.load_base_model()[1]
    assert tok.get_vocab() == model_tok.get_vocab()  # the base model reads the windows' tokenizer
    for doc_id, part in stored.group_by("doc_id"):
        part = part.sort("chunk_index")
        ids = tok(by_id[doc_id[0]], add_special_tokens=False)["input_ids"]
        assert part["example_id"].to_list() == [tw.window_id(doc_id[0], i) for i in range(part.height)]
        assert [(s, e) for s, e in part.select("token_start", "token_end").iter_rows()] == tw.spans(len(ids), 24, 4)
    assert stored["tokens_exact"].mean() > 0.9

    train = store.read_train(["long"])
    scores, per_doc = store.read_scores(["default"]), store.read_doc_scores(["default"])
    assert per_doc.height and set(per_doc["doc_id"]) <= set(train["doc_id"])
    assert scores.join(train.select("example_id", "doc_id"), on="example_id")["doc_id"].equals(scores["doc_id"])
    expected = scores.group_by("query_id", "doc_id").agg(pl.col("score").cast(pl.Float64).sum())
    check = per_doc.join(expected, on=["query_id", "doc_id"])
    assert check.height == per_doc.height and (check["score_sum"] - check["score"]).abs().max() < 1e-9
    assert (per_doc["score_max"] <= per_doc["score_sum"].abs().max() + 1e-9).all()

    kept = store.read_dataset("curated_dataset", "keep")
    assert kept.height and "doc_id" in kept.columns
    assert (kept["doc_id"] == kept["example_id"].str.replace(r"#\d{4}$", "")).all()
    curated = pl.read_parquet(store.file("curated_documents"))
    assert curated["kept"].sum() == kept.height and set(curated["doc_id"]) <= set(train["doc_id"])
    assert "doc_id" in pl.read_parquet(store.file("leaks")).columns
    assert store.file("leak_documents").is_file()
