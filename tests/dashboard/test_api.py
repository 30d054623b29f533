"""The dashboard's JSON API against a real worker and a real ``omnitask dashboard`` process."""

from __future__ import annotations

import pytest
import redis

from omnitask import OmniTask
from tests.conftest import WorkerFactory, wait_for
from tests.dashboard import app as dash
from tests.dashboard.conftest import APP, WORKER_ENV, DashboardFactory

pytestmark = pytest.mark.process


def test_workers_queues_tasks_and_overview(
    app: OmniTask, start_worker: WorkerFactory, start_dashboard: DashboardFactory, r: redis.Redis
) -> None:
    start_worker(APP, "-n", "dash-w1", env=WORKER_ENV)
    board = start_dashboard()
    done = dash.add.delay(2, 3)
    assert done.get(timeout=10) == 5
    held = dash.hold.delay("a")
    wait_for(lambda: r.lrange("test:started", 0, -1) == [b"a"], what="hold to start")
    later = dash.add.apply_async((5, 6), countdown=60)
    waiting = dash.add.apply_async((7, 8), queue="other", priority=7)  # nobody consumes it

    wait_for(lambda: board.api("/api/workers")[0]["current"], what="the worker's current task")
    [worker] = board.api("/api/workers")
    assert (worker["name"], worker["alive"], worker["concurrency"]) == ("dash-w1", True, 1)
    assert [t["task_id"] for t in worker["current"]] == [held.id]
    assert worker["current"][0]["name"] == "tests.dashboard.app.hold"
    assert 0 <= worker["heartbeat_age_s"] < 5
    assert worker["succeeded"] == 1 and worker["failed"] == 0

    queues = {q["name"]: q for q in board.api("/api/queues")}
    assert queues["default"]["delayed"] == 1
    assert queues["default"]["in_flight"] == 1
    assert queues["default"]["in_per_s"] > 0 and queues["default"]["out_per_s"] > 0
    other = queues["other"]
    assert (other["ready"], other["ready_by_priority"], other["consumers"]) == (1, {"7": 1}, 0)
    assert other["oldest_age_s"] is not None and other["oldest_age_s"] >= 0

    overview = board.api("/api/overview")
    assert overview["app"] == "tdash"
    assert (overview["workers"], overview["ready"], overview["delayed"]) == (1, 1, 1)
    assert overview["in_flight"] == 1

    found = board.api("/api/tasks?name=add")
    assert {t["id"] for t in found["tasks"]} == {done.id, later.id, waiting.id}
    assert [t["id"] for t in board.api("/api/tasks?state=success")["tasks"]] == [done.id]
    assert [t["id"] for t in board.api(f"/api/tasks?id={held.id[:12]}")["tasks"]] == [held.id]
    assert board.api("/api/tasks?state=STARTED")["tasks"][0]["id"] == held.id
    assert board.get("/api/tasks?state=bogus").status == 400
    assert board.get("/api/tasks?limit=0").status == 400

    detail = board.api(f"/api/tasks/{done.id}")
    assert detail["result"]["state"] == "SUCCESS" and detail["result"]["result"] == "5"
    assert [e["kind"] for e in detail["timeline"]] == [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert detail["message"] is None  # acknowledged: the arguments are gone
    delayed = board.api(f"/api/tasks/{later.id}")["message"]
    assert (delayed["where"], delayed["args"]) == ("delayed", "(5, 6)")
    ready = board.api(f"/api/tasks/{waiting.id}")["message"]
    assert (ready["where"], ready["queue"], ready["args"]) == (
        "ready (priority 7)",
        "other",
        "(7, 8)",
    )
    running = board.api(f"/api/tasks/{held.id}")["message"]
    assert running["where"].startswith("in flight (dash-w1/")
    assert board.get("/api/tasks/no-such-task").status == 404
    # A task id of the caller's choosing may hold a slash.
    dash.add.apply_async((9, 9), task_id="order/42", countdown=60)
    assert board.api("/api/tasks/order%2F42")["message"]["args"] == "(9, 9)"

    # The window reads new events at most four times a second: the last send may wait a poll.
    wait_for(
        lambda: sum(board.api("/api/throughput?seconds=10")["sent"]) == 5, what="the last send"
    )
    series = board.api("/api/throughput?seconds=10")
    assert len(series["t"]) == len(series["succeeded"]) == 10
    assert sum(series["succeeded"]) == 1 and sum(series["sent"]) == 5
    assert any(v is not None for v in series["runtime_p50"])
    r.rpush("test:go:a", 1)
    assert held.get(timeout=10) == "a"


def test_the_page_and_its_static_files(start_dashboard: DashboardFactory, app: OmniTask) -> None:
    board = start_dashboard()
    page = board.get("/")
    assert page.status == 200 and "<title>omnitask dashboard</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        reply = board.get(path)
        assert reply.status == 200 and kind in reply.headers["content-type"]
    # Nothing from elsewhere: the page works offline.
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert "http://" not in board.get(path).text.replace("http://127.0.0.1", "")
        assert "https://" not in board.get(path).text


def test_failed_task_detail_shows_the_exception_and_traceback(
    app: OmniTask, start_worker: WorkerFactory, start_dashboard: DashboardFactory
) -> None:
    start_worker(APP, env=WORKER_ENV)
    board = start_dashboard()
    failed = dash.fragile.delay("x")
    wait_for(lambda: failed.state == "FAILURE", what="the task to fail")
    detail = board.api(f"/api/tasks/{failed.id}")
    result = detail["result"]
    assert result["exception_type"] == "tests.dashboard.app.Broken"
    assert result["exception"] == "x is broken"
    assert "raise Broken" in result["traceback"]
    assert detail["summary"]["state"] == "FAILURE"
    assert detail["summary"]["exception"] == "tests.dashboard.app.Broken: x is broken"
    # The failed message is kept among the dead letters, so its arguments are still shown.
    assert detail["message"]["where"].startswith("dead letter ")
    assert detail["message"]["args"] == "('x',)"


def test_dead_letters_requeue_and_purge_wait_for_confirmation(
    app: OmniTask, start_worker: WorkerFactory, start_dashboard: DashboardFactory, r: redis.Redis
) -> None:
    start_worker(APP, env=WORKER_ENV)
    board = start_dashboard()
    first = dash.fragile.delay("x")
    wait_for(lambda: app.dead_letters.count() == 1, what="a dead letter")
    listing = board.api("/api/dead-letters")
    [letter] = listing["letters"]
    assert (listing["counts"], listing["total"]) == ({"default": 1}, 1)
    assert (letter["task_id"], letter["reason"], letter["requeueable"]) == (
        first.id,
        "failed",
        True,
    )
    assert letter["envelope"]["args"] == "('x',)"
    assert "message_base64" not in letter

    ask = board.post("/api/dead-letters/requeue", {"queue": "default", "ids": [letter["id"]]})
    assert ask.status == 428
    assert ask.json()["count"] == 1
    assert ask.json()["confirm"] == "Requeue 1 dead letter(s) from queue 'default'?"
    assert app.dead_letters.count() == 1  # nothing was done

    r.set("test:repaired", 1)
    body = {"queue": "default", "ids": [letter["id"]], "confirm": True}
    done = board.post("/api/dead-letters/requeue", body)
    assert (done.status, done.json()) == (200, {"done": True, "requeued": 1, "errors": []})
    # A new handle each time: one caches the final state it read (the first FAILURE).
    wait_for(
        lambda: app.AsyncResult(first.id).state == "SUCCESS", what="the requeued task to succeed"
    )
    assert board.api("/api/dead-letters")["letters"] == []
    again = board.post("/api/dead-letters/requeue", body).json()
    assert again["requeued"] == 0 and "has no dead letter" in again["errors"][0]

    r.delete("test:repaired")
    dash.fragile.delay("y")
    dash.fragile.delay("z")
    wait_for(lambda: app.dead_letters.count() == 2, what="two dead letters")
    ask = board.post("/api/dead-letters/purge", {"queue": "default"})
    assert (ask.status, ask.json()["count"]) == (428, 2)
    assert app.dead_letters.count() == 2
    gone = board.post("/api/dead-letters/purge", {"queue": "default", "confirm": True})
    assert (gone.status, gone.json()) == (200, {"done": True, "deleted": 2})
    assert app.dead_letters.count() == 0


BAD_BODIES = [
    ("/api/dead-letters/requeue", {}, '"all": true'),
    ("/api/dead-letters/requeue", {"ids": ["1-0"]}, "needs the queue"),
    ("/api/dead-letters/requeue", {"ids": "1-0", "queue": "default"}, "ids must be a list"),
    ("/api/dead-letters/purge", {"queue": "bad name!"}, "is not valid"),
    ("/api/dead-letters/purge", {"reason": 3}, "reason must be a string"),
    ("/api/dead-letters/purge", [1, 2], "JSON object"),
]


def test_bad_requests_and_cross_site_guards(
    app: OmniTask, start_dashboard: DashboardFactory
) -> None:
    board = start_dashboard()
    for path, body, error in BAD_BODIES:
        reply = board.post(path, body)
        assert reply.status == 400 and error in reply.json()["error"], (body, reply.text)
    json_type = {"Content-Type": "application/json"}
    assert board.post("/api/dead-letters/purge", raw=b"{nope", headers=json_type).status == 400

    # A form on another site can POST, but not as JSON: refused before anything is read.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert board.post("/api/dead-letters/purge", raw=b"confirm=true", headers=form).status == 403
    elsewhere = {**json_type, "Origin": "http://evil.example"}
    assert board.post("/api/dead-letters/purge", {"confirm": True}, headers=elsewhere).status == 403
    same = {**json_type, "Origin": board.base}
    assert board.post("/api/dead-letters/purge", {}, headers=same).status == 428
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not a loopback name.
    assert board.get("/api/overview", headers={"Host": "evil.example:80"}).status == 400
    assert board.get("/api/overview", headers={"Host": f"localhost:{board.port}"}).status == 200
