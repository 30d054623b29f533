"""The dashboard as a person sees it: headless Chromium against a real dashboard and worker.

Like tests/docs/test_site.py, it drives Debian's ``chromium`` through its ``chromedriver``
(nothing downloaded); elsewhere it is skipped with the command that installs them. The
screenshot is saved in the test's tmp directory; with ``OMNITASK_UPDATE_SCREENSHOT=1`` it is
also written to docs/img/dashboard.png, the picture of the Dashboard guide page.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from omnitask import OmniTask
from tests.conftest import ROOT, WorkerFactory, wait_for
from tests.dashboard import app as dash
from tests.dashboard.conftest import APP, WORKER_ENV, DashboardFactory

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 10.0
DOCS_SHOT = ROOT / "docs" / "img" / "dashboard.png"

_missing = [b for b in (CHROMIUM, CHROMEDRIVER) if not os.access(b, os.X_OK)]

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        bool(_missing),
        reason=f"{', '.join(_missing)} missing: 'apt-get install -y chromium chromium-driver'",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("selenium") is None,
        reason="selenium missing: pip install -e '.[dev]'",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1050",
        "--force-device-scale-factor=1",
        # Nothing outside loopback: the page must work offline, so any other request fails.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def click(driver: Any, selector: str) -> None:
    """Click the first match of `selector`, found again if a refresh replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(d: Any) -> bool:
        found = css(d, selector)
        if not found:
            return False
        try:
            found[0].click()
        except StaleElementReferenceException:
            return False
        return True

    until(driver, clicked, f"{selector!r} to be clicked")


def text_of(driver: Any, selector: str) -> str:
    found = css(driver, selector)
    return str(found[0].text) if found else ""


def test_dashboard_in_a_browser(
    app: OmniTask,
    start_worker: WorkerFactory,
    start_dashboard: DashboardFactory,
    browser: Any,
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    start_worker(APP, "-n", "worker1@web-1", concurrency=2, env=WORKER_ENV)
    board = start_dashboard()
    done = dash.add.delay(1, 2)
    assert done.get(timeout=10) == 3
    broken = dash.fragile.delay("invoice-42")
    wait_for(lambda: app.dead_letters.count() == 1, what="a dead letter")

    # Workers: the page renders and shows the worker, alive.
    browser.get(board.base + "/#/workers")
    until(browser, lambda d: css(d, 'tr[data-worker="worker1@web-1"]'), "the worker's row")
    assert "alive" in text_of(browser, 'tr[data-worker="worker1@web-1"]')
    until(browser, lambda d: text_of(d, "#tile-workers .value") == "1", "the workers tile")
    assert browser.execute_script("return document.getElementById('chart-throughput').width") > 0

    # Queues.
    click(browser, 'nav a[data-page="queues"]')
    until(browser, lambda d: css(d, 'tr[data-queue="default"]'), "the default queue's row")

    # Tasks: the task sent above is listed; its detail shows its result and timeline.
    click(browser, 'nav a[data-page="tasks"]')
    row = f'tr[data-task="{done.id}"]'
    until(browser, lambda d: css(d, row), "the task in the task list")
    assert "SUCCESS" in text_of(browser, row)
    click(browser, f"{row} a")
    until(browser, lambda d: "3" in text_of(d, "#task-result"), "the task's result")
    assert "task-succeeded" in text_of(browser, "main table")
    # Searching by state keeps the form and finds the failed task.
    click(browser, 'nav a[data-page="tasks"]')
    state = until(browser, lambda d: css(d, '#task-search select[name="state"]'), "the search form")
    state[0].send_keys("FAILURE")
    click(browser, '#task-search button[type="submit"]')
    failed_row = f'tr[data-task="{broken.id}"]'
    until(
        browser,
        lambda d: css(d, failed_row) and not css(d, row),
        "the search to show only the failed task",
    )

    # Some traffic for the live chart and a task running, then the picture for the docs.
    for i in range(12):
        dash.add.delay(i, i)
        dash.retry_once.delay(f"t{i}")
        time.sleep(0.15)
    running = dash.hold.delay("report")
    wait_for(lambda: r.lrange("test:started", 0, -1) == [b"report"], what="hold to start")
    css(browser, "#task-search select")[0].send_keys("any state")
    click(browser, '#task-search button[type="submit"]')
    until(browser, lambda d: len(css(d, "tr[data-task]")) > 20, "the task list to fill")
    time.sleep(1.2)  # one more tick of the chart, with the last tasks in it
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000, "the screenshot is suspiciously small"
    if os.environ.get("OMNITASK_UPDATE_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        DOCS_SHOT.write_bytes(shot.read_bytes())
    r.rpush("test:go:report", 1)
    assert running.get(timeout=10) == "report"

    # Dead letters: requeue from the page, through its confirmation dialog.
    click(browser, 'nav a[data-page="dead-letters"]')
    button = until(browser, lambda d: css(d, "button.requeue"), "the requeue button")
    assert "invoice-42" in text_of(browser, "main table")
    # A refresh that brings the same letters leaves the page alone: the button stays the same node.
    browser.execute_script("arguments[0].dataset.mark = 'seen'", button[0])
    time.sleep(2.5)  # past one 2 s refresh of the view
    assert css(browser, 'button.requeue[data-mark="seen"]'), "an unchanged refresh redrew the page"
    r.set("test:repaired", 1)
    click(browser, "button.requeue")
    until(browser, lambda d: not css(d, "#modal")[0].get_attribute("hidden"), "the dialog")
    assert text_of(browser, "#modal-text") == "Requeue 1 dead letter(s) from queue 'default'?"
    browser.save_screenshot(str(tmp_path / "dashboard-confirm.png"))
    assert app.dead_letters.count() == 1, "nothing is requeued before the confirmation"
    click(browser, "#modal-ok")
    until(browser, lambda d: "Requeued 1" in text_of(d, "#toast"), "the requeued message")
    wait_for(lambda: app.AsyncResult(broken.id).state == "SUCCESS", what="the requeued task to run")
    until(browser, lambda d: not css(d, "button.requeue"), "the dead letter to leave the list")
    assert app.dead_letters.count() == 0
    # Chrome logs every answer that is not 2xx; a 428 is the confirmation step, by design.
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "428 (Precondition Required)" not in e["message"]
    ]
    assert not errors, errors
