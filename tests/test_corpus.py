"""Corpus loading, validation, holdout split and query set (stride_assets.engine.corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from stride_assets.engine.config import CorpusConfig, QueryConfig
from stride_assets.engine.corpus import build_query_set, chunk_text, load_passages, split_holdout
from stride_assets.engine.errors import StrideInputError

LONG = "A passage of ordinary text that is comfortably longer than the minimum length."


def files_cfg(*paths: Path, **kw) -> CorpusConfig:
    return CorpusConfig(source="files", paths=[str(p) for p in paths], **kw)


# --- pydoc -------------------------------------------------------------------------------------


def test_pydoc_passages_nonempty_unique_stable():
    cfg = CorpusConfig()
    a, b = load_passages(cfg), load_passages(cfg)
    assert a.columns == ["example_id", "text", "source"]
    assert a.height > 500
    assert a["example_id"].n_unique() == a.height
    assert a.equals(b)
    lengths = a["text"].str.len_chars()
    assert lengths.min() >= cfg.min_chars
    assert lengths.max() <= 2 * cfg.chunk_chars
    assert 0.5 * cfg.chunk_chars < lengths.median() <= cfg.chunk_chars
    assert a["example_id"][0].startswith("pydoc/") and set(a["source"]) == {"pydoc_data.topics"}


def test_chunk_text_packs_and_splits():
    paras = ["word " * 20] * 10  # ten paragraphs of ~100 chars
    chunks = chunk_text("\n\n".join(paras), chunk_chars=250, min_chars=10)
    assert all(len(c) <= 250 for c in chunks) and len(chunks) == 5
    huge = " ".join(["token"] * 400)  # one paragraph of ~2400 chars > 2 * 250
    pieces = chunk_text(huge, chunk_chars=250, min_chars=10)
    assert len(pieces) >= 9 and all(len(p) <= 250 for p in pieces)
    assert chunk_text("tiny\n\n\n", chunk_chars=250, min_chars=10) == []


def test_max_examples_seeded_and_ordered():
    full = load_passages(CorpusConfig())
    a = load_passages(CorpusConfig(max_examples=50, seed=3))
    b = load_passages(CorpusConfig(max_examples=50, seed=3))
    c = load_passages(CorpusConfig(max_examples=50, seed=4))
    assert a.height == 50 and a.equals(b) and not a.equals(c)
    order = {eid: i for i, eid in enumerate(full["example_id"])}
    positions = [order[e] for e in a["example_id"]]
    assert positions == sorted(positions)
    assert load_passages(CorpusConfig(max_examples=10**6)).height == full.height


# --- files -------------------------------------------------------------------------------------


def test_files_parquet_jsonl_csv_txt(tmp_path):
    pl.DataFrame({"body": [LONG + " one", LONG + " two", "short"], "key": [10, 11, 12]}).write_parquet(
        tmp_path / "a.parquet"
    )
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": f"{LONG} {i}"}) for i in range(3)) + "\n")
    pl.DataFrame({"body": [LONG + " csv", "123"]}).write_csv(tmp_path / "c.csv")
    (tmp_path / "d.txt").write_text(f"{LONG}\n\n{LONG}\n\n" * 5)

    df = load_passages(files_cfg(tmp_path / "a.parquet", tmp_path / "b.jsonl", tmp_path / "c.csv",
                                 tmp_path / "d.txt", text_column="body", chunk_chars=200))
    by_source = df.group_by("source").len().sort("source")
    assert by_source.to_dict(as_series=False) == {"source": ["a.parquet", "b.jsonl", "c.csv", "d.txt"],
                                                  "len": [2, 3, 1, 5]}
    ids = df["example_id"].to_list()
    assert ids[:2] == ["a/000000", "a/000001"]  # "short" (row 2) dropped by min_chars
    assert ids[2:5] == ["b/000000", "b/000001", "b/000002"]
    assert "c/000000" in ids and "d/00000" in ids
    assert df.schema == pl.Schema({"example_id": pl.Utf8, "text": pl.Utf8, "source": pl.Utf8})

    keyed = load_passages(files_cfg(tmp_path / "a.parquet", text_column="body", id_column="key"))
    assert keyed["example_id"].to_list() == ["10", "11"]


def test_json_records_and_columns(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps([{"text": LONG}, {"text": LONG + "!"}]))
    (tmp_path / "c.json").write_text(json.dumps({"text": [LONG + "?"]}))
    df = load_passages(files_cfg(tmp_path / "r.json", tmp_path / "c.json"))
    assert df["example_id"].to_list() == ["r/000000", "r/000001", "c/000000"]


def test_empty_parquet(tmp_path):
    pl.DataFrame({"text": []}, schema={"text": pl.Utf8}).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(StrideInputError, match="empty"):
        load_passages(files_cfg(tmp_path / "e.parquet"))


def test_all_rows_too_short_is_empty_corpus(tmp_path):
    pl.DataFrame({"text": ["a", "b"]}).write_parquet(tmp_path / "s.parquet")
    with pytest.raises(StrideInputError, match="empty corpus"):
        load_passages(files_cfg(tmp_path / "s.parquet"))


def test_missing_text_column(tmp_path):
    pl.DataFrame({"body": [LONG], "title": ["t"]}).write_parquet(tmp_path / "m.parquet")
    with pytest.raises(StrideInputError) as err:
        load_passages(files_cfg(tmp_path / "m.parquet", text_column="content"))
    msg = str(err.value)
    assert "'content'" in msg and "body" in msg and "title" in msg


@pytest.mark.parametrize(
    "frame",
    [
        pl.DataFrame({"text": [1, 2, 3]}),
        pl.DataFrame({"text": [["a", "b"], ["c"]]}),
    ],
    ids=["int", "list"],
)
def test_non_string_column(tmp_path, frame):
    frame.write_parquet(tmp_path / "n.parquet")
    with pytest.raises(StrideInputError, match=r"row 0 is (int 1|list \['a', 'b'\])"):
        load_passages(files_cfg(tmp_path / "n.parquet"))


def test_mixed_jsonl_row_named(tmp_path):
    rows = [{"text": LONG}, {"text": LONG}, {"text": ["not", "a", "string"]}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(StrideInputError, match=r"row 2 is list"):
        load_passages(files_cfg(tmp_path / "x.jsonl"))


def test_null_row(tmp_path):
    pl.DataFrame({"text": [LONG, None, LONG]}).write_parquet(tmp_path / "z.parquet")
    with pytest.raises(StrideInputError, match="null at row 1"):
        load_passages(files_cfg(tmp_path / "z.parquet"))
    (tmp_path / "z.jsonl").write_text(json.dumps({"text": LONG}) + "\n" + json.dumps({"other": 1}) + "\n")
    with pytest.raises(StrideInputError, match="row 1"):
        load_passages(files_cfg(tmp_path / "z.jsonl"))


def test_path_errors(tmp_path):
    with pytest.raises(StrideInputError, match="does not exist"):
        load_passages(files_cfg(tmp_path / "nope.parquet"))
    (tmp_path / "x.xlsx").write_text("?")
    with pytest.raises(StrideInputError, match="unsupported suffix"):
        load_passages(files_cfg(tmp_path / "x.xlsx"))
    with pytest.raises(StrideInputError, match="at least one path"):
        load_passages(CorpusConfig(source="files"))
    with pytest.raises(StrideInputError, match="hf_name"):
        load_passages(CorpusConfig(source="hf"))


def test_duplicate_ids(tmp_path):
    pl.DataFrame({"text": [LONG, LONG + "2", LONG + "3"], "id": ["a", "b", "a"]}).write_parquet(tmp_path / "d.parquet")
    with pytest.raises(StrideInputError, match="duplicate example id 'a'"):
        load_passages(files_cfg(tmp_path / "d.parquet", id_column="id"))


def test_hf_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"{LONG} {i}"}) for i in range(4)))
    df = load_passages(CorpusConfig(source="hf", hf_name=str(folder)))
    assert df["example_id"].to_list() == [f"{folder}/train/{i:07d}" for i in range(4)]
    with pytest.raises(StrideInputError, match="could not be loaded"):
        load_passages(CorpusConfig(source="hf", hf_name=str(tmp_path / "missing")))


# --- holdout and queries -----------------------------------------------------------------------


def test_split_holdout():
    df = load_passages(CorpusConfig(max_examples=100))
    train, hold = split_holdout(df, 0.1, seed=0)
    train2, hold2 = split_holdout(df, 0.1, seed=0)
    assert 4 <= hold.height <= 18 and train.height + hold.height == 100
    assert train.equals(train2) and hold.equals(hold2)
    # an example's side is its own: splitting a part of the corpus puts it on the same side
    part_train, part_hold = split_holdout(df.head(40), 0.1, seed=0)
    assert set(part_hold["example_id"]) == set(hold["example_id"]) & set(df.head(40)["example_id"])
    assert set(part_train["example_id"]) == set(train["example_id"]) & set(df.head(40)["example_id"])
    assert not hold.equals(split_holdout(df, 0.1, seed=1)[1])
    assert set(train["example_id"]).isdisjoint(hold["example_id"])
    assert split_holdout(df, 0.0, seed=0)[1].height == 0
    with pytest.raises(StrideInputError, match="at least 2"):
        split_holdout(df.head(2), 0.5, seed=0)


def test_build_query_set(tmp_path):
    df = load_passages(CorpusConfig(max_examples=60))
    _, hold = split_holdout(df, 0.5, seed=0)
    pl.DataFrame({"text": ["extra query one", "extra query two"]}).write_parquet(tmp_path / "q.parquet")
    cfg = QueryConfig(n_holdout=5, prompts=["p zero", "p one"], path=str(tmp_path / "q.parquet"))
    q = build_query_set(hold, cfg)
    assert q.columns == ["query_id", "text", "kind"]
    assert q["kind"].to_list() == ["holdout"] * 5 + ["prompt"] * 2 + ["file"] * 2
    assert set(q["query_id"][:5]) <= set(hold["example_id"])
    assert q["query_id"][5:].to_list() == ["prompt/00", "prompt/01", "file/0000", "file/0001"]
    assert q.equals(build_query_set(hold, cfg))

    (tmp_path / "q.jsonl").write_text(json.dumps({"query_id": "mine", "text": "a query"}) + "\n")
    only_file = build_query_set(hold.head(0), QueryConfig(n_holdout=0, prompts=[], path=str(tmp_path / "q.jsonl")))
    assert only_file["query_id"].to_list() == ["mine"]

    with pytest.raises(StrideInputError, match="empty query set"):
        build_query_set(hold, QueryConfig(n_holdout=0, prompts=[]))
    with pytest.raises(StrideInputError, match="prompt 1"):
        build_query_set(hold, QueryConfig.model_construct(n_holdout=0, prompts=["ok", 7], path=None, seed=0))


def test_query_file_task_column_becomes_the_kind(tmp_path):
    from stride_assets.engine.config import QueryConfig
    from stride_assets.engine.corpus import build_query_set

    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "how do I open a file", "task": "io"}\n{"text": "what is a lambda", "task": "functions"}\n')
    queries = build_query_set(pl.DataFrame(), QueryConfig(n_holdout=0, prompts=[], path=str(path)))
    assert queries["kind"].to_list() == ["io", "functions"]
    path.write_text('{"text": "how do I open a file", "task": "io"}\n{"text": "what is a lambda", "task": null}\n')
    with pytest.raises(StrideInputError, match="task"):
        build_query_set(pl.DataFrame(), QueryConfig(n_holdout=0, prompts=[], path=str(path)))
