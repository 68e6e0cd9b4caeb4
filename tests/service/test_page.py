"""The search page in a real headless Chromium (Debian's package, driven by Playwright) on the demo sample,
served by the `embedding serve` command itself.

Results are read from the page's data attributes (ids, ranks); every test checks at the end that no request
left 127.0.0.1. Two versions are served: `demo`, indexed, and `demo-unindexed` (the same model, no index),
so the version picker shows and a version without index can be tried.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from embedding.models.registry import BUILTIN_VERSIONS
from tests.service.conftest import GONE_ID, INLINE_ID, Command, Served, serving_command

pytestmark = pytest.mark.integration

UNINDEXED = "demo-unindexed"
VISIBLE_THUMBNAILS_LOADED = """() => {
  const visible = [...document.querySelectorAll('.result img')].filter(i => {
    const box = i.getBoundingClientRect();
    return box.bottom > 0 && box.top < innerHeight;
  });
  return visible.length > 0 && visible.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def command(served: Served, tmp_path_factory: pytest.TempPathFactory, ray_local):
    """`embedding serve CONFIG --host 0.0.0.0` as a user runs it (no keys: it must keep to 127.0.0.1)."""
    cfg = served.config(
        model={"version": "demo", "versions": {UNINDEXED: BUILTIN_VERSIONS["demo"].model_dump()}},
        service={"versions": ["demo", UNINDEXED], "index_poll_s": 1, "encoder": {"num_cpus": 0.5}},
    )
    folder = tmp_path_factory.mktemp("page")
    with serving_command(cfg, folder, ray_local.get_runtime_context().gcs_address) as started:
        yield started


@pytest.fixture(scope="module")
def site(command: Command) -> str:
    return command.url + "/"


def test_the_command_says_where_it_listens(command: Command) -> None:
    text = "".join(command.output)
    assert "listening on 127.0.0.1 only (not 0.0.0.0)" in text
    assert f"versions demo, {UNINDEXED} (default demo) at {command.url}" in text
    assert "Prometheus metrics: http://" in text
    assert requests.get(f"{command.url}/healthz", timeout=30).json()["status"] == "ok"
    page = requests.get(command.url, timeout=30)
    assert page.status_code == 200 and "<title>Search the collection</title>" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


@pytest.fixture
def page(browser, site: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.set_default_timeout(60_000)
    yield page
    context.close()
    hosts = {urlsplit(u).hostname for u in requested if urlsplit(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, [u for u in requested if urlsplit(u).hostname != "127.0.0.1"]


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']", state="attached")


def wait_done(page) -> str:
    """Wait for the search in flight to end; its final state (done or error)."""
    page.wait_for_selector("#results[data-state='done'], #results[data-state='error']", state="attached")
    return page.get_attribute("#results", "data-state")


def search_text(page, site: str, text: str) -> None:
    open_page(page, site)
    page.fill("#q", text)
    page.press("#q", "Enter")
    assert wait_done(page) == "done", page.inner_text("#error")


def ids(page) -> list[str]:
    return page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.imageId)")


def precision(found: list[str], truth: dict[str, tuple[str, str]], want: tuple[str, str]) -> float:
    return sum(truth[i] == want for i in found) / len(found)


def error_of(page) -> tuple[str, str]:
    page.wait_for_selector("#error:not([hidden])")
    return page.get_attribute("#error", "data-code"), page.inner_text("#error")


@pytest.mark.parametrize(
    "text",
    ["a red circle", "un cercle rouge", "un círculo rojo", "ein roter Kreis"],
    ids=["en", "fr", "es", "de"],
)
def test_a_query_in_four_languages(page, site: str, served: Served, capsys, text: str) -> None:
    search_text(page, site, text)
    found = ids(page)
    assert len(found) >= 10 and precision(found[:10], served.truth, ("red", "circle")) >= 0.8, found[:10]
    page.wait_for_function(VISIBLE_THUMBNAILS_LOADED)
    sources = page.eval_on_selector_all(".result img", "imgs => imgs.map(i => i.currentSrc || i.src)")
    assert not any(s.endswith("placeholder.svg") for s in sources[:10])
    alts = page.eval_on_selector_all(".result img", "imgs => imgs.map(i => i.alt)")
    assert all(alts) and alts[0] == page.inner_text(".result .caption")
    ranks = page.eval_on_selector_all(".result", "cards => cards.map(c => Number(c.dataset.rank))")
    assert ranks == list(range(1, len(ranks) + 1))
    first_ms = float(page.get_attribute("#results", "data-first-results-ms"))
    with capsys.disabled():
        print(f"\n[page] '{text}': first results {first_ms:.0f} ms after Enter (measured in Chromium)")


def test_an_uploaded_image_finds_its_colour_and_shape_first(page, site: str, served: Served) -> None:
    star = next(i for i, t in sorted(served.truth.items()) if t == ("green", "triangle") and i in served.uris)
    open_page(page, site)
    page.set_input_files("#file", served.uris[star])
    assert wait_done(page) == "done"
    found = ids(page)
    assert found[0] == star and precision(found[:5], served.truth, ("green", "triangle")) == 1.0


def test_an_unreadable_upload_says_so(page, site: str) -> None:
    open_page(page, site)
    page.set_input_files("#file", {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"})
    code, message = error_of(page)
    assert code == "InvalidImageFormat" and "could not be read as an image" in message


def test_more_like_this(page, site: str, served: Served) -> None:
    search_text(page, site, "a blue star")
    picked = ids(page)[2]
    page.click(".result[data-rank='3'] .like")
    assert wait_done(page) == "done"
    found = ids(page)
    assert found[0] == picked and parse_qs(urlsplit(page.url).query)["like"] == [picked]
    assert precision(found[:5], served.truth, served.truth[picked]) >= 0.8


def test_a_tag_filter(page, site: str) -> None:
    search_text(page, site, "a circle")
    before = ids(page)
    page.click(".filter-group .chip[data-column='tags'][data-value='green']")
    assert wait_done(page) == "done"
    assert page.get_attribute(".filter-group .chip[data-value='green']", "aria-pressed") == "true"
    assert parse_qs(urlsplit(page.url).query)["f.tags"] == ["green"]
    tags = page.eval_on_selector_all(
        ".result", "cards => cards.map(c => [...c.querySelectorAll('.tags .chip')].map(t => t.textContent))"
    )
    assert tags and all("green" in t for t in tags) and ids(page) != before


def test_a_71_word_query_shows_the_limit(page, site: str) -> None:
    open_page(page, site)
    page.fill("#q", " ".join(["red"] * 71))
    page.press("#q", "Enter")
    code, message = error_of(page)
    assert code == "InvalidText" and "71 words" in message and "70" in message


def test_a_version_without_index(page, site: str) -> None:
    open_page(page, site)
    assert page.is_visible("#version")  # several versions: the picker shows
    page.select_option("#version", UNINDEXED)
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    code, message = error_of(page)
    assert code == "IndexNotFound" and "no search index" in message and UNINDEXED in message


def test_the_server_down(page, site: str) -> None:
    open_page(page, site)
    page.route("**/retrieval:search", lambda route: route.abort("connectionrefused"))
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    code, message = error_of(page)
    assert code == "Unreachable" and "cannot be reached" in message


def test_a_shared_url_restores_the_search_and_back_works(page, site: str, browser) -> None:
    search_text(page, site, "a red circle")
    shared, first = page.url, ids(page)
    page.fill("#q", "a yellow square")
    page.press("#q", "Enter")
    assert wait_done(page) == "done" and ids(page) != first
    page.go_back()
    page.wait_for_function("() => document.querySelector('#q').value === 'a red circle'")
    assert wait_done(page) == "done" and ids(page) == first
    other = browser.new_page()
    try:
        other.goto(shared)
        assert wait_done(other) == "done" and ids(other) == first
        assert other.input_value("#q") == "a red circle"
    finally:
        other.close()


def test_more_results_in_pages_of_50(page, site: str) -> None:
    search_text(page, site, "a shape")
    assert len(ids(page)) == 50
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('.result').length === 100")
    found = ids(page)
    assert len(set(found)) == 100 and found.count(INLINE_ID) + found.count(GONE_ID) <= 2


def test_keyboard_alone(page, site: str) -> None:
    open_page(page, site)
    assert page.evaluate("document.activeElement.id") == "q"  # the query box has the focus
    page.keyboard.type("a yellow square")
    page.keyboard.press("Enter")
    assert wait_done(page) == "done"
    first = ids(page)
    for _ in range(200):  # Tab through the page to the first "More like this"
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('like')"):
            break
    else:
        pytest.fail("no 'More like this' button is reachable with Tab")
    page.keyboard.press("Enter")
    assert wait_done(page) == "done" and ids(page)[0] == first[0]
    assert parse_qs(urlsplit(page.url).query)["like"] == [first[0]]


def test_readable_on_a_phone(browser, site: str) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        search_text(phone, site, "a red circle")
        assert phone.evaluate("document.documentElement.scrollWidth - innerWidth") <= 0
        columns = phone.evaluate("getComputedStyle(document.querySelector('#results')).gridTemplateColumns")
        assert len(columns.split()) == 2
    finally:
        phone.close()
