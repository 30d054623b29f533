"""Build the docs site and check it in a real browser: pages, links and search.

    python scripts/check_site.py --screenshot /tmp/site.png

Builds the site with ``mkdocs build --strict`` into a temporary directory, serves it with
``python -m http.server`` on a free loopback port, and drives headless Chromium through
Selenium and the system's chromedriver (``/usr/bin/chromium``, ``/usr/bin/chromedriver``:
Debian's ``chromium`` and ``chromium-driver`` packages). Checks:

- every page of the nav in mkdocs.yml loads, is not a 404, and has its ``<h1>``;
- every link between pages of the site, and every ``#anchor`` in them, leads somewhere;
- clicking through the navigation (a nav entry, the footer's "next" link) changes the page;
- the search box (Material's search runs in the browser) finds results for a query.

Exits 0 when everything holds, 1 otherwise, 2 when the browser or its driver is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 15.0


def say(line: str, *, err: bool = False) -> None:
    """Print one line of the report (stdout; stderr for the final failure line)."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def nav_pages(config_file: Path) -> list[tuple[str, str]]:
    """``(title, path)`` of every page in the nav of ``config_file``, in order."""
    from mkdocs.config import load_config

    pages: list[tuple[str, str]] = []

    def walk(items: list[object]) -> None:
        for item in items:
            if isinstance(item, dict):
                for title, value in item.items():
                    if isinstance(value, list):
                        walk(value)
                    else:
                        pages.append((str(title), str(value)))
            elif isinstance(item, str):
                pages.append((item, item))

    walk(load_config(str(config_file))["nav"] or [])
    return pages


def page_url(base: str, path: str) -> str:
    """The URL of the built page for ``path`` (``guide/tasks.md`` -> ``guide/tasks/``)."""
    stem = path.removesuffix(".md")
    if stem == "index":
        return base
    if stem.endswith("/index"):
        stem = stem.removesuffix("index")
    return f"{base}{stem.rstrip('/')}/"


def build(site: Path) -> None:
    """Run ``mkdocs build --strict`` into ``site``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 with ``python -m http.server``; yield its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                with urllib.request.urlopen(base, timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server did not start on port {port}") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def browser(chromium: str, chromedriver: str) -> object:
    """A headless Chromium driven through the given chromedriver (no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.page_load_strategy = "eager"  # the DOM is what is checked; no wait for images
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        # Nothing outside the site: a CDN that cannot be reached must fail at once, not
        # stall every page load until it times out.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


class Checker:
    """Runs the checks against a served site and collects failures."""

    def __init__(self, driver: object, base: str) -> None:
        self.driver = driver
        self.base = base
        self.failures: list[str] = []
        self._html: dict[str, str] = {}

    def fail(self, message: str) -> None:
        """Record and report one failed check."""
        self.failures.append(message)
        say(f"FAIL {message}")

    def wait(self, condition: object, what: str) -> object:
        """Wait until ``condition(driver)`` is truthy and return it; a failure after WAIT_S."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, WAIT_S).until(condition)
        except TimeoutException:
            self.fail(f"timed out waiting for {what}")
            return None

    def html(self, url: str) -> str | None:
        """The HTML at ``url`` (cached), or None when it is not a 200."""
        if url not in self._html:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    self._html[url] = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError:
                return None
        return self._html[url]

    def pages(self, pages: list[tuple[str, str]]) -> set[str]:
        """Open every nav page; return the same-site links found on them."""
        from selenium.webdriver.common.by import By

        links: set[str] = set()
        for title, path in pages:
            url = page_url(self.base, path)
            self.driver.get(url)
            heading = self.driver.find_elements(By.CSS_SELECTOR, "article h1")
            if "404" in self.driver.title or not heading:
                self.fail(f"{path}: no page at {url} (title {self.driver.title!r})")
                continue
            if not heading[0].text.strip():
                self.fail(f"{path}: empty <h1>")
            hrefs = self.driver.execute_script(
                "return Array.from(document.querySelectorAll('a[href]'), a => a.href)"
            )
            links.update(h for h in hrefs if h.startswith(self.base))
            say(f"ok   {path}: {heading[0].text.strip()!r} ({title})")
        return links

    def links(self, links: set[str]) -> None:
        """Every link within the site leads to a page, and its anchor to an element there."""
        for link in sorted(links):
            url, fragment = urldefrag(link)
            html = self.html(url)
            if html is None:
                self.fail(f"broken link {link}")
            elif fragment and not re.search(rf'id="{re.escape(fragment)}"', html):
                self.fail(f"broken anchor {link}")

    def click_through(self) -> None:
        """Navigate by clicking, as a reader does: a nav entry, then the footer's next link."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.base)
        entry = self.driver.find_elements(
            By.CSS_SELECTOR, ".md-sidebar--primary a.md-nav__link[href]"
        )
        hrefs = [e.get_attribute("href") or "" for e in entry]
        target = next(
            (e for e, h in zip(entry, hrefs, strict=True) if "#" not in h and h != self.base), None
        )
        if target is None:
            self.fail("no nav entry to click on the home page")
            return
        href = target.get_attribute("href")
        self.driver.execute_script("arguments[0].click()", target)
        self.wait(lambda d: d.current_url.split("#")[0] == href, f"the nav click to {href}")
        nxt = self.driver.find_elements(By.CSS_SELECTOR, "a.md-footer__link--next")
        if not nxt:
            self.fail(f"{href}: no footer 'next' link")
            return
        before = self.driver.current_url
        self.driver.execute_script("arguments[0].click()", nxt[0])
        self.wait(lambda d: d.current_url != before, "the footer 'next' click")
        say(f"ok   click-through: home -> {href} -> {self.driver.current_url}")

    def search(self, query: str) -> int:
        """Type ``query`` into the search box; return how many results it lists."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.base)
        box = self.wait(
            lambda d: d.find_element(By.CSS_SELECTOR, "input.md-search__input"), "the search box"
        )
        if box is None:
            return 0
        # The box sits behind a label on narrow layouts; focusing it by script opens it always.
        self.driver.execute_script("arguments[0].focus()", box)
        box.send_keys(query)
        found = self.wait(
            lambda d: d.find_elements(By.CSS_SELECTOR, "li.md-search-result__item") or None,
            f"search results for {query!r}",
        )
        count = len(found) if found else 0
        if count:
            first = found[0].text.strip().splitlines()[0]
            say(f"ok   search {query!r}: {count} results, first {first!r}")
        else:
            self.fail(f"search for {query!r} found nothing")
        return count


def main(argv: list[str] | None = None) -> int:
    """Build, serve and check the site; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, help="save a screenshot here (PNG)")
    parser.add_argument("--query", default="lease", help="search query (default: lease)")
    parser.add_argument("--site", type=Path, help="check this built site instead of building")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--chromedriver", default=CHROMEDRIVER)
    args = parser.parse_args(argv)

    for binary in (args.chromium, args.chromedriver):
        if not os.access(binary, os.X_OK):
            say(
                f"check_site: {binary} not found; install it, e.g. "
                "'sudo apt-get install -y chromium chromium-driver'",
                err=True,
            )
            return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="omnitask-site-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build(site)
            say(f"built in {time.monotonic() - started:.1f} s")
        pages = nav_pages(ROOT / "mkdocs.yml")
        with serve(site) as base:
            driver = browser(args.chromium, args.chromedriver)
            try:
                checker = Checker(driver, base)
                links = checker.pages(pages)
                checker.links(links)
                checker.click_through()
                checker.search(args.query)
                if args.screenshot is not None:
                    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(args.screenshot))
                    say(f"screenshot: {args.screenshot}")
            finally:
                driver.quit()
    elapsed = time.monotonic() - started
    summary = f"{len(pages)} pages, {len(links)} links, {elapsed:.1f} s"
    if checker.failures:
        say(f"check_site: {len(checker.failures)} failure(s); {summary}", err=True)
        return 1
    say(f"check_site: ok; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
