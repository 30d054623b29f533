import pytest
from tests.apps import basic

pytestmark = pytest.mark.process

def test_roundtrip(start_worker, redis_url):
    basic.app.configure(broker_url=redis_url)
    w = start_worker(concurrency=2)
    assert basic.add.delay(1, 2).get(timeout=5) == 3
    print(w.output)
