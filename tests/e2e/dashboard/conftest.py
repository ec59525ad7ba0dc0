"""Fixtures for the dashboard's browser tests: `headwater up`, a subscriber that
fails on demand, and Debian's Chromium driven headless through its chromedriver.

The browser is never downloaded: Selenium is given /usr/bin/chromium and
/usr/bin/chromedriver (Debian's `chromium` and `chromium-driver`, installed by
scripts/install-test-deps.sh), and Selenium Manager is told to stay offline.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.headwater_process import Headwater, start_headwater
from tests.helpers import Receiver, wait_until_blocking

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0
"""Seconds any one browser wait may take before the test fails."""


@pytest.fixture(scope="module")
def subscriber() -> Iterator[Receiver]:
    """An HTTP subscriber that answers 503 until a test sets its ``status``."""
    with Receiver.in_thread(status=503) as sub:
        yield sub


def mesh(subscriber_url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: orders}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: burst}}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {{name: display}}
spec: {{format: json}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: heartbeat}}
spec:
  schedule: "* * * * *"
  data: '{{"message": "alive"}}'
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: heartbeats}}
spec:
  broker: default
  filter: {{attributes: {{type: dev.knative.sources.ping}}}}
  subscriber:
    ref: {{apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: fulfilment}}
spec:
  broker: orders
  subscriber: {{uri: "{subscriber_url}"}}
  delivery: {{retry: 0}}
"""


@pytest.fixture(scope="module")
def headwater(
    tmp_path_factory: pytest.TempPathFactory, subscriber: Receiver
) -> Iterator[Headwater]:
    root: Path = tmp_path_factory.mktemp("dashboard")
    (root / "mesh.yaml").write_text(mesh(subscriber.url))
    hw = start_headwater(["-f", "mesh.yaml", "--data-dir", "data", "--durability", "normal"], root)
    yield hw
    hw.stop()


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not browser_available():
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/install-test-deps.sh "
            "(Debian's chromium and chromium-driver)"
        )
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_script_timeout(WAIT)
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()
    finally:
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """Console messages at error level since the last call (the log is drained)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture
def page(browser: WebDriver, headwater: Headwater) -> Iterator[WebDriver]:
    """The dashboard, freshly loaded; after the test, no console errors may remain."""
    browser.get(headwater.url + "/")
    console_errors(browser)  # start clean
    yield browser
    errors = console_errors(browser)
    browser.get("about:blank")  # close the page's streams before Headwater stops
    assert errors == []


def until(check: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true. The views re-render as
    data arrives, so an element that went stale (or is not there yet) just
    means: look again."""

    def look() -> Any:
        try:
            return check()
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    return wait_until_blocking(look, timeout, what, every=0.05)


def _post(url: str, broker: str, body: object, content_type: str) -> None:
    request = urllib.request.Request(
        f"{url}/default/{broker}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": content_type},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202


def post_event(url: str, broker: str, event: dict[str, Any]) -> None:
    """Send one structured-mode CloudEvent to a Broker's ingress (``specversion``
    and ``source`` filled in)."""
    _post(url, broker, {**_DEFAULTS, **event}, "application/cloudevents+json")


def post_batch(url: str, broker: str, events: list[dict[str, Any]]) -> None:
    """Send events in one batched-mode request."""
    _post(url, broker, [{**_DEFAULTS, **e} for e in events], "application/cloudevents-batch+json")


_DEFAULTS = {"specversion": "1.0", "source": "/e2e"}
