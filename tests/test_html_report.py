"""The HTML reports: rendered from planted frames, then opened in headless Chromium (what its JS did
to the DOM, and a screenshot). ``make setup`` installs Chromium; without it these tests fail.
That the pipeline writes the pages (and Dagster / MLflow link them) is checked on the shared
micro run in ``test_integration.py``."""

import io
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.html_report import attribution_page, contamination_page, curation_page, top_examples

ZEBRA = "zebra jumps over the lazy"  # planted: shared by q0 and its most helpful example e0
QUERIES = pl.DataFrame({"query_id": ["q0", "q1", "q2"], "text": [
    f"Why does the quick {ZEBRA} fence every morning?",
    "Python <lists> & tuples hold items in order.",
    "How are dictionaries hashed in CPython?",
]})
TRAIN = pl.DataFrame({"example_id": ["e0", "e1", "e2", "e3", "e4"], "text": [
    f"In the story a {ZEBRA} dog, then sleeps.",
    "<script>alert('x')</script> lists & tuples hold items",
    "Dictionaries are hashed by the hash of their keys.",
    "An unrelated passage about the weather.",
    "Another passage, never scored.",
]})
SCORES = pl.DataFrame({
    "query_id": ["q0", "q0", "q0", "q1", "q1", "q2", "q2"],
    "example_id": ["e0", "e3", "e1", "e1", "e3", "e2", "e3"],
    "score": [0.9123456, 0.05, -0.4321, 0.25, -0.125, 0.5, -0.0625],
})

# planted per-token scores of (q0, e0), targets 1..8: it helps " zebra", " lazy", " jumps" most, hurts " does";
# the first token "<Why>" is no target; (q0, e1) has no token scores
Q0_TOKENS = ["<Why>", " does", " the", " quick", " zebra", " jumps", " over", " the", " lazy"]
TOKENS = pl.DataFrame({"query_id": ["q0"] * 8, "example_id": ["e0"] * 8, "position": list(range(1, 9)),
                       "token_score": [-0.5, 0.1, 0.0, 2.0, 0.3, 0.2, 0.1, 1.0]})


class Elements(HTMLParser):
    """Start tags with their attributes, and the text under each element with an id."""

    def __init__(self, document: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self.all_text = ""
        self._open: list[tuple[str, str | None]] = []
        self.feed(document)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "input", "br", "link", "img"):
            self._open.append((tag, dict(attrs).get("id")))

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.all_text += data
        for _, ident in self._open:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data

    def by_id(self, ident: str) -> dict[str, str | None]:
        return next(attrs for _, attrs in self.tags if attrs.get("id") == ident)

    def hidden(self, ident: str) -> bool:
        return "hidden" in self.by_id(ident)


def _browse(chromium: str, page: Path, tmp_path: Path, *args: str, fragment: str = "") -> str:
    """Chromium's stdout for ``page`` opened headless (``fragment``: the URL hash), its JS run first."""
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, page.as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_top_examples_keeps_k_per_side_strongest_first() -> None:
    top = top_examples(SCORES, 1)
    assert top.filter(pl.col("query_id") == "q0").select("side", "example_id").rows() == [
        ("harmful", "e1"), ("helpful", "e0")]
    assert top.height == 6 and set(top["rank"]) == {1}
    assert top_examples(SCORES, 5).filter(pl.col("query_id") == "q0", pl.col("side") == "helpful")[
        "example_id"].to_list() == ["e0", "e3"]


def test_attribution_page_is_self_contained_escaped_and_marked() -> None:
    page = attribution_page(QUERIES, SCORES, TRAIN, k=3, batch="b<1>")
    assert page.count(f"<mark>{ZEBRA}</mark>") == 2  # in the query and in its helpful example
    assert page.count("<mark>") == 2 + 2  # and "lists & tuples hold items" (q1, e1); nothing else is marked
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Python &lt;<mark>lists&gt; &amp; tuples hold items</mark> in order." in page and "b&lt;1&gt;" in page
    assert re.search(r"""(src|href)=["'](?!#)""", page) is None  # no external file, no network
    assert "+0.9123" in page and "-0.4321" in page
    assert "e4" not in page  # never scored: not shown
    assert page.count("<script>") == 1  # the page's own filter


def test_token_shading_of_the_shown_pairs() -> None:
    page = attribution_page(QUERIES, SCORES, TRAIN, k=3, tokens=TOKENS, strings={"q0": Q0_TOKENS})
    assert page.count("data-tokens") == 1  # only the pair with token scores
    e0 = page.split('<code>e0</code>')[1].split("</li>")[0]
    spans = re.findall(r'<span class="tok" data-score="([^"]+)" title="[^"]+" style="background:rgba\(([\d,]+),([\d.]+)\)">'
                       r'([^<]*)</span>', e0)
    assert [float(v) for v, *_ in spans] == TOKENS["token_score"].to_list()  # every scored token, in order
    assert spans[3] == ("2", "10,122,47", "0.60", " zebra") and spans[0][1] == "179,38,30"  # green max, red harm
    assert spans[2][2] == "0.00" and "&lt;Why&gt;" in e0 and "&lt;Why&gt;</span>" not in e0  # no target: plain
    assert "helps most: <code>zebra</code> <code>jumps</code> <code>lazy</code>" in e0  # top 3, in query order
    with pytest.raises(StrideInputError, match="lacks columns"):
        attribution_page(QUERIES, SCORES, TRAIN, tokens=TOKENS.drop("position"), strings={"q0": Q0_TOKENS})


def test_bad_input_fails_early() -> None:
    with pytest.raises(StrideInputError, match="lacks columns"):
        attribution_page(QUERIES.drop("text"), SCORES, TRAIN)
    with pytest.raises(StrideInputError, match="absent from the training corpus"):
        attribution_page(QUERIES, SCORES, TRAIN.filter(pl.col("example_id") != "e2"))
    with pytest.raises(StrideInputError, match="k >= 1"):
        attribution_page(QUERIES, SCORES, TRAIN, k=0)


def test_chromium_renders_the_page_and_the_hash_filters_it(chromium: str, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "report.html"
    path.write_text(attribution_page(QUERIES, SCORES, TRAIN, k=3, batch="default", tokens=TOKENS,
                                     strings={"q0": Q0_TOKENS}))
    shot = tmp_path / "report.png"
    _browse(chromium, path, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1280, 1600) and len(image.getcolors(1 << 20)) > 50  # text rendered, not a blank page
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert (255, 224, 102) in colours  # the <mark> highlight is painted
    shade = sum(n for n, (r, g, b) in image.getcolors(1 << 20) if abs(r - 108) + abs(g - 175) + abs(b - 130) <= 6)
    assert shade > 300  # the " zebra" token's box, rgba(10,122,47,.6) on white (not the green text's edges)

    dom = _browse(chromium, path, tmp_path, "--dump-dom")
    shown = Elements(dom)
    assert shown.text["count"] == "7 entries"  # written by the page's JS: 3 queries + 4 scored examples
    for qid, text in QUERIES.select("query_id", "text").iter_rows():
        card = shown.text[f"q-{qid[1]}"]
        assert qid in card and text in card and not shown.hidden(f"q-{qid[1]}")
    assert f"<mark>{ZEBRA}</mark>" in dom and "+0.9123" in dom and "-0.4321" in dom
    assert "<script>alert('x')</script> lists & tuples hold items" in shown.text["q-1"]  # shown as text
    example_cards = {shown.text[a["id"]][:2]: a["id"] for t, a in shown.tags  # its id, then its text
                     if t == "article" and (a.get("id") or "").startswith("ex-")}
    assert set(example_cards) == {"e0", "e1", "e2", "e3"}
    links_of = {eid: set(re.findall(r'href="#(q-\d)"', dom.split(f'id="{anchor}"')[1].split("</article>")[0]))
                for eid, anchor in example_cards.items()}
    assert links_of == {"e0": {"q-0"}, "e1": {"q-0", "q-1"}, "e2": {"q-2"}, "e3": {"q-0", "q-1", "q-2"}}
    assert f'href="#{example_cards["e0"]}"' in dom.split('id="q-0"')[1].split("</article>")[0]

    filtered = Elements(_browse(chromium, path, tmp_path, "--dump-dom", fragment="#q=zebra"))
    assert not filtered.hidden("q-0") and filtered.hidden("q-1") and filtered.hidden("q-2")
    assert not filtered.hidden(example_cards["e0"]) and filtered.hidden(example_cards["e2"])
    assert filtered.text["count"] == "2 of 7 shown"
    by_id = Elements(_browse(chromium, path, tmp_path, "--dump-dom", fragment="#q=e2"))  # an example's id
    assert by_id.hidden("q-0") and by_id.hidden("q-1") and not by_id.hidden("q-2")


def test_curation_and_contamination_pages(chromium: str, tmp_path: Path) -> None:
    kept = pl.DataFrame({"example_id": ["e0", "e2"], "text": TRAIN["text"][[0, 2]], "reason": ["top-5 for 1 queries"] * 2,
                         "score_sum": [0.9, 0.5], "top_queries": [["q0"], ["q2"]]})
    dropped = pl.DataFrame({"example_id": ["e1"], "text": TRAIN["text"][[1]],
                            "reason": ["summed influence -0.18 below floor -0.1 (negative for 1 queries)"],
                            "score_sum": [-0.18], "top_queries": [[]]}, schema_overrides={"top_queries": pl.List(pl.Utf8)})
    page = curation_page(kept, dropped)
    assert "Kept (2)" in page and "Dropped (1)" in page and "below floor -0.1" in page and "top example of q0" in page
    assert "&lt;script&gt;" in page and "<script>alert" not in page

    leaks = pl.DataFrame({"query_id": ["q0"], "example_id": ["e0"], "rank": [1], "score": [0.9], "overlap": [0.5],
                          "reason": ["influence rank 1 of 5; shares 50% of the query's word 3-grams"]})
    path = tmp_path / "contamination.html"
    path.write_text(contamination_page(leaks, QUERIES, TRAIN, n=3))
    dom = _browse(chromium, path, tmp_path, "--dump-dom")
    assert dom.count(f"<mark>{ZEBRA}</mark>") == 2 and "shares 50% of the query's word 3-grams" in dom
    text = Elements(dom).all_text
    assert QUERIES["text"][0] in text and TRAIN["text"][0] in text and "1 entry" in text
    with pytest.raises(StrideInputError, match="absent from the training corpus"):
        contamination_page(leaks, QUERIES, TRAIN.filter(pl.col("example_id") != "e0"), n=3)
    assert "No suspected leaks." in contamination_page(leaks.clear(), QUERIES, TRAIN, n=3)


def test_a_report_path_in_a_result_is_linked_in_dagster(tmp_path: Path) -> None:
    import dagster as dg

    from stride_assets.defs.assets import stage_metadata
    from stride_assets.engine.result import StageResult

    meta = stage_metadata(StageResult(stage="attribution_report", path=tmp_path,
                                      metadata={"report": tmp_path / "report.html", "queries": 3}))
    assert isinstance(meta["report"], dg.PathMetadataValue) and meta["report"].value == str(tmp_path / "report.html")
    assert meta["queries"] == 3


@pytest.mark.parametrize("method", ["stride", "ekfac", "ensemble"])
def test_every_method_has_the_reports_in_the_jobs_of_what_they_show(method: str) -> None:
    from stride_assets.engine import registry
    from stride_assets.engine.stages import stages_for

    jobs = {s.name: job for job, members in registry.jobs(stages_for(method)).items() for s in members}
    assert jobs["attribution_report"] == jobs["influence_scores"] == "recovery"
    assert jobs["curation_report"] == jobs["curated_dataset"] == jobs["contamination_report"] == "curation"
