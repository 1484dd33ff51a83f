"""A real headless browser for the tests that look at a page as a person would: Chromium from the system's
packages, driven by selenium through the system's chromedriver (nothing is downloaded).

    apt-get update && apt-get install -y chromium chromium-driver

Where either is absent the test is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pytest

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars",
)


def skip_without_browser() -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        missing = " and ".join(name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None)
        pytest.skip(f"{missing} not installed; Debian: {INSTALL}")
    pytest.importorskip("selenium", reason="selenium is a test dependency: pip install -e '.[test]'")


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium with a fresh profile, its console log kept (driver.get_log("browser"))."""
    skip_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="enecg-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(condition, timeout: float = 30.0, interval: float = 0.25):
    """Poll `condition()` until it returns something true (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def network_requests(driver) -> list[str]:
    """Every resource the page fetched over the network (http, https, ws), none expected of an offline page."""
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [url for url in urls if url.split(":", 1)[0] in ("http", "https", "ws", "wss")]


def full_page(driver):
    """A screenshot of the whole page, beyond the window (Chrome DevTools' captureBeyondViewport), as PIL image."""
    import base64

    from PIL import Image

    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return Image.open(io.BytesIO(base64.b64decode(shot["data"])))


def element_boxes(driver, css: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(id or src, (left, top, right, bottom) in page pixels) of every element that `css` selects."""
    boxes = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => { const r = e.getBoundingClientRect();"
        " return [e.id || e.getAttribute('src').slice(0, 80), r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]; })", css)
    return [(name, tuple(round(v * driver.execute_script("return devicePixelRatio")) for v in box)) for name, *box in boxes]


def coloured(image) -> np.ndarray:
    """Which pixels of a screenshot (PNG bytes or PIL image) are coloured: not white, grey or black."""
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 40


def coloured_fraction(image, box: tuple[int, int, int, int] | None = None) -> float:
    """The fraction of a screenshot's pixels (in `box`, left, top, right, bottom, if given; or of a mask from
    `coloured`) that are coloured: axes and text alone give ~0; drawn data (lines, bars, cells, points) more."""
    mask = image if isinstance(image, np.ndarray) else coloured(image)
    if box is not None:
        left, top, right, bottom = box
        mask = mask[top:bottom, left:right]
    return float(mask.mean()) if mask.size else 0.0
