"""The demo page in a real headless Chromium, against the real API and a worker: answers, bars and errors."""

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SEED_EXAMPLE, WorkerProcess, api_server

API_KEY = "demo-page-test-key"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session", autouse=True)
def chromium() -> tuple[str, str]:
    """Return Chromium's and chromedriver's paths; skip without them, but fail under CI, where they must run."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [f"{name} (apt-get install chromium chromium-driver)" for name, path in
               (("chromium", browser), ("chromedriver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        reason = "missing: " + ", ".join(missing)
        if _in_ci():
            pytest.fail(f"{reason}; CI must run the demo page's browser test", pytrace=False)
        pytest.skip(reason)
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture(scope="module")
def api_url(stack_env: dict[str, str], worker: WorkerProcess) -> Iterator[str]:
    """The API as gunicorn runs it, with API keys on, on a free port."""
    with api_server(stack_env, API_KEYS=API_KEY) as url:
        yield url


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[Any]:
    """A headless Chromium driven through Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=760,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromium[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def click_classify(driver: Any) -> str:
    """Click Classify, wait until the page is no longer busy, and say whether the answer or an error shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The click runs the submit handler up to its fetch, which marks the result busy before click() returns.
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "result").get_attribute("aria-busy") == "false")
    shown = [box for box in ("answer", "error") if driver.find_element(By.ID, box).is_displayed()]
    return " and ".join(shown) or "nothing"


def fill(driver: Any, field: str, value: str) -> None:
    element = driver.find_element("id", field)
    element.clear()
    element.send_keys(value)


def api_answer(api_url: str) -> dict[str, Any]:
    """Classify the seed example straight through the API, for what the page should show."""
    req = urllib.request.Request(f"{api_url}/v1/classify", data=json.dumps(SEED_EXAMPLE).encode(),
                                 headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())["data"]
    return data


def test_the_page_classifies_the_seed_example_and_draws_one_bar_per_class(api_url: str, browser: Any) -> None:
    browser.get(f"{api_url}/")
    fill(browser, "api_key", API_KEY)

    assert click_classify(browser) == "answer"

    assert browser.find_element("id", "pred-label").text == "Iris-virginica"
    rows = browser.find_elements("css selector", "#bars li")
    assert len(rows) == 3
    # Rendered widths, so the stylesheet's layout is checked too: the fills share one track width.
    fills = [row.find_element("css selector", ".bar-fill").rect["width"] for row in rows]
    track = rows[0].find_element("css selector", ".bar-track").rect["width"]
    assert track > 100 and sum(fills) / track == pytest.approx(1.0, abs=0.02)
    expected = api_answer(api_url)
    shown = {row.find_element("css selector", ".bar-name").text: row.find_element("css selector", ".bar-value").text
             for row in rows}
    assert shown == {label: f"{p * 100:.1f}%" for label, p in expected["probabilities"].items()}
    model = browser.find_element("id", "model").text
    assert model == f"Model {expected['model_name']}, version {expected['model_version']}"
    # No script error, refused policy or failed load: Chromium logs each as SEVERE.
    assert [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    if os.environ.get("DEMO_SCREENSHOT"):
        Path(os.environ["DEMO_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(os.environ["DEMO_SCREENSHOT"])


@pytest.mark.parametrize(("value", "says"), [("0", "Input should be greater than 0"),
                                             ("", "Input should be a valid number")], ids=["zero", "empty"])
def test_an_invalid_value_shows_the_apis_400_message_in_the_page(api_url: str, browser: Any, value: str,
                                                                  says: str) -> None:
    browser.get(f"{api_url}/")
    fill(browser, "api_key", API_KEY)
    assert click_classify(browser) == "answer"
    fill(browser, "petal_width", value)

    assert click_classify(browser) == "error"

    message = browser.find_element("id", "error").text
    assert message.startswith("400 ValidationError: 1 validation error")
    assert "petal_width" in message and says in message
    assert not browser.find_element("id", "answer").is_displayed()


def test_without_the_key_the_page_shows_the_401_and_with_it_the_answer(api_url: str, browser: Any) -> None:
    browser.get(f"{api_url}/")

    assert click_classify(browser) == "error"
    assert browser.find_element("id", "error").text.startswith("401 Unauthorized: missing or wrong API key")

    fill(browser, "api_key", API_KEY)
    assert click_classify(browser) == "answer"
    assert browser.find_element("id", "pred-label").text == "Iris-virginica"


def test_swagger_ui_at_docs_renders_every_operation_from_the_apis_own_files(api_url: str, browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{api_url}/docs")
    with urllib.request.urlopen(f"{api_url}/openapi.json", timeout=30) as resp:
        spec = json.loads(resp.read())
    documented = sum(len(methods) for methods in spec["paths"].values())

    # Swagger UI fetches /openapi.json and draws one block per operation.
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements("css selector", ".opblock")) >= documented)

    assert browser.find_element("css selector", ".info .title").text.startswith(spec["info"]["title"])
    # Every file came from this origin: a CDN would be refused by the page's policy and logged as SEVERE.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(api_url) for url in loaded), loaded
    assert [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    if os.environ.get("DOCS_SCREENSHOT"):
        Path(os.environ["DOCS_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(os.environ["DOCS_SCREENSHOT"])
