"""A real headless Chromium for the dashboard's tests, driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` packages (``make browser`` installs them
under CI). Outside CI a machine without them skips the browser tests, saying how to
install them; with ``CI=true`` their absence fails. Chromium starts with a fresh
profile and with everything that would reach for the network turned off (the
machine may have none: without these flags it stalls at start).

:class:`Browser` adds what the tests need on top of the driver: wait for text,
run axe-core (vendored, tests/vendor/axe-core) on the page, read the console, and
save screenshots into ``TASKSTREAM_UI_SCREENSHOTS`` when that names a folder
(``make ui-screenshots`` writes docs/ui/ that way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    JavascriptException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
#: axe impacts that fail a test
BLOCKING = ("serious", "critical")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--window-size=1280,900",
)
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver); a skip with how to install them, or a failure under CI."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver))
                           if not p)
    message = (f"the dashboard's browser tests need {missing}: {INSTALL} "
               "(make browser runs it under CI)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 30.0,
               interval: float = 0.2) -> T:
    """Poll ``check`` (DOM reads may meet elements a refresh just replaced) until truthy."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (StaleElementReferenceException, NoSuchElementException) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last: {last!r})" if last else ""))
        time.sleep(interval)


class Browser:
    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url
        shots = os.environ.get("TASKSTREAM_UI_SCREENSHOTS")
        self.shots = Path(shots) if shots else None

    # -- navigation and reading ------------------------------------------------------

    def go(self, route: str) -> None:
        """Open a dashboard route (``""``, ``"tasks?state=DEAD"``, ...) as a link would,
        and wait until the new page replaced the old one (never read the old one)."""
        if not self.driver.current_url.startswith(f"{self.base_url}/ui"):
            self.driver.get(f"{self.base_url}/ui#/{route}")
            self.wait_element("#main > .page, #token")
            return
        self.js("""
            const old = document.querySelector('#main > .page');
            if (old) old.dataset.old = 'yes';
            if (window.location.hash === arguments[0]) {
              window.dispatchEvent(new HashChangeEvent('hashchange'));
            } else {
              window.location.hash = arguments[0];
            }""", f"#/{route}")
        self.wait_element("#main > .page:not([data-old]), #token")

    def main_text(self) -> str:
        return str(self.driver.find_element(By.ID, "main").text)

    def wait_text(self, text: str, timeout: float = 30.0) -> str:
        return wait_until(f"{text!r} on the page", lambda: (
            self.main_text() if text in self.main_text() else None), timeout)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait_element(self, css: str, timeout: float = 30.0) -> WebElement:
        def check() -> WebElement | None:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            return found[0] if found and found[0].is_displayed() else None
        return wait_until(f"an element {css!r}", check, timeout)

    def click(self, css: str, timeout: float = 30.0) -> None:
        """Click an element; a refresh may swap it just then, so find it again and retry."""
        def attempt() -> bool:
            self.wait_element(css, timeout).click()
            return True
        wait_until(f"a click on {css!r}", attempt, timeout)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def console_errors(self) -> list[str]:
        """Console messages at SEVERE since the last call (the browser clears them)."""
        return [str(e["message"]) for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE"]

    # -- accessibility ----------------------------------------------------------------

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's violations of the current page that are serious or critical."""
        if not self.js("return typeof window.axe === 'object'"):
            self.js(AXE.read_text(encoding="utf-8"))
        try:
            result = self.driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "axe.run(document, {resultTypes: ['violations']})"
                ".then(r => done(JSON.stringify(r.violations)))"
                ".catch(e => done(JSON.stringify({error: String(e)})));")
        except JavascriptException as exc:
            raise AssertionError(f"axe-core did not run: {exc}") from None
        violations = json.loads(result)
        if isinstance(violations, dict):
            raise AssertionError(f"axe-core failed: {violations['error']}")
        return [v for v in violations if v.get("impact") in BLOCKING]

    def assert_accessible(self, page: str) -> None:
        blocking = self.axe()
        details = [f"{v['id']} ({v['impact']}): {v['help']}; "
                   f"{[n['target'] for n in v['nodes'][:3]]}" for v in blocking]
        assert not blocking, f"axe-core on {page}: " + "; ".join(details)

    # -- screenshots --------------------------------------------------------------------

    def screenshot(self, name: str, height: int | None = None) -> None:
        """Save docs-ready PNGs when TASKSTREAM_UI_SCREENSHOTS names a folder."""
        if self.shots is None:
            return
        self.shots.mkdir(parents=True, exist_ok=True)
        size = self.driver.get_window_size()
        try:
            if height is not None:
                self.driver.set_window_size(size["width"], height)
                time.sleep(0.3)
            self.js("document.activeElement && document.activeElement.blur()")
            self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        finally:
            if height is not None:
                self.driver.set_window_size(size["width"], size["height"])


@contextmanager
def chromium(base_url: str) -> Iterator[Browser]:
    """One headless Chromium with a fresh profile, closed afterwards whatever happens."""
    binary, driver_path = browser_binaries()
    digest = hashlib.sha256(AXE.read_bytes()).hexdigest()
    assert digest == AXE_SHA256, "tests/vendor/axe-core/axe.min.js is not the vendored file"
    profile = tempfile.mkdtemp(prefix="taskstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(60)
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver, base_url)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
