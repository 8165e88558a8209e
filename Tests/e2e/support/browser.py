"""A real headless Chromium (Debian's `chromium`, driven by Selenium through Debian's
`chromium-driver`) for the tests of what the broker serves to browsers: the JavaScript client at
`/js/streambroker.js` and the dashboard at `/` (SPEC §13, §14).

Screenshots go to `test-artifacts/` at the repository root (E2E_ARTIFACTS overrides it); the
path is printed so that a test run's output says where they are.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("E2E_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    """One headless Chromium. `js(code)` runs code in the page as the body of an async
    function and returns what it returns (JSON values); errors thrown there fail the call with
    the page's message."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for path in (CHROMIUM, CHROMEDRIVER):
            if not shutil.which(path):
                pytest.fail(f"{path} not found: the test command installs Debian's chromium and chromium-driver",
                            pytrace=False)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(20)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, body: str, *args):
        """Runs `body` as an async function's body (arguments as `args`), returns its result."""
        script = (
            "const done = arguments[arguments.length - 1];"
            "const args = Array.prototype.slice.call(arguments, 0, -1);"
            f"(async (args) => {{ {body} }})(args)"
            ".then((value) => done({ok: true, value}), (e) => done({ok: false, error: String(e && e.stack || e)}));"
        )
        result = self.driver.execute_async_script(script, *args)
        if not result["ok"]:
            raise AssertionError(f"in the page: {result['error']}")
        return result["value"]

    def console(self) -> list[dict]:
        """The page's console messages since the last call (level, message)."""
        return self.driver.get_log("browser")

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        except Exception:
            pass
