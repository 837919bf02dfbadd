"""The site builds strictly, its reference pages come from the code, and it works in a browser."""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import io
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import pytest
import yaml
from PIL import Image

import moderncnn
from moderncnn.cli import COMMANDS
from moderncnn.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def nav_pages() -> list[str]:
    """Every page of mkdocs.yml's nav, as docs-relative paths."""
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages: list[str] = []

    def walk(items):
        for item in items:
            for value in item.values() if isinstance(item, dict) else [item]:
                walk(value) if isinstance(value, list) else pages.append(value)

    walk(config["nav"])
    return pages


def test_every_page_in_docs_is_in_the_nav() -> None:
    pages = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    assert sorted(nav_pages()) == pages


def test_the_api_page_documents_every_public_name(site: Path) -> None:
    page = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="(moderncnn\.[\w.]+)"', page))
    for name in moderncnn.__all__:
        assert f"{moderncnn._LAZY[name]}.{name}" in ids, name
    # generated from the docstrings: e.g. load_model's own parameter text, not a hand copy
    assert "HF_HUB_OFFLINE" in page and "a plain state dict" in page
    assert not re.search(r":(func|class|mod|meth|attr):<code>", page)  # Sphinx roles, rendered


def test_the_cli_page_is_every_command_s_own_help(site: Path) -> None:
    page = html.unescape((site / "reference" / "cli" / "index.html").read_text(encoding="utf-8"))
    text = re.sub(r"<[^>]+>", "", page)  # the code blocks' words, without the highlighting
    for name in COMMANDS:
        assert f"moderncnn {name} --help" in text, name
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main([name, "--help"])
        lines = [line.strip() for line in (out.getvalue() or err.getvalue()).splitlines()]
        flags = [line.split()[0] for line in lines if line.startswith("--")]
        assert all(flag in text for flag in flags), name  # each of its flags, from its parser
    assert "--trainer.max_epochs" in text  # fit's Trainer flags, from LightningCLI


def test_the_benchmarks_page_shows_every_results_file(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    for result in sorted((REPO / "benchmarks" / "results").glob("*.md")):
        assert f"benchmarks/results/{result.name}" in page, result.name
    for png in sorted((REPO / "benchmarks" / "results").glob("*.png")):
        assert (site / "images" / "benchmarks" / png.name).is_file()


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-extensions", "--disable-sync", "--no-first-run", "--window-size=1280,1600",
)  # fmt: skip


@pytest.fixture
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on localhost (the search's web worker needs http, not file://)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver: sudo apt-get install chromium "
    "chromium-driver (scripts/setup.sh --test installs them)",
)
def test_the_site_in_headless_chromium(served: str, tmp_path: Path, monkeypatch) -> None:
    """Follows the navigation from the home page to every page: each page's images load, the
    console has no errors, and a screenshot of the home page is kept in the test's tmp dir."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    shot = tmp_path / "site_home.png"
    try:
        driver.get(served)
        assert driver.title.endswith("moderncnn"), driver.title
        assert driver.save_screenshot(str(shot))
        links = driver.execute_script(
            "return Array.from(document.querySelectorAll('nav.md-nav--primary a.md-nav__link'))"
            ".map(a => a.href).filter(h => h);"
        )
        pages = sorted({urljoin(link, urlparse(link).path) for link in links if served in link})
        assert len(pages) == len(nav_pages()), pages  # the nav reaches every page
        pictures = 0
        for url in pages:
            driver.get(url)
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth]);"
            )
            broken = [src for src, done, width in images if not (done and width > 0)]
            assert broken == [], f"{url}: images that did not load: {broken}"
            pictures += len(images)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], f"{url}: console errors: {errors}"
            assert driver.find_elements("css selector", "article h1"), f"{url}: no title"
    finally:
        driver.quit()
    assert pictures >= 15  # the pages' figures, not only the logo
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100 and pixels.std() > 10  # not blank
    print(f"screenshot: {shot}")
