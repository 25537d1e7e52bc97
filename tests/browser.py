"""Headless Chromium for the tests that check what a person sees.

Debian's chromium, driven by Playwright with ``executable_path``: Playwright's own browser download is not
reachable from the machines these tests run on. The flags keep Chromium from reaching for the network on start
(background updates, sync, QUIC), which a closed network refuses many times over.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@contextmanager
def chromium_browser():
    """A headless Chromium browser for one test; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
