"""The parts of a self-contained HTML report page: escaping, shared n-grams in ``<mark>``, and the
page shell (inline CSS, a client-side filter). No network, no external file: a page opens as it is
from disk, from an MLflow artifact or from an e-mail.

The filter hides every ``[data-card]`` that does not contain the search term (its ``[data-item]``
children too, unless the card's own ``[data-head]`` matches). It reads the term from the search box
and from the URL hash, ``page.html#q=term``, so a link (or a headless browser) can open a page
filtered. Which pages there are: ``html_report.py``.
"""

from __future__ import annotations

import html

from stride_assets.engine.contamination import _WORD, word_ngrams

TEXT_LIMIT = 1200  # characters of a passage shown (a page of a large batch stays a few MB)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#f6f6f8}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:10px 24px;z-index:1}
header h1{font-size:20px;margin:0 0 4px}header p{margin:0 0 6px;color:#555}
#search{width:min(480px,90%);font-size:15px;padding:5px 8px}#count{margin-left:10px;color:#555}
main{padding:12px 24px;max-width:1100px}h2{font-size:17px;margin:22px 0 8px}h3{font-size:14px;margin:10px 0 4px}
article{background:#fff;border:1px solid #e2e2e6;border-radius:6px;padding:10px 14px;margin:10px 0}
.text{white-space:pre-wrap;margin:4px 0}.meta{color:#555;font-size:12px}code{font-size:12px}
ol{padding-left:22px;margin:4px 0}li{margin:6px 0}mark{background:#ffe066;padding:0 1px}
.pos{color:#0a7a2f;font-weight:600}.neg{color:#b3261e;font-weight:600}.none{color:#888;font-style:italic}
article h2{margin-top:0}a{color:#0b57d0}[hidden]{display:none!important}
.tokens{white-space:pre-wrap;margin:4px 0;font-size:13px;color:#333}.tok{border-radius:2px}
"""

JS = """
(function(){
  var box=document.getElementById('search'),count=document.getElementById('count');
  function has(el,t){return el.textContent.toLowerCase().indexOf(t)>=0;}
  function apply(term){
    var t=(term||'').trim().toLowerCase(),shown=0,cards=document.querySelectorAll('[data-card]');
    cards.forEach(function(card){
      var head=card.querySelector('[data-head]'),own=!t||(head?has(head,t):has(card,t)),any=false;
      card.querySelectorAll('[data-item]').forEach(function(item){
        var ok=own||has(item,t);item.hidden=!ok;any=any||ok;});
      card.hidden=!(own||any);if(!card.hidden)shown++;});
    count.textContent=t?shown+' of '+cards.length+' shown':cards.length+(cards.length==1?' entry':' entries');
  }
  function fromHash(){
    var m=/^#q=(.*)$/.exec(location.hash);
    if(m){box.value=decodeURIComponent(m[1].replace(/\\+/g,' '));apply(box.value);return;}
    var target=location.hash.length>1&&document.getElementById(location.hash.slice(1));
    if(target&&target.closest('[hidden]')){box.value='';apply('');target.scrollIntoView();}
  }
  box.addEventListener('input',function(){
    history.replaceState(null,'',box.value?'#q='+encodeURIComponent(box.value):location.pathname+location.search);
    apply(box.value);});
  window.addEventListener('hashchange',fromHash);
  apply('');fromHash();
})();
"""


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def shared_ngrams(a: str, b: str, n: int) -> set[tuple[str, ...]]:
    """The lower-cased word ``n``-grams two texts share (none when either has fewer than ``n`` words)."""
    if min(len(_WORD.findall(a)), len(_WORD.findall(b))) < n:
        return set()
    return word_ngrams(a, n) & word_ngrams(b, n)


def mark(text: str, grams: set[tuple[str, ...]], n: int) -> str:
    """``text`` as HTML, each run of words covered by one of the word ``n``-grams ``grams`` in ``<mark>``."""
    words = list(_WORD.finditer(text))
    lower = [w.group().lower() for w in words]
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(lower[i : i + n]) in grams:
            covered[i : i + n] = [True] * n
    out, pos, i = [], 0, 0
    while i < len(words):
        if not covered[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(words) and covered[j + 1]:
            j += 1
        start, end = words[i].start(), words[j].end()
        out += [esc(text[pos:start]), "<mark>", esc(text[start:end]), "</mark>"]
        pos, i = end, j + 1
    out.append(esc(text[pos:]))
    return "".join(out)


def marked_pair(a: str, b: str, n: int) -> tuple[str, str]:
    """Two texts (clipped) as HTML, the word ``n``-grams they share marked in both."""
    a, b = clip(a), clip(b)
    grams = shared_ngrams(a, b, n)
    return mark(a, grams, n), mark(b, grams, n)


def score_span(score: float) -> str:
    return f'<span class="{"pos" if score > 0 else "neg"}">{score:+.4g}</span>'


def token_heat(tokens: list[str], scores: dict[int, float], shown: int = 3) -> str:
    """A query's tokens as HTML, each scored token (``scores``: position -> score) shaded by its score
    relative to the largest |score| (green: the example lowers that token's loss, red: raises it),
    its score in the tooltip; then the ``shown`` tokens the example helps most."""
    top = max((abs(v) for v in scores.values()), default=0.0) or 1.0
    spans = []
    for pos, tok in enumerate(tokens):
        if pos not in scores:
            spans.append(esc(tok))
            continue
        value = scores[pos]
        rgb = "10,122,47" if value > 0 else "179,38,30"
        spans.append(f'<span class="tok" data-score="{value:.4g}" title="{value:+.3g}" '
                     f'style="background:rgba({rgb},{0.6 * abs(value) / top:.2f})">{esc(tok)}</span>')
    best = sorted((p for p, v in scores.items() if v > 0), key=lambda p: -scores[p])[:shown]
    helps = " ".join(f"<code>{esc(tokens[p].strip() or tokens[p])}</code>" for p in sorted(best))
    return (f'<p class="tokens" data-tokens><span class="meta">per query token: </span>{"".join(spans)}</p>'
            + (f'<p class="meta">helps most: {helps}</p>' if helps else ""))


def page(title: str, summary: str, body: str) -> str:
    """A whole page: ``body`` (HTML) under a header with the title, a summary line and the search box."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(summary)}</p>"
        "<input id=\"search\" type=\"search\" placeholder=\"filter: a word of a query, an example or an id\" "
        "autocomplete=\"off\"><span id=\"count\"></span></header>"
        f"<main>{body}</main><script>{JS}</script></body></html>\n"
    )
