"""Bad input fails in the first stage, with a message naming the problem, before any training."""

import polars as pl
import pytest

from stride_assets.engine import pipeline
from stride_assets.engine.store import Store
from stride_assets.engine.config import load_config
from stride_assets.engine.errors import StrideConfigError, StrideInputError


def run_first_stage(tmp_path, **overrides):
    cfg = load_config("micro", overrides)
    shard = pipeline.shard_names(cfg.corpus)[0]
    return pipeline.run_stage("training_corpus", cfg, Store(tmp_path / "store"), log=lambda _: None, shard=shard)


def test_micro_first_stage_passes(tmp_path):
    result = run_first_stage(tmp_path)
    assert result.metadata["rows"] > 50 and result.metadata["shard"] == "part-0000"


def test_bad_design_fails_in_the_corpus_stage(tmp_path):
    with pytest.raises(StrideConfigError, match="too large"):
        run_first_stage(tmp_path, design={"K": 5000, "d": 2})
    with pytest.raises(StrideConfigError, match="d < K"):
        run_first_stage(tmp_path, design={"K": 8, "d": 8})


def test_unknown_local_model_path_fails_in_the_corpus_stage(tmp_path):
    with pytest.raises(StrideInputError, match="not an existing local folder"):
        run_first_stage(tmp_path, model={"path": str(tmp_path / "no-such-model")})


def test_empty_corpus_file(tmp_path):
    path = tmp_path / "empty.parquet"
    pl.DataFrame({"text": []}, schema={"text": pl.Utf8}).write_parquet(path)
    with pytest.raises(StrideInputError, match="empty"):
        run_first_stage(tmp_path, corpus={"source": "files", "paths": [str(path)]})


def test_missing_text_column(tmp_path):
    path = tmp_path / "docs.parquet"
    pl.DataFrame({"body": ["some text that is long enough to keep around"] * 5}).write_parquet(path)
    with pytest.raises(StrideInputError, match="text"):
        run_first_stage(tmp_path, corpus={"source": "files", "paths": [str(path)]})


def test_non_string_rows(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a perfectly normal passage of text here"}\n{"text": 42}\n')
    with pytest.raises(StrideInputError, match="row 1"):
        run_first_stage(tmp_path, corpus={"source": "files", "paths": [str(path)]})


def test_nothing_is_written_when_the_first_stage_fails(tmp_path):
    with pytest.raises(StrideConfigError):
        run_first_stage(tmp_path, design={"K": 5000, "d": 2})
    assert not list((tmp_path / "store").rglob("*.parquet"))


def test_unknown_profile_and_bad_values_are_config_errors():
    with pytest.raises(StrideConfigError, match="unknown profile"):
        load_config("no-such-profile")
    with pytest.raises(StrideConfigError, match="lambda_ratio"):
        load_config("micro", {"recovery": {"lambda_ratio": 1.5}})
    with pytest.raises(StrideConfigError, match="extra|Extra"):
        load_config("micro", {"design": {"k": 3}})


def test_preflight_checks_every_shard_before_any_work(tmp_path):
    from stride_assets.engine.preflight import preflight

    text = "a passage of documentation text that is long enough to keep, number {}"
    pl.DataFrame({"text": [text.format(i) for i in range(40)], "id": [f"e{i}" for i in range(40)]}).write_parquet(
        tmp_path / "a.parquet")
    pl.DataFrame({"text": [text.format(i + 40) for i in range(40)], "id": [f"e{i + 39}" for i in range(40)]}).write_parquet(
        tmp_path / "b.parquet")
    files = {"source": "files", "paths": [str(tmp_path)], "id_column": "id", "max_examples": None}
    with pytest.raises(StrideInputError, match="'e39' is in shard 'a' and in shard 'b'"):
        preflight(load_config("micro", {"corpus": files}))
    (tmp_path / "b.parquet").unlink()
    assert set(preflight(load_config("micro", {"corpus": files}))) == {"a"}
    with pytest.raises(StrideConfigError, match="shard 'a'.*too large|too large.*shard 'a'"):
        preflight(load_config("micro", {"corpus": files, "design": {"K": 5000, "d": 2}}))


def test_shard_names_stay_inside_the_store(tmp_path):
    from stride_assets.engine.shards import key_of, shard_names

    (tmp_path / "data").mkdir()
    pl.DataFrame({"text": ["some passage long enough to be kept as it is"] * 3}).write_parquet(
        tmp_path / "data" / "...parquet")
    # a folder skips hidden files; a file named explicitly is read, and its stem is ".."
    cfg = load_config("micro", {"corpus": {"source": "files", "paths": [str(tmp_path / "data" / "...parquet")]}})
    assert shard_names(cfg.corpus) == ["__"] and key_of("..") == "__"
    with pytest.raises(StrideInputError, match="leave the store"):
        Store(tmp_path / "store").stage("training_corpus", "..")


def test_a_shard_whose_ids_another_stored_shard_has_fails_its_corpus_stage(tmp_path):
    """Shards that arrive one at a time (the sensor starts one shard run each) are checked too."""
    text = "a passage of documentation text that is long enough to keep, number {}"
    data = tmp_path / "data"
    data.mkdir()
    pl.DataFrame({"text": [text.format(i) for i in range(40)], "id": [f"e{i}" for i in range(40)]}).write_parquet(
        data / "a.parquet")
    files = {"source": "files", "paths": [str(data)], "id_column": "id", "max_examples": None}
    store = Store(tmp_path / "store")
    pipeline.run_stage("training_corpus", load_config("micro", {"corpus": files}), store, lambda _: None, shard="a")
    pl.DataFrame({"text": [text.format(i + 50) for i in range(40)], "id": [f"e{i + 30}" for i in range(40)]}
                 ).write_parquet(data / "b.parquet")
    with pytest.raises(StrideInputError, match="'e30' is in shard 'a' and in shard 'b' \\(\\d+ shared\\)"):
        pipeline.run_stage("training_corpus", load_config("micro", {"corpus": files}), store, lambda _: None, shard="b")
