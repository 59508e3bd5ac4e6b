"""The training corpus and the query set, as polars frames.

``load_passages`` turns a ``CorpusConfig`` into a frame ``(example_id, text, source)``: the
Python docs shipped with the interpreter (``pydoc_data.topics``, the offline default), local
files, or a ``datasets`` dataset. Every input problem (missing file, missing column, null or
non-string rows, duplicate ids, empty result) is a ``StrideInputError`` raised before any
expensive work. Tables in ``cfg.format`` ``prompt_completion`` or ``messages`` add
``completion_start`` (and ``messages``): only the completion is scored (``formats``).
``split_holdout`` and ``build_query_set`` derive the query candidates.

Every passage is stripped of surrounding whitespace, and passages shorter than
``cfg.min_chars`` are dropped, whatever the source.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stride_assets.engine import formats
from stride_assets.engine.config import CorpusConfig, FormatFields, QueryConfig
from stride_assets.engine.errors import StrideInputError

TABULAR_SUFFIXES = {".parquet", ".jsonl", ".ndjson", ".json", ".csv"}
TEXT_SUFFIXES = {".txt", ".md"}
SCHEMA = {"example_id": pl.Utf8, "text": pl.Utf8, "source": pl.Utf8}
QUERY_SCHEMA = {"query_id": pl.Utf8, "text": pl.Utf8, "kind": pl.Utf8}
FORMAT_SCHEMA = {"completion_start": pl.Int64, "messages": pl.Utf8}  # instruction and chat rows (``formats``)


# ---------------------------------------------------------------------------------------------
# chunking plain text


def _split_long(paragraph: str, chunk_chars: int) -> list[str]:
    """Cut a paragraph on whitespace into pieces of at most about ``chunk_chars`` characters."""
    pieces: list[str] = []
    words: list[str] = []
    size = 0
    for word in paragraph.split():
        if words and size + 1 + len(word) > chunk_chars:
            pieces.append(" ".join(words))
            words, size = [], 0
        size += len(word) + (1 if words else 0)
        words.append(word)
    if words:
        pieces.append(" ".join(words))
    return pieces


def chunk_text(text: str, chunk_chars: int, min_chars: int) -> list[str]:
    """Pack blank-line separated paragraphs into passages of about ``chunk_chars`` characters.

    A new passage starts when adding the next paragraph would exceed ``chunk_chars``; a paragraph
    longer than ``2 * chunk_chars`` is first cut on whitespace. Passages are stripped and those
    shorter than ``min_chars`` dropped.
    """
    units: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        units.extend(_split_long(para, chunk_chars) if len(para) > 2 * chunk_chars else [para])
    passages: list[str] = []
    current = ""
    for unit in units:
        if current and len(current) + 2 + len(unit) > chunk_chars:
            passages.append(current)
            current = unit
        else:
            current = f"{current}\n\n{unit}" if current else unit
    if current:
        passages.append(current)
    stripped = (p.strip() for p in passages)
    return [p for p in stripped if len(p) >= min_chars]


def _chunk_frame(text: str, prefix: str, width: int, source: str, cfg: CorpusConfig) -> pl.DataFrame:
    if cfg.chunk_tokens is not None:  # one document, cut into token windows later (engine/token_windows.py)
        doc = [text.strip()] if len(text.strip()) >= cfg.min_chars else []
        return pl.DataFrame({"example_id": [prefix] * len(doc), "text": doc, "source": [source] * len(doc)},
                            schema=SCHEMA)
    chunks = chunk_text(text, cfg.chunk_chars, cfg.min_chars)
    ids = [f"{prefix}/{j:0{width}d}" for j in range(len(chunks))]
    return pl.DataFrame({"example_id": ids, "text": chunks, "source": [source] * len(chunks)}, schema=SCHEMA)


# ---------------------------------------------------------------------------------------------
# tabular inputs


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:60] + '...' if len(shown) > 60 else shown}"


def _check_text_values(values: list[Any], column: str, where: str, kind: str = "text") -> None:
    """Every value must be a string: name the first null or non-string row."""
    for i, value in enumerate(values):
        if value is None:
            raise StrideInputError(f"{where}: {kind} column {column!r} is null (or missing) at row {i}")
        if not isinstance(value, str):
            raise StrideInputError(
                f"{where}: {kind} column {column!r} must hold strings, but row {i} is {_describe(value)}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. a lone surrogate from a JSON escape
            raise StrideInputError(f"{where}: {kind} column {column!r} at row {i} is not valid Unicode "
                                   f"({exc.reason} at character {exc.start})") from None


def _read_json_records(path: Path) -> pl.DataFrame:
    """Read .json/.jsonl with the stdlib, check the text column row by row, return a frame.

    polars' JSON readers silently turn mixed rows (``3``, ``["x"]``) into strings; parsing in
    Python keeps each row's real type so that non-string rows are reported, not coerced.
    """
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                n = len(next(iter(data.values()), []))
                data = [{k: v[i] for k, v in data.items()} for i in range(n)]
        else:
            data = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError, IndexError) as exc:
        raise StrideInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise StrideInputError(f"{path}: expected a list of objects (one record per example)")
    columns: dict[str, list[Any]] = {}
    for record in data:
        for key in record:
            columns.setdefault(key, [])
    for key, values in columns.items():
        values.extend(r.get(key) for r in data)
    # keep Python values for every column; the text column is checked later, the id column cast to str
    return pl.DataFrame({k: pl.Series(k, v, dtype=pl.Object) for k, v in columns.items()}) if data else pl.DataFrame()


def _read_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".csv":
            # everything as text: a CSV cell has no type, and "" is an empty string, not a null
            return pl.read_csv(path, infer_schema=False).with_columns(pl.all().fill_null(""))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise StrideInputError(f"{path}: could not be read as {path.suffix[1:]} ({exc})") from exc
    return _read_json_records(path)


def _require_column(df: pl.DataFrame, col: str, where: str, kind: str, setting: str) -> None:
    if col not in df.columns:
        raise StrideInputError(f"{where}: {kind} column {col!r} not found ({setting}); available columns: {df.columns}")


def _string_column(df: pl.DataFrame, col: str, where: str, kind: str = "text") -> list[str]:
    """Column ``col`` as strings: name the first null or non-string row."""
    series = df[col]
    if isinstance(series.dtype, (pl.Categorical, pl.Enum)):
        series = series.cast(pl.Utf8)
    if series.dtype == pl.Utf8:
        if series.null_count():
            raise StrideInputError(f"{where}: {kind} column {col!r} is null at row {int(series.is_null().arg_max())}")
        return series.to_list()
    if series.dtype == pl.Object:
        values = series.to_list()
        _check_text_values(values, col, where, kind)
        return values
    nonnull = series.is_not_null()
    first = int(nonnull.arg_max()) if nonnull.any() else 0
    raise StrideInputError(
        f"{where}: {kind} column {col!r} has dtype {series.dtype}, not strings "
        f"(row {first} is {_describe(series.slice(first, 1).to_list()[0])})"
    )


def _format_columns(df: pl.DataFrame, cfg: CorpusConfig, where: str) -> dict[str, list[Any]]:
    """The scored texts of a table in ``cfg.format``: ``text`` (stripped), plus ``completion_start`` for
    prompt/completion and chat rows and ``messages`` (canonical JSON) for chat rows (``formats``)."""
    if cfg.format == "text":
        _require_column(df, cfg.text_column, where, "text", "corpus.text_column")
        return {"text": [t.strip() for t in _string_column(df, cfg.text_column, where)]}
    if cfg.format == "prompt_completion":
        _require_column(df, cfg.prompt_column, where, "prompt", "format prompt_completion: prompt_column")
        _require_column(df, cfg.completion_column, where, "completion", "format prompt_completion: completion_column")
        pairs = zip(_string_column(df, cfg.prompt_column, where, "prompt"),
                    _string_column(df, cfg.completion_column, where, "completion"))
        rows = [formats.prompt_completion(p, c, f"{where}: row {i} ({cfg.completion_column!r})")
                for i, (p, c) in enumerate(pairs)]
        return {"text": [t for t, _ in rows], "completion_start": [s for _, s in rows]}
    _require_column(df, cfg.messages_column, where, "messages", "format messages: messages_column")
    chats = [formats.check_messages(v, f"{where}: row {i} ({cfg.messages_column!r})")
             for i, v in enumerate(df[cfg.messages_column].to_list())]
    rows = [formats.render_fallback(m) for m in chats]
    return {"text": [t for t, _ in rows], "completion_start": [s for _, s in rows],
            "messages": [formats.canonical(m) for m in chats]}


def _table_frame(df: pl.DataFrame, cfg: CorpusConfig, where: str, default_prefix: str, width: int,
                 source: str) -> pl.DataFrame:
    """Validate the text (or prompt/completion, or messages) and id columns of a table; return its passages."""
    if df.height == 0:
        raise StrideInputError(f"{where} is empty (zero rows)")
    columns = _format_columns(df, cfg, where)
    if cfg.id_column is not None:
        if cfg.id_column not in df.columns:
            raise StrideInputError(f"{where}: id column {cfg.id_column!r} not found; available columns: {df.columns}")
        raw = df[cfg.id_column].to_list()
        if None in raw:
            raise StrideInputError(f"{where}: id column {cfg.id_column!r} is null at row {raw.index(None)}")
        ids = [str(v) for v in raw]
    else:
        ids = [f"{default_prefix}/{i:0{width}d}" for i in range(df.height)]
    out = pl.DataFrame({"example_id": ids, "text": columns.pop("text"), "source": [source] * df.height},
                       schema=SCHEMA).with_columns(pl.Series(k, v, dtype=FORMAT_SCHEMA[k]) for k, v in columns.items())
    return out.filter(pl.col("text").str.len_chars() >= cfg.min_chars)


# ---------------------------------------------------------------------------------------------
# sources


def _pydoc_frames(cfg: CorpusConfig) -> list[pl.DataFrame]:
    from pydoc_data.topics import topics

    return [_chunk_frame(topics[t], f"pydoc/{t}", 3, "pydoc_data.topics", cfg) for t in sorted(topics)]


def _file_frames(cfg: CorpusConfig) -> list[pl.DataFrame]:
    if not cfg.paths:
        raise StrideInputError("corpus source 'files' needs at least one path in corpus.paths")
    paths = expand_paths(cfg.paths)
    for path in paths:  # every path is checked before any file is read
        if not path.is_file():
            raise StrideInputError(f"corpus file {str(path)!r} does not exist (or is not a file)")
        if path.suffix.lower() not in TABULAR_SUFFIXES | TEXT_SUFFIXES:
            raise StrideInputError(
                f"corpus file {str(path)!r}: unsupported suffix {path.suffix!r} "
                f"(use one of {sorted(TABULAR_SUFFIXES | TEXT_SUFFIXES)})"
            )
        if path.suffix.lower() in TEXT_SUFFIXES and cfg.format != "text":
            raise StrideInputError(f"corpus file {str(path)!r}: corpus.format {cfg.format!r} needs a table "
                                   f"({sorted(TABULAR_SUFFIXES)}), not plain text")
    frames = []
    for path in paths:
        if path.suffix.lower() in TEXT_SUFFIXES:
            frames.append(_chunk_frame(path.read_text(), path.stem, 5, path.name, cfg))
        else:
            frames.append(_table_frame(_read_table(path), cfg, f"corpus file {str(path)!r}", path.stem, 6, path.name))
    return frames


def expand_paths(paths: list[str]) -> list[Path]:
    """Corpus paths with every directory replaced by its data files (sorted; hidden files skipped)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in TABULAR_SUFFIXES | TEXT_SUFFIXES)
            if not files:
                raise StrideInputError(f"corpus folder {str(path)!r} has no data files "
                                       f"({sorted(TABULAR_SUFFIXES | TEXT_SUFFIXES)})")
            out.extend(files)
        elif path.is_file():
            out.append(path)
        else:
            raise StrideInputError(f"corpus file {str(path)!r} does not exist (or is not a file)")
    return out


def _hf_frames(cfg: CorpusConfig) -> list[pl.DataFrame]:
    if not cfg.hf_name:
        raise StrideInputError("corpus source 'hf' needs corpus.hf_name (a datasets.load_dataset name or path)")
    where = f"dataset {cfg.hf_name!r} (config {cfg.hf_config!r}, split {cfg.split!r})"
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.split)
    except Exception as exc:  # datasets raises many types (not found, offline, bad split, ...)
        raise StrideInputError(f"{where} could not be loaded: {type(exc).__name__}: {exc}") from exc
    if cfg.format == "text" and cfg.text_column not in ds.column_names:
        raise StrideInputError(f"{where}: text column {cfg.text_column!r} not found; available columns: {ds.column_names}")
    wanted = {"text": (cfg.text_column,), "prompt_completion": (cfg.prompt_column, cfg.completion_column),
              "messages": (cfg.messages_column,)}[cfg.format]
    keep = [c for c in (*wanted, cfg.id_column) if c is not None and c in ds.column_names]
    df = ds.select_columns(keep).to_polars()
    return [_table_frame(df, cfg, where, f"{cfg.hf_name}/{cfg.split}", 7, cfg.hf_name)]


def load_passages(cfg: CorpusConfig) -> pl.DataFrame:
    """The corpus as a frame ``(example_id, text, source)`` with unique, run-stable ids.

    With ``cfg.max_examples`` smaller than the corpus, a seeded random sample of that size is
    kept, in the corpus' original order.
    """
    if cfg.source == "pydoc" and cfg.format != "text":
        raise StrideInputError(f"corpus.format {cfg.format!r} needs a table of rows (source files or hf); "
                               "the pydoc source is plain text")
    if cfg.source == "pydoc":
        frames, where = _pydoc_frames(cfg), "pydoc_data.topics"
    elif cfg.source == "files":
        frames, where = _file_frames(cfg), f"files {cfg.paths}"
    else:
        frames, where = _hf_frames(cfg), f"hf dataset {cfg.hf_name!r}"
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=SCHEMA)
    if df.height == 0:
        raise StrideInputError(
            f"empty corpus: no passage of at least min_chars={cfg.min_chars} characters from {where}"
        )
    dup = df["example_id"].filter(df["example_id"].is_duplicated())
    if dup.len():
        raise StrideInputError(
            f"duplicate example id {dup[0]!r} in {where} ({dup.n_unique()} ids repeat); example ids must be unique"
        )
    if cfg.max_examples is not None and cfg.max_examples < df.height:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(df.height, size=cfg.max_examples, replace=False))
        df = df[keep]
    return df


def split_holdout(df: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Seeded split into ``(train, holdout)``, both in the original order.

    Each example is held out by a hash of ``(seed, example_id)`` falling below ``fraction``, so
    its side does not depend on which other examples (shards) are present: appending a shard
    never moves an existing example between training and holdout. The training part must keep
    at least 2 rows. Token windows (a ``doc_id`` column) are held out by document: a window never
    shares its document with a held-out one, and a document's side is that of its unchunked id.
    """
    if not 0.0 <= fraction < 1.0:
        raise StrideInputError(f"holdout fraction must be in [0, 1), got {fraction}")
    keys = df["doc_id"] if "doc_id" in df.columns else df["example_id"]
    is_holdout = np.array([stable_unit(f"{seed}:{eid}") < fraction for eid in keys], dtype=bool)
    n_train = int((~is_holdout).sum())
    if n_train < 2:
        raise StrideInputError(
            f"holdout fraction {fraction} of {df.height} passages leaves {n_train} for training (need at least 2)"
        )
    return df.filter(pl.Series(~is_holdout)), df.filter(pl.Series(is_holdout))


def stable_unit(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (sha256), the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def _query_file(path_str: str, text_column: str, fmt: FormatFields | None = None) -> pl.DataFrame:
    """The queries of a parquet/jsonl file, read in ``fmt``'s format (default: plain ``text_column``)."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise StrideInputError(f"query file {str(path)!r} does not exist (or is not a file)")
    if path.suffix.lower() not in {".parquet", ".jsonl", ".ndjson"}:
        raise StrideInputError(f"query file {str(path)!r}: unsupported suffix {path.suffix!r} (use .parquet or .jsonl)")
    df = _read_table(path)
    where = f"query file {str(path)!r}"
    fields = {k: getattr(fmt, k) for k in FormatFields.model_fields} if fmt is not None else {}
    cfg = CorpusConfig(text_column=text_column, min_chars=1, id_column="query_id" if "query_id" in df.columns else None,
                       **fields)
    out = _table_frame(df, cfg, where, "file", 4, "file")
    kind = pl.lit("file")
    if "task" in df.columns:  # a task per query: data selection lets tasks take turns
        tasks = df["task"].to_list()
        if out.height != df.height or any(t is None for t in tasks):
            raise StrideInputError(f"{where}: a task column needs a task and a non-empty text on every row")
        kind = pl.Series([str(t) for t in tasks], dtype=pl.Utf8)
    extra = [c for c in FORMAT_SCHEMA if c in out.columns]
    return out.select(pl.col("example_id").alias("query_id"), "text", *extra).with_columns(kind.alias("kind"))


def _prompt_frame(prompts: list[Any]) -> pl.DataFrame:
    """Prompt queries ``prompt/NN``: strings (every token scored) or instruction / chat mappings (``formats``)."""
    rows = [formats.query_value(p, f"query prompt {i}") for i, p in enumerate(prompts)]
    frame = pl.DataFrame({"query_id": [f"prompt/{i:02d}" for i in range(len(rows))], "text": [r[0] for r in rows],
                          "kind": ["prompt"] * len(rows)}, schema=QUERY_SCHEMA)
    if any(start for _, start, _ in rows):
        frame = frame.with_columns(pl.Series("completion_start", [r[1] for r in rows], dtype=pl.Int64))
    if any(m is not None for *_, m in rows):
        frame = frame.with_columns(pl.Series("messages", [r[2] for r in rows], dtype=pl.Utf8))
    return frame


def _stack_queries(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Query parts stacked; instruction and chat columns kept when any part has them (plain rows: start 0)."""
    if not parts:
        return pl.DataFrame(schema=QUERY_SCHEMA)
    queries = pl.concat([p.cast({k: v for k, v in {**QUERY_SCHEMA, **FORMAT_SCHEMA}.items() if k in p.columns})
                         for p in parts], how="diagonal")
    if "completion_start" in queries.columns:
        queries = queries.with_columns(pl.col("completion_start").fill_null(0))
    return queries


def query_frame(values: list[Any], prefix: str = "q") -> pl.DataFrame:
    """Inline queries (``stride attribute``) as a query frame with ids ``{prefix}{i}``."""
    frame = _prompt_frame(values)
    return frame.with_columns(pl.Series("query_id", [f"{prefix}{i}" for i in range(frame.height)], dtype=pl.Utf8))


def build_query_set(holdout: pl.DataFrame, cfg: QueryConfig, text_column: str = "text") -> pl.DataFrame:
    """Queries ``(query_id, text, kind)``: sampled held-out passages, then prompts, then a file
    (kind "holdout", "prompt", "file", or the file's ``task`` column: the tasks of data selection).

    Up to ``cfg.n_holdout`` held-out passages are drawn with ``cfg.seed`` (kept in holdout order,
    query id = example id); prompts get ids ``prompt/NN``; the optional file's rows ``file/NNNN``
    unless it has a ``query_id`` column. Instruction and chat queries (held-out rows of such a corpus,
    mapping prompts, a file in ``cfg.format``) add ``completion_start`` (and ``messages``): their
    completion alone is scored.
    """
    parts: list[pl.DataFrame] = []
    if cfg.n_holdout > 0 and holdout.height > 0:
        if text_column not in holdout.columns:
            raise StrideInputError(f"holdout frame has no column {text_column!r}; columns: {holdout.columns}")
        n = min(cfg.n_holdout, holdout.height)
        keep = np.sort(np.random.default_rng(cfg.seed).choice(holdout.height, size=n, replace=False))
        parts.append(holdout[keep].select(
            pl.col("example_id").cast(pl.Utf8).alias("query_id"),
            pl.col(text_column).alias("text"),
            pl.lit("holdout").alias("kind"),
            *[c for c in FORMAT_SCHEMA if c in holdout.columns],
        ))
    if cfg.prompts:
        parts.append(_prompt_frame(list(cfg.prompts)))
    if cfg.path:
        parts.append(_query_file(cfg.path, text_column, cfg))
    queries = _stack_queries(parts)
    if queries.height == 0:
        raise StrideInputError("empty query set: no held-out passages (n_holdout / holdout_fraction), prompts or query file")
    dup = queries["query_id"].filter(queries["query_id"].is_duplicated())
    if dup.len():
        raise StrideInputError(f"duplicate query id {dup[0]!r}; query ids must be unique")
    return queries
