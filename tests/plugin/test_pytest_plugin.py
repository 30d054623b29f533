"""The pytest plugin, used by a small test project run in a pytest subprocess.

The project's own session starts its own redis-server (``omnitask_redis``) and real workers;
nothing here touches a Redis this suite did not start.
"""

from __future__ import annotations

import textwrap

import pytest

# In a non-root conftest, pytest refuses pytest_plugins; a test module may still load it.
pytest_plugins = ["pytester"]

pytestmark = pytest.mark.process

TASKS = """
from omnitask import OmniTask

app = OmniTask("plugdemo")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def where(self) -> str:
    return f"{self.request.worker} {self.request.queue}"
"""

EXPLICIT = """
from omnitask import OmniTask

# The broker is set in code: a worker of this app would ignore OMNITASK_BROKER_URL.
app = OmniTask("explicit", broker="redis://127.0.0.1:1/0")
"""

TESTS = """
import pytest

import tasks

BEFORE = tasks.app.conf
prefixes = []


def test_worker_runs_tasks(omnitask_worker, omnitask_app):
    assert omnitask_app is tasks.app
    prefixes.append(omnitask_app.conf.key_prefix)
    assert tasks.add.delay(2, 3).get(timeout=20) == 5
    assert "omnitask worker" in omnitask_worker.output
    assert tasks.where.delay().get(timeout=20).endswith(" default")


def test_start_worker_with_options(omnitask_start_worker, omnitask_app):
    prefixes.append(omnitask_app.conf.key_prefix)
    worker = omnitask_start_worker(concurrency=1, queues=["other"])
    assert worker.args[-2:] == ("-Q", "other")
    result = tasks.where.apply_async(queue="other")
    assert result.get(timeout=20).endswith(" other")
    assert worker.stop() == 0
    assert worker.stop() == 0  # stopping twice is harmless


def test_eager_needs_no_worker(omnitask_eager):
    assert omnitask_eager is tasks.app and tasks.app.conf.eager
    assert tasks.where.delay().get() == "eager default"


def test_each_test_has_its_own_prefix():
    assert len(set(prefixes)) == 2
    assert not any(prefix == BEFORE.key_prefix for prefix in prefixes)


def test_settings_are_restored(monkeypatch):
    assert tasks.app.conf == BEFORE
    # Restoring pinned nothing: settings the app did not set still follow the environment.
    monkeypatch.setenv("OMNITASK_KEY_PREFIX", "from-env")
    tasks.app.configure()
    assert tasks.app.conf.key_prefix == "from-env" and tasks.app.conf.eager is False


class TestExplicitBroker:
    @pytest.fixture
    def omnitask_app_spec(self):
        return "explicit:app"

    def test_refused(self, omnitask_worker):
        raise AssertionError("a worker on the app's own broker must not start")
"""


def test_project_using_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nomnitask_app = tasks:app\n")
    pytester.makepyfile(tasks=TASKS, explicit=EXPLICIT, test_project=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        ["*sets broker in code, which wins over OMNITASK_BROKER_URL*redis://127.0.0.1:1/0*"]
    )


def test_without_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_project="""
        def test_app(omnitask_app):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set omnitask_app = *override the omnitask_app_spec fixture*"])


def test_missing_redis_server_fails_with_the_install_hint(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            import pytest

            from omnitask.testing import server


            def _missing():
                raise server.RedisServerNotFound(server.INSTALL_HINT)


            @pytest.fixture(scope="session", autouse=True)
            def _no_redis_server():
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(server, "find_redis_server", _missing)
                    yield
            """
        )
    )
    pytester.makepyfile(
        test_project="""
        def test_url(omnitask_redis_url):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*redis-server was not found*apt-get install*"])
