"""Metrics that tell the truth per process (issue 13, item 5): the API's Postgres connections, its
write-throughs counted, the consumer's probes answering for the consumer."""

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY

from app.core import metrics
from app.core.metrics import start_metrics_server
from app.core.upkeep import refresh_gauges
from app.local.embedded import free_port
from consumers.audit import AuditConsumer
from tests.helpers import EVENTS, body_of, client_for, event, run_datastorage, wait_for


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
    metrics.set_probe("healthz", lambda: None)
    metrics._PROBES.pop("readyz", None)


# --- the partitions CronJob and its last success (item 9) ----------------------------------------


def test_a_cronjob_ensures_partitions_every_few_hours():
    from tests.test_deploy import by_kind

    job = by_kind("CronJob")["datastorage-partitions-ensure"]
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["partitions", "ensure"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    hours = job["spec"]["schedule"].split()[1]
    assert hours.startswith("*/") and int(hours[2:]) <= 8  # several tries a day before the alert's day passes
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {"datastorage"}


async def test_partitions_ensure_records_its_success_and_the_pods_export_it(database_url, settings, db):
    await db.execute("DELETE FROM upkeep_runs")
    run_datastorage({"DATASTORAGE_DATABASE_URL": database_url}, "partitions", "ensure", "--months-ahead", "2")
    recorded = await db.fetchrow("SELECT extract(epoch FROM last_success_at)::float8 AS at, detail "
                                 "FROM upkeep_runs WHERE task = 'partitions_ensure'")
    assert recorded is not None and abs(recorded["at"] - time.time()) < 60
    assert json.loads(recorded["detail"])["months_ahead"] == 2

    metrics.UPKEEP_LAST_SUCCESS.labels("partitions_ensure").set(0)
    async with client_for(settings):  # an API process: its workers refresh the gauge at start
        await wait_for(lambda: sample("datastorage_upkeep_last_success_timestamp_seconds",
                                      task="partitions_ensure") == recorded["at"], 10, "the gauge")


async def test_the_gauge_is_zero_when_partitions_were_never_ensured(pool, db):
    await db.execute("DELETE FROM upkeep_runs")
    metrics.UPKEEP_LAST_SUCCESS.labels("partitions_ensure").set(123)
    await refresh_gauges(pool)
    assert sample("datastorage_upkeep_last_success_timestamp_seconds", task="partitions_ensure") == 0


def test_each_stream_shard_has_its_gauges_and_the_unlabelled_ones_are_their_totals():
    """A consumer reads the plain stream and every shard: no shard's figures overwrite another's."""
    metrics.set_stream_figures("audit_events", "audit_dlq", metrics.StreamFigures(0, 0, 0.0, 10, 0))
    metrics.set_stream_figures("audit_events:{0}", "audit_dlq:{0}", metrics.StreamFigures(120, 500, 4.5, 900, 2))
    metrics.set_stream_figures("audit_events:{1}", "audit_dlq:{1}", metrics.StreamFigures(30, 0, 0.0, 40, 1))

    assert sample("datastorage_stream_shard_lag", stream="audit_events:{0}") == 120
    assert sample("datastorage_stream_shard_lag", stream="audit_events:{1}") == 30
    assert sample("datastorage_dlq_shard_depth", dlq="audit_dlq:{1}") == 1
    assert sample("datastorage_stream_lag") == 150
    assert sample("datastorage_stream_pending") == 500
    assert sample("datastorage_stream_oldest_pending_age_seconds") == 4.5
    assert sample("datastorage_stream_length") == 950
    assert sample("datastorage_dlq_depth") == 3

    # A later round for one shard replaces that shard's figures only.
    metrics.set_stream_figures("audit_events:{0}", "audit_dlq:{0}", metrics.StreamFigures(0, 0, 0.0, 0, 2))
    assert sample("datastorage_stream_lag") == 30
    assert sample("datastorage_stream_oldest_pending_age_seconds") == 0
    for stream, dlq in (("audit_events", "audit_dlq"), ("audit_events:{1}", "audit_dlq:{1}")):
        metrics.set_stream_figures(stream, dlq, metrics.StreamFigures(0, 0, 0.0, 0, 0))
