"""Attribution reports people can read: self-contained HTML pages (``html_page.py``) of

- one query batch's influence (``attribution_page``): per query its text and its most helpful
  (score > 0) and most harmful (score < 0) training examples with text, id and score, the word
  n-grams the query and the example share marked in both, and an index from each example to the
  queries it drives;
- the curated dataset (``curation_page``): the examples kept and dropped, with score and reason;
- the contamination audit (``contamination_page``): each flagged (query, example) pair with both
  texts and their shared word n-grams marked.

Pure: frames in, an HTML string out (the stages ``attribution_report`` and ``curation_report``
write them to the store).
"""

from __future__ import annotations

import polars as pl

from stride_assets.engine.contamination import _require_columns
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.html_page import clip, esc, mark, marked_pair, page, score_span, shared_ngrams, token_heat

SHOWN_NGRAM = 3  # word n-grams marked as shared text on the attribution page
MAX_ROWS = 1000  # entries per section of a curated-output page (the rest: in the parquet files)


def top_examples(scores: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each query's ``k`` most helpful (largest positive) and ``k`` most harmful (most negative) scores:
    query_id, side ("helpful"/"harmful"), rank (1 = strongest), example_id, score."""
    return (
        scores.filter(pl.col("score") != 0)
        .with_columns(pl.when(pl.col("score") > 0).then(pl.lit("helpful")).otherwise(pl.lit("harmful")).alias("side"))
        .with_columns(pl.col("score").abs().rank("ordinal", descending=True).over("query_id", "side").alias("rank"))
        .filter(pl.col("rank") <= k)
        .sort("query_id", "side", "rank")
        .select("query_id", "side", pl.col("rank").cast(pl.Int64), "example_id", "score")
    )


def _texts(frame: pl.DataFrame, corpus: pl.DataFrame, what: str) -> pl.DataFrame:
    """``frame`` with the ``text`` of its ``example_id`` s from ``corpus``; an id absent from it is an input error."""
    joined = frame.join(corpus.select("example_id", "text"), on="example_id", how="left")
    missing = joined.filter(pl.col("text").is_null())["example_id"].unique().to_list()
    if missing:
        raise StrideInputError(f"{what} names {len(missing)} example(s) absent from the training corpus, e.g. "
                               f"{missing[:3]}: re-materialize it from the current corpus")
    return joined


def attribution_page(queries: pl.DataFrame, scores: pl.DataFrame, corpus: pl.DataFrame, k: int = 10,
                     batch: str = "", n: int = SHOWN_NGRAM, tokens: pl.DataFrame | None = None,
                     strings: dict[str, list[str]] | None = None) -> str:
    """The page of one query batch. ``queries`` (query_id, text), ``scores`` (query_id, example_id,
    score; absent pairs score 0), ``corpus`` (example_id, text); ``k`` examples per side and query.
    With ``tokens`` (query_id, example_id, position, token_score: ``token_attribution.pair_tokens``)
    and ``strings`` (each query's tokens), a shown pair with token scores also shows the query's
    tokens shaded by how much the example helps each."""
    for frame, cols, name in ((queries, ("query_id", "text"), "queries"),
                              (scores, ("query_id", "example_id", "score"), "scores"),
                              (corpus, ("example_id", "text"), "corpus")):
        _require_columns(frame, cols, name)
    if k < 1:
        raise StrideInputError(f"attribution_page needs k >= 1, got {k}")
    top = _texts(top_examples(scores, k), corpus, "the influence scores")
    heat: dict[tuple[str, str], dict[int, float]] = {}
    if tokens is not None:
        _require_columns(tokens, ("query_id", "example_id", "position", "token_score"), "tokens")
        for qid, eid, pos, value in tokens.select("query_id", "example_id", "position", "token_score").iter_rows():
            heat.setdefault((qid, eid), {})[pos] = value
    by_query = {qid: rows for (qid,), rows in top.partition_by("query_id", as_dict=True).items()}
    anchor_of = {eid: f"ex-{i}" for i, eid in enumerate(dict.fromkeys(top["example_id"].to_list()))}
    query_anchor = {qid: f"q-{i}" for i, qid in enumerate(queries["query_id"].to_list())}
    cards = []
    for qid, qtext in queries.select("query_id", "text").iter_rows():
        rows = by_query.get(qid, top.clear())
        grams = set().union(*(shared_ngrams(clip(qtext), clip(t), n) for t in rows["text"].to_list()))
        sides = []
        for side, heading in (("helpful", "Most helpful (training on it lowers the query's loss)"),
                              ("harmful", "Most harmful (training on it raises the query's loss)")):
            items = [f'<li data-item><a href="#{anchor_of[eid]}"><code>{esc(eid)}</code></a> {score_span(score)} '
                     f'<span class="meta">rank {rank}</span><p class="text">{marked_pair(qtext, text, n)[1]}</p>'
                     + (token_heat(strings[qid], heat[qid, eid]) if (qid, eid) in heat and strings else "") + "</li>"
                     for rank, eid, score, text in rows.filter(pl.col("side") == side)
                     .select("rank", "example_id", "score", "text").iter_rows()]
            sides.append(f"<h3>{heading}</h3>" + (f"<ol>{''.join(items)}</ol>" if items else
                                                   '<p class="none">no example with this sign of influence</p>'))
        cards.append(f'<article data-card id="{query_anchor[qid]}" class="query"><div data-head>'
                     f'<h2>Query <code>{esc(qid)}</code></h2><p class="text">{mark(clip(qtext), grams, n)}</p></div>'
                     f'{"".join(sides)}</article>')
    index = []
    for (eid,), rows in sorted(top.partition_by("example_id", as_dict=True).items(),
                               key=lambda kv: (-kv[1].height, str(kv[0][0]))):
        links = "".join(f'<li data-item><a href="#{query_anchor[qid]}"><code>{esc(qid)}</code></a> {side} #{rank} '
                        f'{score_span(score)}</li>' for qid, side, rank, score in
                        rows.select("query_id", "side", "rank", "score").iter_rows() if qid in query_anchor)
        index.append(f'<article data-card id="{anchor_of[eid]}" class="example"><div data-head><code>{esc(eid)}</code>'
                     f'<p class="text">{esc(clip(rows["text"][0]))}</p></div><ul>{links}</ul></article>')
    with_tokens = len({q for q, _ in heat})
    summary = (f"{queries.height} queries" + (f" of batch {batch}" if batch else "") + f"; for each its {k} most "
               f"helpful and {k} most harmful training examples. Marked: word {n}-grams shared by query and example."
               + (f" Shaded ({with_tokens} queries, prompts first): the query tokens each example helps (green) or "
                  "hurts (red)."
                  if with_tokens else ""))
    body = ("".join(cards) + f'<h2 id="examples">Examples, with the queries they drive ({len(index)})</h2>'
            + "".join(index))
    return page(f"stride attribution report{f': {batch}' if batch else ''}", summary, body)


def curation_page(kept: pl.DataFrame, dropped: pl.DataFrame, version: str = "") -> str:
    """The page of a curated dataset: its kept and dropped examples (example_id, text, reason,
    score_sum; top_queries when there) with the reason for each decision."""
    sections = []
    for name, frame in (("Kept", kept), ("Dropped", dropped)):
        _require_columns(frame, ("example_id", "text", "reason", "score_sum"), name.lower())
        shown = frame.head(MAX_ROWS)
        cards = []
        for row in shown.iter_rows(named=True):
            tops = row.get("top_queries") or []
            top_line = (f'<span class="meta">top example of {esc(", ".join(map(str, tops)))}</span>' if tops else "")
            cards.append(f'<article data-card><div data-head><code>{esc(row["example_id"])}</code> '
                         f'summed influence {score_span(row["score_sum"])} <span class="meta">{esc(row["reason"])}'
                         f'</span> {top_line}</div><p class="text">{esc(clip(row["text"] or ""))}</p></article>')
        more = (f'<p class="meta">showing {shown.height} of {frame.height}; the rest are in the dataset files</p>'
                if frame.height > shown.height else "")
        sections.append(f"<h2>{name} ({frame.height})</h2>{more}" + ("".join(cards) or '<p class="none">none</p>'))
    summary = (f"Curated dataset{f' version {version}' if version else ''}: {kept.height} examples kept "
               f"(each query's most influential), {dropped.height} dropped (strongly harmful across the queries).")
    return page("stride curated dataset", summary, "".join(sections))


def contamination_page(leaks: pl.DataFrame, queries: pl.DataFrame, corpus: pl.DataFrame, n: int) -> str:
    """The page of the contamination audit: each flagged pair (``contamination.audit``'s rows) with
    the query's and the example's text, the word ``n``-grams they share marked in both."""
    _require_columns(leaks, ("query_id", "example_id", "rank", "score", "overlap", "reason"), "leaks")
    _require_columns(queries, ("query_id", "text"), "queries")
    pairs = _texts(leaks, corpus, "the contamination report").join(
        queries.select("query_id", pl.col("text").alias("query_text")), on="query_id", how="left")
    cards = []
    for row in pairs.head(MAX_ROWS).iter_rows(named=True):
        q_html, e_html = marked_pair(row["query_text"] or "", row["text"], n)
        cards.append(f'<article data-card><div data-head><h3>query <code>{esc(row["query_id"])}</code> and example '
                     f'<code>{esc(row["example_id"])}</code></h3><span class="meta">influence rank {row["rank"]}, '
                     f'score </span>{score_span(row["score"])}<span class="meta">, shares {row["overlap"]:.0%} of the '
                     f'query\'s word {n}-grams: {esc(row["reason"])}</span></div>'
                     f'<h4>Query</h4><p class="text">{q_html}</p><h4>Training example</h4>'
                     f'<p class="text">{e_html}</p></article>')
    more = (f'<p class="meta">showing {MAX_ROWS} of {leaks.height}; the rest are in leaks.parquet</p>'
            if leaks.height > MAX_ROWS else "")
    summary = (f"{leaks.height} suspected leaks in {leaks['query_id'].n_unique() if leaks.height else 0} queries: "
               f"highly influential training examples that share text with a query (marked: shared word {n}-grams).")
    return page("stride contamination report", summary, more + ("".join(cards) or '<p class="none">No suspected '
                                                                                  'leaks.</p>'))
