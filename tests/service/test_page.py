"""The search page in a real headless Chromium (Debian's package, driven by Playwright) on the demo sample,
served by the `embedding serve` command itself.

Results are read from the page's data attributes (ids, ranks, the ids folded into a result); every test
checks at the end that no request left 127.0.0.1. Two versions are served: `demo`, indexed, with its
duplicate groups, and `demo-unindexed` (the same model, no index, no groups), so the version picker shows
and a version without index can be tried. The collection carries a string, a number, a date and a
timestamp column (tests/service/conftest.py) for the facets and range pickers, and a re-encoded copy of a
red circle for dedup and the Duplicates view.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from embedding.models.registry import BUILTIN_VERSIONS
from tests.service.conftest import GONE_ID, INLINE_ID, Command, Served, cosine, serving_command

pytestmark = pytest.mark.integration

UNINDEXED = "demo-unindexed"
# The demo model puts distinct sample images of one colour and shape at cosines up to 0.9986, so the
# default search.dedup_cosine (0.95) folds each of them into one result, and the tests of what a search
# finds would see one red circle where there are eight. Above them and below a re-encoded copy (0.9997 and
# more), only the planted copy folds.
DEDUP_COSINE = 0.999
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
        search={"dedup_cosine": DEDUP_COSINE},
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


def params(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def wait_search(page, want: dict[str, list[str] | None]) -> None:
    """Wait until the address holds `want` (a name's values; None: the name is absent) and the search it
    names has ended with results. The page changes the address and starts the search in one step, so an
    older search's end cannot pass for it."""
    page.wait_for_function(
        """want => {
          const params = new URLSearchParams(location.search);
          return Object.entries(want).every(([name, values]) =>
            values === null ? !params.has(name) : params.getAll(name).join("\\n") === values.join("\\n"));
        }""",
        arg=want,
    )
    assert wait_done(page) == "done", page.inner_text("#error")


def facet(column: str, value: str) -> str:
    return f".filter-group .chip[data-column='{column}'][data-value='{value}']"


def bound(column: str, which: str) -> str:
    return f".range[data-column='{column}'] input[data-bound='{which}']"


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
    page.click(facet("tags", "green"))
    wait_search(page, {"f.tags": ["green"]})
    assert page.is_checked(f"{facet('tags', 'green')} input")
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
        # The filters start folded away, so that results come first; their summary opens them.
        assert not phone.is_visible("#ranges") and phone.is_visible(".result")
        phone.click("#filter-box summary")
        assert phone.is_visible(bound("price", "min"))
        assert phone.evaluate("document.documentElement.scrollWidth - innerWidth") <= 0
        columns = phone.evaluate("getComputedStyle(document.querySelector('#results')).gridTemplateColumns")
        assert len(columns.split()) == 2
        phone.click("#view-duplicates")
        phone.wait_for_selector("#duplicates[data-state='done']")
        assert phone.evaluate("document.documentElement.scrollWidth - innerWidth") <= 0
    finally:
        phone.close()


def test_facets_and_ranges_filter_and_a_link_restores_them(page, site: str, served: Served, browser) -> None:
    search_text(page, site, "a shape")
    everything = ids(page)
    # Two values of one column: either of them; by keyboard, the checkbox keeps the focus.
    page.click(facet("shape", "circle"))
    wait_search(page, {"f.shape": ["circle"]})
    page.focus(f"{facet('shape', 'star')} input")
    page.keyboard.press("Space")
    wait_search(page, {"f.shape": ["circle", "star"]})
    assert page.evaluate("document.activeElement.closest('.chip').dataset.value") == "star"
    shapes = [served.columns[i]["shape"] for i in ids(page)]
    assert set(shapes) == {"circle", "star"} and ids(page) != everything
    # A number range (Tab applies a bound), then a date range (Enter applies it).
    for column, kind, key, low, high in (
        ("price", "number", "Tab", "10", "30"),
        ("taken_on", "date", "Enter", "2024-02-01", "2024-09-30"),
    ):
        assert page.get_attribute(bound(column, "min"), "type") == kind
        page.fill(bound(column, "min"), low)
        page.press(bound(column, "min"), key)
        wait_search(page, {f"min.{column}": [low]})
        page.fill(bound(column, "max"), high)
        page.press(bound(column, "max"), key)
        wait_search(page, {f"min.{column}": [low], f"max.{column}": [high]})
    found = ids(page)
    assert found
    for image_id in found:
        row = served.columns[image_id]
        assert row["shape"] in ("circle", "star") and 10 <= row["price"] <= 30, (image_id, row)
        assert date(2024, 2, 1) <= row["taken_on"] <= date(2024, 9, 30), (image_id, row)
    assert "price 10–30" in page.inner_text("#status")
    # The address is the search: another window opens it as it was.
    shared = page.url
    other = browser.new_page()
    try:
        open_page(other, shared)
        assert wait_done(other) == "done" and ids(other) == found
        assert other.is_checked(f"{facet('shape', 'star')} input")
        assert other.is_checked(f"{facet('shape', 'circle')} input")
        assert other.input_value(bound("price", "max")) == "30"
        assert other.input_value(bound("taken_on", "max")) == "2024-09-30"
    finally:
        other.close()
    # Back undoes one change at a time, controls included.
    page.go_back()
    wait_search(page, {"min.taken_on": ["2024-02-01"], "max.taken_on": None})
    assert page.input_value(bound("taken_on", "max")) == ""
    assert page.input_value(bound("price", "max")) == "30"
    later = [served.columns[i]["taken_on"] for i in ids(page)]
    assert later and min(later) >= date(2024, 2, 1) and max(later) > date(2024, 9, 30)
    # Clear filters: every facet and range at once.
    page.click("#clear-filters")
    wait_search(page, {"q": ["a shape"], "f.shape": None, "min.price": None, "min.taken_on": None})
    assert ids(page) == everything and not page.is_checked(f"{facet('shape', 'star')} input")


def test_a_timestamp_range_from_a_link(page, site: str, served: Served) -> None:
    open_page(page, f"{site}?q=a+shape&min.added_at=2024-04-15T12:00&f.tags=red&f.tags=blue")
    assert wait_done(page) == "done", page.inner_text("#error")
    assert page.get_attribute(bound("added_at", "min"), "type") == "datetime-local"
    assert page.input_value(bound("added_at", "min")) == "2024-04-15T12:00"
    start = datetime(2024, 4, 15, 12, tzinfo=UTC)  # the page reads a datetime-local as UTC
    found = ids(page)
    assert found and all(served.columns[i]["added_at"] >= start for i in found)
    tags = page.eval_on_selector_all(
        ".result", "cards => cards.map(c => [...c.querySelectorAll('.tags .chip')].map(t => t.textContent))"
    )
    assert all({"red", "blue"} & set(t) for t in tags)  # several values of a list column: any of them
    assert {"red", "blue"} <= {t for ts in tags for t in ts}


def cards_and_copies(page) -> list[tuple[str, list[str]]]:
    """Each result's id, and the ids folded into it."""
    script = "cs => cs.map(c => [c.dataset.imageId, (c.dataset.similar || '').split(' ').filter(Boolean)])"
    return page.eval_on_selector_all(".result", script)


def test_near_duplicates_fold_into_one_result(page, site: str, served: Served) -> None:
    ((copy, original),) = served.copies.items()
    pair = {copy, original}
    assert cosine(served.image_vectors[copy], served.image_vectors[original]) >= DEDUP_COSINE
    open_page(page, site)
    assert page.is_checked("#dedup")  # on by default
    page.fill("#q", "a red circle")
    page.press("#q", "Enter")
    assert wait_done(page) == "done"
    holders = [(kept, folded) for kept, folded in cards_and_copies(page) if pair & {kept, *folded}]
    assert len(holders) == 1, holders  # the copy and its original: one result
    kept, folded = holders[0]
    assert pair <= {kept, *folded}
    card = f".result[data-image-id='{kept}']"
    summary = page.locator(f"{card} .similar summary")
    assert summary.inner_text() == f"+{len(folded)} similar"
    assert not page.is_visible(f"{card} .similar li")
    summary.click()
    assert page.locator(f"{card} .similar li").all_inner_texts() == folded
    # Off: every copy is a result of its own, and the address says so; Back turns it on again.
    page.uncheck("#dedup")
    wait_search(page, {"q": ["a red circle"], "dedup": ["0"]})
    assert pair <= set(ids(page)) and all(not folded for _, folded in cards_and_copies(page))
    page.go_back()
    wait_search(page, {"q": ["a red circle"], "dedup": None})
    assert page.is_checked("#dedup") and len([1 for k, f in cards_and_copies(page) if pair & {k, *f}]) == 1


def test_the_duplicates_view(page, site: str, served: Served, command: Command) -> None:
    ((copy, original),) = served.copies.items()
    answer = requests.get(f"{command.url}/retrieval/duplicates", timeout=30)
    assert answer.status_code == 200 and answer.json()["modelVersion"] == "demo"
    groups = answer.json()["groups"]
    group = next(g for g in groups if copy in {m["imageId"] for m in g["members"]})
    members = [m["imageId"] for m in group["members"]]
    assert group["kind"] == "near" and original in members
    assert all(m["cosine"] >= 0.9 for m in group["members"]) and members == sorted(members)
    route = f"{command.url}/retrieval/duplicates"
    missing = requests.get(route, params={"modelVersion": UNINDEXED}, timeout=30)
    assert missing.status_code == 404 and missing.headers["x-ms-error-code"] == "NotFound"
    inner = missing.json()["error"]["innererror"]
    assert inner["code"] == "DuplicatesNotFound" and "`embedding duplicates CONFIG`" in inner["message"]

    search_text(page, site, "a red circle")
    page.click("#view-duplicates")
    page.wait_for_selector("#duplicates[data-state='done']")
    assert params(page) == {"view": ["duplicates"]} and not page.is_visible("#results")
    assert page.get_attribute("#view-duplicates", "aria-current") == "page"
    assert page.locator(".group").count() == min(len(groups), 30)
    box = f".group[data-group-id='{group['groupId']}']"
    assert page.eval_on_selector_all(f"{box} .member", "ms => ms.map(m => m.dataset.imageId)") == members
    assert page.text_content(f"{box} .kind") == "near copies"
    page.locator(box).scroll_into_view_if_needed()
    page.wait_for_function(
        "box => [...document.querySelectorAll(box + ' img')].every(i => i.complete && i.naturalWidth > 0)",
        arg=box,
    )
    # A member's id is a search for images like it; Back returns to the groups.
    page.click(f"{box} .member[data-image-id='{original}'] .member-id")
    wait_search(page, {"like": [original]})
    assert ids(page)[0] == original and page.is_visible("#results")
    page.go_back()
    page.wait_for_selector("#duplicates[data-state='done']")
    assert page.is_visible(f"{box}") and not page.is_visible("#results")
    # A version whose duplicates were never looked for says what to run.
    page.select_option("#version", UNINDEXED)
    code, message = error_of(page)
    assert code == "DuplicatesNotFound" and "embedding duplicates CONFIG" in message
