"""A real browser for console tests: Debian's Chromium driven by Selenium (chromedriver).

Chromium runs headless with a fresh profile and no background networking (this machine has
no network); it trusts exactly the API's certificate (its public key's hash), not every
certificate. Screenshots go to ``ARTIFACTS`` (``artifacts/console/``; CI keeps them).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def spki_hash(cert_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate (Chromium's pin format)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def binaries() -> tuple[Path, Path]:
    for p in (CHROMIUM, CHROMEDRIVER):
        if not p.exists() and shutil.which(p.name) is None:
            pytest.fail(f"{p} is missing: `make deps` installs Debian's chromium and chromium-driver")
    return (
        CHROMIUM if CHROMIUM.exists() else Path(str(shutil.which("chromium"))),
        CHROMEDRIVER if CHROMEDRIVER.exists() else Path(str(shutil.which("chromedriver"))),
    )


@contextmanager
def chromium(
    server_cert: Path | None = None, width: int = 1440, height: int = 1000
) -> Iterator[webdriver.Chrome]:
    binary, driver = binaries()
    profile = tempfile.mkdtemp(prefix="echo-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(binary)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root here
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(flag)
    if server_cert is not None:
        opts.add_argument(f"--ignore-certificate-errors-spki-list={spki_hash(server_cert)}")
    browser = webdriver.Chrome(options=opts, service=Service(executable_path=str(driver)))
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(browser: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def wait_for(
    browser: webdriver.Chrome, check: Callable[[Any], Any], timeout: float = 15.0, what: str = ""
) -> Any:
    """Poll the page until ``check(browser)`` is truthy (WebDriverWait: a deadline, no sleep).

    Live pages re-render while the check reads them: an element replaced mid-check is a
    retry, not a failure."""
    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(check, message=what)


_SNAPSHOT = """
const [selector, attrs] = arguments;
return Array.from(document.querySelectorAll(selector), (e) => {
  const out = {text: (e.textContent || '').trim()};
  for (const a of attrs) out[a] = e.getAttribute(a);
  return out;
});
"""


def snapshot(browser: webdriver.Chrome, selector: str, *attrs: str) -> list[dict[str, Any]]:
    """The text and ``attrs`` of every element matching ``selector``, read in one script, so
    a re-render of a live page cannot replace an element halfway through the read."""
    return list(browser.execute_script(_SNAPSHOT, selector, list(attrs)))


def click(browser: webdriver.Chrome, selector: str, timeout: float = 10.0) -> None:
    """Click the first element matching ``selector``, finding it again if a re-render
    replaced it between the find and the click."""

    def clicked(b: webdriver.Chrome) -> bool:
        found = css(b, selector)
        if not found:
            return False
        found[0].click()
        return True

    wait_for(browser, clicked, timeout, f"nothing to click at {selector}")


def rendered(browser: webdriver.Chrome, timeout: float = 15.0) -> None:
    wait_for(
        browser,
        lambda b: (
            b.find_elements(By.CSS_SELECTOR, "#app[data-rendered='1']")
            or b.find_elements(By.CSS_SELECTOR, ".notice.error")
        ),
        timeout,
        "the console page did not render",
    )
    errors = browser.find_elements(By.CSS_SELECTOR, "main .notice.error[role=alert]")
    assert not errors, errors[0].text


def css(browser: webdriver.Chrome, selector: str) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, selector)
