"""Metrics that tell the truth per process (issue 13, item 5): the API's Postgres connections, its
write-throughs counted, the consumer's probes answering for the consumer."""

import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY

from app.core.metrics import start_metrics_server
from app.local.embedded import free_port
from consumers.audit import AuditConsumer
from tests.helpers import EVENTS, body_of, event


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_api_counts_its_own_postgres_connections(api, settings):
    found = api._transport.app.state.resources
    pool = found.pool

    def in_use() -> int:  # the API's pool and engine (background work may hold one too)
        return pool.get_size() - pool.get_idle_size() + found.engine.pool.checkedout()

    async with pool.acquire(), pool.acquire(), found.engine.connect():
        assert in_use() >= 3
        assert sample("datastorage_db_connections_in_use") == in_use()
    assert sample("datastorage_db_connections_in_use") == in_use()


async def test_rows_written_through_by_the_api_are_counted_as_writes(api, redis_server, db):
    stored, duplicates = sample("datastorage_audit_writes_total", outcome="stored"), sample(
        "datastorage_audit_writes_total", outcome="duplicate")
    batch = [event(n) for n in range(3)]
    redis_server.stop()
    assert (await api.post(EVENTS, json=[body_of(e) for e in batch])).status_code == 201
    assert sample("datastorage_audit_writes_total", outcome="stored") == stored + 3
    assert (await api.post(EVENTS, json=[body_of(e) for e in batch[:1]])).status_code == 201  # a client's retry
    assert sample("datastorage_audit_writes_total", outcome="duplicate") == duplicates + 1
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 3


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_the_consumer_probes_answer_for_the_consumer(settings):
    port = free_port()
    start_metrics_server(port)
    consumer = AuditConsumer(settings, None)
    status, text = get(port, "/readyz")
    assert (status, text.strip()) == (503, "starting: recovering its own pending entries")
    assert get(port, "/healthz")[0] == 200
    consumer._background = [object()]  # what start_background leaves: the read loop running
    assert get(port, "/readyz") == (200, "ok\n")
    consumer._stop.set()
    assert get(port, "/readyz") == (503, "stopping\n")
    consumer.failed.set()
    assert get(port, "/healthz")[0] == 503
    assert get(port, "/anything")[0] == 404
    assert "datastorage_audit_writes_total" in get(port, "/metrics")[1]
    await consumer.redis.aclose()


@pytest.fixture(autouse=True)
def _no_probes_left_behind():
    yield
    from app.core import metrics

    metrics.set_probe("healthz", lambda: None)
    metrics._PROBES.pop("readyz", None)
