"""The search page of ``mvr serve``, driven in a real headless Chromium (Debian's package, through
Playwright): a query, its hits with title, score, metadata and highlighted tokens, a filter, an
API key. Skipped, with the reason, where no browser is installed."""

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from mvr import Index  # noqa: E402
from mvr.server import background  # noqa: E402
from mvr.server.catalog import Catalog  # noqa: E402

from conftest import DOCS, dated_docs  # noqa: E402

CHROMIUM = os.environ.get("MVR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium, or set MVR_CHROMIUM)")


@pytest.fixture(scope="module")
def index(tmp_path_factory, default_encoder):
    return Index.build(dated_docs(), tmp_path_factory.mktemp("page") / "docs", encoder=default_encoder, show_progress=False)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _search(page, query: str):
    page.fill("#query", query)
    page.click("button[type=submit]")
    page.wait_for_function("document.querySelector('#status').textContent.match(/results in|\\d{3}:|not JSON/)")


def test_the_page_searches_and_highlights(index, browser, tmp_path):
    with background(Catalog([index.path], model=index.encoder, warm=False)) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)  # the page's CSP forbids eval, which wait_for_function uses
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/")
        page.wait_for_selector("#index option", state="attached")
        assert page.inner_text("#index") == f"docs ({len(DOCS)} docs)"
        _search(page, "which animal purrs?")
        hits = page.query_selector_all("li.hit")
        expected = index.search("which animal purrs?", k=10)
        assert len(hits) == len(expected[0])
        assert [h.query_selector(".id").inner_text() for h in hits] == [h.id for h in expected[0]]
        first = hits[0]
        assert first.query_selector(".title").inner_text() == "Cats" and first.query_selector(".score").inner_text() == f"{expected[0][0].score:.3f}"
        assert "year: 2019" in first.query_selector(".meta").inner_text()
        marked = [m.inner_text() for m in first.query_selector_all(".text mark")]
        assert "pu" in marked and "rr" in marked  # the tokens behind "pu" and "##rr" of the query
        assert "pu \u2192 pu" in first.query_selector(".why").inner_text()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000
        # a filter as JSON, and a broken one
        page.click("summary")
        page.fill("#filter", '{"year": {"$gte": 2021}}')
        _search(page, "which animal purrs?")
        years = [int(m.inner_text().split("year: ")[1]) for m in page.query_selector_all("li.hit .meta")]
        assert years and all(year >= 2021 for year in years)
        page.fill("#filter", '{"year": ')
        _search(page, "which animal purrs?")
        assert "not JSON" in page.inner_text("#status")
        page.fill("#filter", '{"colour": "red"}')
        _search(page, "which animal purrs?")
        assert "400: unknown metadata field 'colour'" in page.inner_text("#status")
        assert not errors, errors
        strict = browser.new_page()  # the page's own Content-Security-Policy lets its script run and fetch
        strict.goto(url + "/")
        strict.wait_for_selector("#index option", state="attached")


def test_the_api_reference_shows_every_route_offline(index, browser, tmp_path):
    """/docs was FastAPI's Swagger UI, fetched from a CDN: blank offline, where every 404 sends users."""
    with background(Catalog([index.path], model=index.encoder, warm=False)) as url:
        page, elsewhere = browser.new_page(), []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else (elsewhere.append(route.request.url), route.abort()))
        assert page.goto(url + "/docs").status == 200
        headings = [h.inner_text() for h in page.query_selector_all("h2")]
        for route in ("GET /healthz", "GET /indexes", "GET /indexes/{name}", "POST /indexes/{name}/search", "POST /indexes/{name}/documents", "DELETE /indexes/{name}/documents", "GET /metrics"):
            assert route in headings, (route, headings)
        assert "required" in page.inner_text("table")  # the first table: GET /indexes/{name}'s path parameter
        assert "first_stage" in page.inner_text("body") and "filter" in page.inner_text("body")
        assert page.inner_text("#NewDocument + table").split("\n")[1].startswith("id")  # an added document's fields
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        assert not elsewhere and (tmp_path / "docs.png").stat().st_size > 10_000


def test_the_page_asks_for_the_key_and_sends_it(index, browser):
    with background(Catalog([index.path], model=index.encoder, warm=False), api_key="p4ss") as url:
        page = browser.new_page(bypass_csp=True)
        page.goto(url + "/")  # the page itself needs no key
        page.wait_for_function("document.querySelector('#status').textContent.includes('401')")
        page.click("summary")
        page.fill("#key", "p4ss")
        page.dispatch_event("#key", "change")
        page.wait_for_selector("#index option", state="attached")
        _search(page, "capital of France")
        assert page.query_selector("li.hit .id").inner_text() == "d5"


def test_the_page_shows_an_index_it_cannot_read_without_offering_it(index, browser, tmp_path, default_encoder):
    home = tmp_path / "home"
    shutil.copytree(index.path, home / "docs")
    (home / "broken").mkdir()
    (home / "broken" / "manifest.json").write_text("{not json")
    with background(Catalog([], home, model=default_encoder, warm=False)) as url:
        page = browser.new_page(bypass_csp=True)
        page.goto(url + "/")
        page.wait_for_selector("#index option[disabled]", state="attached")
        options = page.query_selector_all("#index option")
        assert [o.inner_text() for o in options] == [f"docs ({len(DOCS)} docs)", "broken (cannot be read)"]
        assert "manifest.json is damaged" in options[1].get_attribute("title")  # why, on hovering it
        assert page.eval_on_selector("#index", "s => s.value") == "docs"
        _search(page, "capital of France")
        assert page.query_selector("li.hit .id").inner_text() == "d5"


def test_the_page_shows_the_answer_of_the_latest_search_only(index, browser):
    """Answers were shown in the order they came: an earlier, slower search (held here by the
    browser) overwrote the hits of a later one, under the later query and its status line."""
    with background(Catalog([index.path], model=index.encoder, warm=False)) as url:
        page = browser.new_page(bypass_csp=True)
        held = []
        page.route("**/search", lambda route: held.append(route) if not held else route.continue_())
        page.goto(url + "/")
        page.wait_for_selector("#index option", state="attached")
        page.fill("#k", "1")
        page.fill("#query", "which animal purrs?")
        page.click("button[type=submit]")  # held
        page.wait_for_function("document.querySelector('#status').textContent === 'Searching...'")
        _search(page, "capital of France")
        assert page.inner_text("li.hit .id") == "d5"
        try:
            held[0].continue_()  # the first answer comes now (its request was aborted: the browser drops it)
        except Exception:
            pass
        page.wait_for_timeout(1000)
        assert page.inner_text("li.hit .id") == "d5" and page.input_value("#query") == "capital of France"
        assert "1 results in" in page.inner_text("#status")


@pytest.mark.parametrize("key", ["ключ", "sécret"])
def test_the_page_sends_a_key_beyond_ascii(index, browser, key):
    """A header carries Latin-1 at most: 'ключ' made fetch throw, and 'sécret' went as Latin-1
    while the server compared UTF-8 (401), where mvr.client and curl authenticated."""
    with background(Catalog([index.path], model=index.encoder, warm=False), api_key=key) as url:
        page = browser.new_page(bypass_csp=True)
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#status').textContent.includes('401')")
        page.click("summary")
        page.fill("#key", key)
        page.dispatch_event("#key", "change")
        page.wait_for_selector("#index option", state="attached")
        assert page.inner_text("#status") == ""  # the 401 of the keyless try no longer shows
        _search(page, "capital of France")
        assert page.query_selector("li.hit .id").inner_text() == "d5"
