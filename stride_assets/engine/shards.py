"""Shards and query batches: the blocks a corpus and a query set arrive in.

A shard is a block of the training corpus with its own subset design and operator bank (a
block of the membership matrix), so appending data only trains operators for the new block.
With source ``files`` every file is a shard named by its stem (a folder in ``corpus.paths``
contributes each of its files: dropping a file in the folder appends a shard). Sources without
files of their own (``pydoc``, ``hf``) are cut into consecutive blocks of ``shard_size``.

A query batch is a block of the query set: ``default`` (held-out passages, prompts, the
optional ``queries.path`` file), plus one batch per file in ``queries.batch_dir``. Adding a
batch only measures and recovers that batch.

Names are valid Dagster partition keys (letters, digits, ``_ . -``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl

from stride_assets.engine import corpus as corpus_mod
from stride_assets.engine.config import CorpusConfig, QueryConfig, StrideConfig
from stride_assets.engine.errors import StrideInputError

DEFAULT_BATCH = "default"
QUERY_SUFFIXES = {".parquet", ".jsonl", ".ndjson"}


def key_of(stem: str) -> str:
    """A file stem as a partition key: other characters become '_', and so do leading dots (a key is
    a folder name under the store: ``..`` must not climb out of it)."""
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
    return re.sub(r"^\.+", lambda m: "_" * len(m.group()), key) or "_"


def derive_seed(seed: int, name: str) -> int:
    """A per-shard seed fixed by the configured seed and the shard's name."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")


def _shard_files(cfg: CorpusConfig) -> dict[str, Path]:
    files = corpus_mod.expand_paths(cfg.paths)
    named: dict[str, Path] = {}
    for f in files:
        key = key_of(f.stem)
        if key in named:
            raise StrideInputError(f"two corpus files give the same shard name {key!r}: {named[key]} and {f}")
        named[key] = f
    return named


def load_shards(cfg: CorpusConfig) -> dict[str, pl.DataFrame]:
    """Every shard's passages ``(example_id, text, source)``, in shard order."""
    if cfg.source == "files":
        if not cfg.paths:
            raise StrideInputError("corpus source 'files' needs at least one path in corpus.paths")
        return {name: load_shard(cfg, name, path) for name, path in _shard_files(cfg).items()}
    passages = corpus_mod.load_passages(cfg)
    return {f"part-{i // cfg.shard_size:04d}": passages[i: i + cfg.shard_size]
            for i in range(0, passages.height, cfg.shard_size)}


def load_shard(cfg: CorpusConfig, name: str, path: Path | None = None) -> pl.DataFrame:
    """One shard's passages (for files: only that file is read)."""
    if cfg.source == "files":
        path = path or _shard_files(cfg).get(name)
        if path is None:
            raise StrideInputError(f"no shard {name!r} in {cfg.paths}; shards: {sorted(_shard_files(cfg))}")
        return corpus_mod.load_passages(cfg.model_copy(update={"paths": [str(path)], "max_examples": None}))
    shards = load_shards(cfg)
    if name not in shards:
        raise StrideInputError(f"no shard {name!r}; shards of this corpus: {sorted(shards)}")
    return shards[name]


def shard_names(cfg: CorpusConfig) -> list[str]:
    if cfg.source == "files":
        return list(_shard_files(cfg)) if cfg.paths else []
    return list(load_shards(cfg))


def digest_frame(frame: pl.DataFrame) -> str:
    """Content hash of a passages frame (ids and texts, in order)."""
    h = hashlib.sha256()
    for eid, text in frame.select("example_id", "text").iter_rows():
        h.update(eid.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\1")
    return h.hexdigest()


def shard_digests(cfg: CorpusConfig) -> dict[str, str]:
    """{shard: content hash}: what a sensor compares to notice new and changed shards."""
    if cfg.source == "files":  # hash the files' bytes, without parsing them
        from stride_assets.engine.artifacts import file_digest

        return {name: file_digest(path) for name, path in _shard_files(cfg).items()} if cfg.paths else {}
    return {name: digest_frame(frame) for name, frame in load_shards(cfg).items()}


def shard_digest(cfg: CorpusConfig, name: str, frame: pl.DataFrame) -> str:
    """The digest ``shard_digests`` reports for one shard (recorded with its training_corpus block)."""
    if cfg.source == "files":
        from stride_assets.engine.artifacts import file_digest

        return file_digest(_shard_files(cfg)[name])
    return digest_frame(frame)


def _batch_files(qc: QueryConfig) -> dict[str, Path]:
    if not qc.batch_dir:
        return {}
    folder = Path(qc.batch_dir).expanduser()
    if not folder.is_dir():
        raise StrideInputError(f"queries.batch_dir {str(folder)!r} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in QUERY_SUFFIXES and not f.name.startswith("."))
    named = {key_of(f.stem): f for f in files}
    if DEFAULT_BATCH in named:
        raise StrideInputError(f"query batch file {named[DEFAULT_BATCH]} is named like the built-in batch "
                               f"{DEFAULT_BATCH!r}: rename it")
    return named


def batch_names(cfg: StrideConfig) -> list[str]:
    return [DEFAULT_BATCH, *_batch_files(cfg.queries)]


def batch_digests(cfg: StrideConfig) -> dict[str, str]:
    """{batch: hash of its source}: the default batch follows the query settings, a file its bytes."""
    from stride_assets.engine.artifacts import file_digest

    default = hashlib.sha256(cfg.queries.model_dump_json().encode() + cfg.corpus.model_dump_json().encode())
    return {DEFAULT_BATCH: default.hexdigest(), **{n: file_digest(p) for n, p in _batch_files(cfg.queries).items()}}


def load_batch(cfg: StrideConfig, name: str) -> pl.DataFrame:
    """A query batch ``(query_id, text, kind)``; ids of file batches are prefixed by the batch name."""
    if name == DEFAULT_BATCH:
        passages = pl.concat(list(load_shards(cfg.corpus).values()))
        _train, holdout = corpus_mod.split_holdout(passages, cfg.corpus.holdout_fraction, cfg.corpus.seed)
        return corpus_mod.build_query_set(holdout, cfg.queries)
    files = _batch_files(cfg.queries)
    if name not in files:
        raise StrideInputError(f"no query batch {name!r}; batches: {batch_names(cfg)}")
    frame = corpus_mod.build_query_set(pl.DataFrame(), cfg.queries.model_copy(
        update={"n_holdout": 0, "prompts": [], "path": str(files[name])}))
    return frame.with_columns((pl.lit(f"{name}/") + pl.col("query_id")).alias("query_id"))
