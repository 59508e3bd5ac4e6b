"""Long documents as token windows: every document cut into examples of ``corpus.chunk_tokens`` tokens.

With ``corpus.chunk_tokens`` set, ``corpus.load_passages`` yields whole documents (a table row, a
text file, a pydoc topic) and ``cut`` turns each into windows of ``chunk_tokens`` tokens, neighbours
sharing ``chunk_overlap`` tokens; the last window is aligned to the document's end (so it is full,
and may share more than ``chunk_overlap`` tokens with the one before). Every window is one training
example ``<doc_id>#<chunk_index:04d>`` with its document's map: ``doc_id``, ``chunk_index`` and the
token span ``[token_start, token_end)`` in the document's encoding. A document no longer than a
window stays one example. Each window is decoded back to ``text``, so the rest of the pipeline
reads text as before; ``tokens_exact`` says whether re-encoding that text gives the window's tokens
again. Byte-level BPE may merge differently at a window's edges, or a window may cut a multi-byte
character (decoded as U+FFFD): such a window is kept as decoded (``tokens_exact`` false), and the
stage reports how many there are and how many re-encode to more than the model reads.

The tokenizer (``tokenizer_for``) is ``model.tokenizer_path`` / ``model.path``'s (only the tokenizer
is loaded). For the tiny default the byte-level BPE is trained here, once per store, on the
training documents present (as the tiny model itself: frozen once built), and saved as the
``window_tokenizer`` artifact; ``base_model`` then trains the tiny model with that same tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import polars as pl

from stride_assets.engine.config import StrideConfig
from stride_assets.engine.errors import StrideConfigError, StrideInputError

WINDOW_SCHEMA = {"example_id": pl.Utf8, "text": pl.Utf8, "source": pl.Utf8, "doc_id": pl.Utf8,
                 "chunk_index": pl.Int64, "token_start": pl.Int64, "token_end": pl.Int64, "tokens_exact": pl.Boolean}


def spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` covering ``0..n_tokens``: windows of ``size`` tokens advancing by
    ``size - overlap``, the last one aligned to the end (one span when the document fits in a window)."""
    if size < 2 or not 0 <= overlap < size:
        raise StrideConfigError(f"token windows need size >= 2 and 0 <= overlap < size (got {size}, {overlap})")
    if n_tokens <= size:
        return [(0, n_tokens)]
    out, start = [], 0
    while start + size < n_tokens:
        out.append((start, start + size))
        start += size - overlap
    out.append((n_tokens - size, n_tokens))
    return out


def window_id(doc_id: str, index: int) -> str:
    """A window's example id: fixed by its document's id and its place in it."""
    return f"{doc_id}#{index:04d}"


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def cut(docs: pl.DataFrame, tokenizer: Any, size: int, overlap: int) -> pl.DataFrame:
    """``docs`` (example_id = the document's id, text, source) as token windows (``WINDOW_SCHEMA``), in
    document order. Documents of fewer than 2 tokens are dropped (no next-token target)."""
    rows: dict[str, list[Any]] = {k: [] for k in WINDOW_SCHEMA}
    pieces: list[list[int]] = []
    for doc_id, text, source, ids in zip(docs["example_id"], docs["text"], docs["source"],
                                         _encode(tokenizer, docs["text"].to_list())):
        if len(ids) < 2:
            continue
        for index, (start, end) in enumerate(spans(len(ids), size, overlap)):
            pieces.append(ids[start:end])
            whole = (start, end) == (0, len(ids))
            rows["text"].append(text if whole else tokenizer.decode(pieces[-1], clean_up_tokenization_spaces=False))
            for key, value in (("example_id", window_id(doc_id, index)), ("source", source), ("doc_id", doc_id),
                               ("chunk_index", index), ("token_start", start), ("token_end", end)):
                rows[key].append(value)
    rows["tokens_exact"] = [again == piece for again, piece in zip(_encode(tokenizer, rows["text"]), pieces)]
    return pl.DataFrame(rows, schema=WINDOW_SCHEMA)


def check_fits(tokenizer: Any, cfg: StrideConfig) -> None:
    """A window plus the special tokens the tokenizer adds must fit in ``model.max_length``."""
    extra = int(tokenizer.num_special_tokens_to_add()) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    if cfg.corpus.chunk_tokens is not None and cfg.corpus.chunk_tokens + extra > cfg.model.max_length:
        raise StrideConfigError(f"corpus.chunk_tokens={cfg.corpus.chunk_tokens} plus the {extra} special token(s) "
                                f"the tokenizer adds exceeds model.max_length={cfg.model.max_length}: lower "
                                "chunk_tokens")


@lru_cache(maxsize=4)
def _pretrained(path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise StrideInputError(f"tokenizer {path!r} for corpus.chunk_tokens could not be loaded (not a local "
                               f"folder, and not available from the hub) [{type(exc).__name__}: {exc}]") from exc


def tokenizer_for(cfg: StrideConfig, store: Any | None, persist: bool = True) -> Any:
    """The tokenizer windows are counted in: the configured model's, or the tiny default's, trained on
    the training documents and kept in ``store`` as ``window_tokenizer`` (read from there once it is;
    trained in memory, the same tokenizer, without a store or with ``persist`` false)."""
    mc = cfg.model
    if mc.tokenizer_path or mc.path:
        from stride_assets.engine import lm

        lm.check_model_path(mc.path, mc.tokenizer_path)
        return _pretrained(mc.tokenizer_path or mc.path, mc.trust_remote_code)
    from transformers import PreTrainedTokenizerFast

    from stride_assets.engine import corpus as corpus_mod
    from stride_assets.engine import lm
    from stride_assets.engine import shards as shards_mod
    from stride_assets.engine.artifacts import atomic_dir

    path = store.file("window_tokenizer") if store is not None else None
    if path is not None and path.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(str(store.verify(path)))
    docs = pl.concat(list(shards_mod.load_shards(cfg.corpus).values()))
    train, _ = corpus_mod.split_holdout(docs, cfg.corpus.holdout_fraction, cfg.corpus.seed)
    tokenizer = lm.train_tokenizer(train["text"].to_list(), mc.tiny.vocab_size)
    if path is None or not persist:
        return tokenizer
    with atomic_dir(path) as tmp:
        tokenizer.save_pretrained(tmp)
    store.seal(path)
    store.write_args("window_tokenizer", {"vocab_size": mc.tiny.vocab_size, "documents": train.height})
    return PreTrainedTokenizerFast.from_pretrained(str(path))  # as every later reader gets it


def cutter(cfg: StrideConfig, store: Any | None, persist: bool = True) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """A function cutting a documents frame into token windows (``cut``) when ``corpus.chunk_tokens`` is
    set, else returning it as it is; the tokenizer is resolved once (``tokenizer_for``)."""
    cc = cfg.corpus
    if cc.chunk_tokens is None:
        return lambda frame: frame
    tokenizer = tokenizer_for(cfg, store, persist)
    check_fits(tokenizer, cfg)
    return lambda frame: cut(frame, tokenizer, cc.chunk_tokens, cc.chunk_overlap)


def windows_of(cfg: StrideConfig, store: Any | None, passages: pl.DataFrame) -> pl.DataFrame:
    """``passages`` cut into token windows when ``corpus.chunk_tokens`` is set (else as they are)."""
    return cutter(cfg, store)(passages)


def summary(windows: pl.DataFrame) -> dict[str, Any]:
    """Metadata of a windowed corpus: documents, windows, and windows whose text re-encodes differently."""
    if "doc_id" not in windows.columns:
        return {}
    return {"documents": int(windows["doc_id"].n_unique()), "windows": windows.height,
            "windows_not_exact": int((~windows["tokens_exact"]).sum()) if windows.height else 0}
