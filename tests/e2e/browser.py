"""Open a page in the machine's headless Chromium (Debian package ``chromium``) through Playwright.

Playwright drives the system browser by ``executable_path``: nothing is downloaded at run time.  A
page is loaded from disk, every console message, page error and network request is recorded, and a
full-page PNG is written, so a test can assert what a person opening the file would see.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian's /usr/bin/chromium is a shell wrapper; the binary itself is what Playwright should start.
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def chromium_executable() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    pytest.fail("Chromium is not installed: `make tools` installs it (as root: apt-get install -y chromium)")


@dataclass
class PageVisit:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    charts: dict[str, tuple[float, float]] = field(default_factory=dict)  # data-chart -> drawn (width, height)
    sections: list[str] = field(default_factory=list)  # ids of the <section>s
    text: str = ""

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")] + self.errors


def visit(page_file: Path, png: Path, width: int = 1280) -> PageVisit:
    """Load ``page_file`` in headless Chromium, render it to ``png`` (full page), report what happened."""
    from playwright.sync_api import sync_playwright

    out = PageVisit()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: out.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: out.errors.append(str(e)))
            page.on("request", lambda r: out.requests.append(r.url))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            page.screenshot(path=str(png), full_page=True)
            for figure in page.locator("figure.chart").all():
                name = figure.get_attribute("data-chart") or "?"
                box = figure.locator("svg").first.bounding_box() if figure.locator("svg").count() else None
                out.charts[name] = (box["width"], box["height"]) if box else (0.0, 0.0)
            out.sections = [s.get_attribute("id") or "" for s in page.locator("section").all()]
            out.text = page.inner_text("body")
        finally:
            browser.close()
    return out
