"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for the web
console's browser tests and tools/web_screenshots.py. Only the system browser and driver
are used: selenium is never allowed to fetch one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-extensions", "--disable-sync",
                  "--hide-scrollbars")


def missing() -> str:
    """Why a browser test cannot run here ("" when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'selenium>=4.15,<5')"
    if not any(shutil.which(b) for b in BROWSERS):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not any(shutil.which(d) for d in DRIVERS):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return ""


def headless_chromium(profile: Path, width: int = 1280, height: int = 900) -> Any:
    """A selenium driver for a fresh headless Chromium with its profile under `profile`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(p for p in map(shutil.which, BROWSERS) if p)
    driver_path = next(p for p in map(shutil.which, DRIVERS) if p)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


def wait_until(driver: Any, condition: Any, what: str, timeout: float = 20.0) -> Any:
    """WebDriverWait with a message naming what was awaited (and the page's text). The
    pages re-render rows as live updates come (SSE, polls), so an element a condition found
    may be replaced before it is read: that try counts as not yet, and the wait goes on."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition)
    except TimeoutException:
        text = driver.find_element("tag name", "body").text
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                             f"the page shows:\n{text}") from None


def log_in(driver: Any, url: str, token: str) -> None:
    """Open the console and, if it asks for a token, give it."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    if not token:
        return
    field = wait_until(driver, lambda d: d.find_elements(By.ID, "token"), "the login form")[0]
    field.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    wait_until(driver, lambda d: not d.find_elements(By.ID, "token"), "the login to pass")
