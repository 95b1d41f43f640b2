"""Outfit Studio end to end: the page served by the app, driven in headless Chromium.

The plain serving app (uvicorn, no Ray) runs on a tiny model registered as `outfitter@champion`
in a throwaway MLflow store. The test browses the catalog (paging, category filter, text search),
builds an outfit by clicking, waits for the score, runs a retrieval, adds a retrieved item, and
checks what the page shows against the API's own answers. It saves a full-page screenshot to
`outfitter-work/studio.png`.

Chromium comes from Debian (`chromium` + `chromium-driver`, installed by apt when missing and we
are root). Without it the test is skipped with the reason, and fails when `CI` is set.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from serve_helpers import tiny_versions
from studio_helpers import (
    chromium_driver,
    ensure_chromium,
    full_page_screenshot,
    register_champion,
    serve_plain,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]  # apt may install Chromium first

SCREENSHOT = Path(__file__).resolve().parent.parent / "outfitter-work" / "studio.png"
WAIT_S = 30


@pytest.fixture(scope="session")
def chromium():
    """Chromium + driver + selenium, or a skip (a failure under CI) that says what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[dev]')"
    else:
        reason = ensure_chromium()
    if reason:
        message = f"headless Chromium is unavailable: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def studio(synth_dir, tmp_path_factory):
    """Base URL of the serving app on the registered tiny champion."""
    versions = tiny_versions(tmp_path_factory.getbasetemp() / "tiny-models", synth_dir)
    store = tmp_path_factory.mktemp("studio-mlflow")
    uri = register_champion(versions[0], store)
    with serve_plain("models:/outfitter@champion", synth_dir, uri, store / "uvicorn.log") as base:
        yield base


@pytest.fixture
def browser(chromium):
    driver = chromium_driver()
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders lists wholesale: an element read mid-render goes stale; look again
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition, message=f"timed out after {WAIT_S} s waiting for {what}")


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _text(driver, selector: str) -> str:
    found = _css(driver, selector)
    return found[0].text if found else ""


def _ids(driver, selector: str) -> list[str]:
    """`data-item-id` of each element matching `selector`, read in one step."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.itemId)"
    return driver.execute_script(script, selector)


def _wait_catalog(driver, api_page: dict, what: str) -> None:
    """Until the grid shows exactly the items of `api_page` (the API's answer to that query)."""
    expected = [it["item_id"] for it in api_page["items"]]
    _wait(driver, lambda d: _ids(d, "#catalog-grid .card") == expected, what)


def _wait_score(driver, outfit_ids: list[str]) -> dict:
    """Until the page shows the score of exactly `outfit_ids`; returns what it shows."""

    def scored(d):
        tiles = _ids(d, "#outfit-list .tile")
        box = _css(d, "#score")[0]
        weakest = _css(d, "#outfit-list .tile[data-weakest='true']")
        if tiles != outfit_ids or box.get_attribute("data-pending") or not weakest:
            return False
        return {
            "value": _text(d, "#score-value"),
            "state": box.get_attribute("data-state"),
            "weakest": _ids(d, "#outfit-list .tile[data-weakest='true']"),
            "note": _text(d, "#score-note"),
        }

    return _wait(driver, scored, f"the score of {outfit_ids}")


def _check_score(shown: dict, api: dict, titles: dict[str, str]) -> None:
    match = re.fullmatch(r"(\d{1,3}(?:\.\d)?)%", shown["value"])
    assert match, f"score text {shown['value']!r} is not a percentage"
    percent = float(match.group(1))
    assert 0.0 <= percent <= 100.0
    assert percent == pytest.approx(100 * api["score"], abs=0.051)
    assert shown["state"] in ("good", "fair", "poor")
    assert shown["weakest"] == [api["weakest_item"]["item_id"]]  # one tile, the API's weakest
    assert titles[api["weakest_item"]["item_id"]].lower() in shown["note"].lower()


def test_studio_builds_an_outfit_and_retrieves(studio, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    base = studio

    def api_get(params: dict) -> dict:
        r = requests.get(f"{base}/v1/items", params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def api_post(path: str, body: dict) -> dict:
        r = requests.post(f"{base}{path}", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    browser.get(f"{base}/")
    assert browser.title.startswith("Outfit Studio")

    # the model badge: the registered champion
    _wait(browser, lambda d: _css(d, "#model[data-state='ok']"), "the model badge")
    badge = _css(browser, "#model")[0]
    assert badge.get_attribute("data-version") == "1"
    assert "outfitter v1" in badge.text and "@champion" in badge.text, badge.text

    # browse: the first page, then the next one
    everything = api_get({"limit": 24})
    _wait_catalog(browser, everything, "the first catalog page")
    assert _text(browser, "#page-info") == f"1–24 of {everything['total']:,}"
    browser.find_element(By.ID, "next").click()
    _wait_catalog(browser, api_get({"limit": 24, "offset": 24}), "the second catalog page")
    assert _text(browser, "#page-info").startswith("25–48 of")

    # build an outfit: a top and a bottom by category, shoes by a text search
    titles: dict[str, str] = {}
    outfit: list[str] = []
    category = Select(browser.find_element(By.ID, "category-filter"))
    for name in ("tops", "bottoms"):
        category.select_by_value(name)
        page = api_get({"category": name, "limit": 24})
        _wait_catalog(browser, page, f"the {name} page")
        assert {c.text.split("\n")[-1] for c in _css(browser, "#catalog-grid .card")} == {name}
        pick = page["items"][1]
        _css(browser, f"#catalog-grid .card[data-item-id='{pick['item_id']}']")[0].click()
        outfit.append(pick["item_id"])
        titles[pick["item_id"]] = pick["title"]
    category.select_by_value("")
    shoe = api_get({"category": "shoes", "limit": 1})["items"][0]
    query = shoe["title"]
    browser.find_element(By.ID, "search").send_keys(query)
    found = api_get({"q": query, "limit": 24})
    _wait_catalog(browser, found, f"the search results for {query!r}")
    pick = found["items"][0]
    _css(browser, f"#catalog-grid .card[data-item-id='{pick['item_id']}']")[0].click()
    outfit.append(pick["item_id"])
    titles[pick["item_id"]] = pick["title"]
    pressed = set(_ids(browser, ".card[aria-pressed='true']"))
    assert pressed == {it["item_id"] for it in found["items"]} & set(outfit)

    # the live score and the weakest item, as the API reports them for this outfit
    shown = _wait_score(browser, outfit)
    _check_score(
        shown, api_post("/v1/compatibility", {"items": [{"item_id": i} for i in outfit]}), titles
    )

    # an API error is shown with its field and rule
    desc = browser.find_element(By.ID, "target-description")
    desc.send_keys("x" * 501)
    browser.find_element(By.ID, "retrieve-submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "retrieve-error").is_displayed(), "the error")
    error_text = _text(browser, "#retrieve-error")
    assert "422" in error_text and "target.description" in error_text, error_text

    # describe the missing piece: top-k shoes, ranked as the API ranks them
    desc.clear()
    desc.send_keys("white canvas sneakers")
    Select(browser.find_element(By.ID, "target-category")).select_by_value("shoes")
    browser.find_element(By.ID, "retrieve-submit").click()
    expected = api_post(
        "/v1/retrieve",
        {
            "items": [{"item_id": i} for i in outfit],
            "target": {"description": "white canvas sneakers", "category": "shoes"},
            "k": 8,
        },
    )["items"]
    want = [h["item_id"] for h in expected]
    _wait(
        browser,
        lambda d: _ids(d, "#retrieve-results .result") == want,
        "the retrieved items",
    )
    assert not browser.find_element(By.ID, "retrieve-error").is_displayed()
    results = _css(browser, "#retrieve-results .result")
    assert len(results) == 8
    for card, hit in zip(results, expected, strict=True):
        assert "shoes" in card.text and f"{hit['score']:.3f}" in card.text, card.text
        assert card.get_attribute("aria-pressed") == "false"

    # click a retrieved item: it joins the outfit and the score follows
    added = expected[0]
    results[0].click()
    outfit.append(added["item_id"])
    titles[added["item_id"]] = added["title"]
    shown = _wait_score(browser, outfit)
    _check_score(
        shown, api_post("/v1/compatibility", {"items": [{"item_id": i} for i in outfit]}), titles
    )
    assert results[0].get_attribute("aria-pressed") == "true"
    assert "pts since the last change" in _text(browser, "#score-delta")

    # the page fetched nothing outside the app, and raised no script error
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert {urlparse(u).netloc for u in origins} <= {urlparse(base).netloc}, origins
    logs = browser.get_log("browser")
    assert not [e for e in logs if "Uncaught" in e.get("message", "")], logs

    # clear the search: the whole catalog again, the outfit's items marked
    search = browser.find_element(By.ID, "search")
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)
    _wait_catalog(browser, everything, "the unfiltered catalog")
    pressed = set(_ids(browser, "#catalog-grid .card[aria-pressed='true']"))
    assert pressed == {it["item_id"] for it in everything["items"]} & set(outfit)

    browser.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    shot = full_page_screenshot(browser, tmp_path / "studio.png")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
