"""One log format (issue 13, item 4): every line JSON in production (FastStream's and uvicorn's too,
never colour codes), correlation_id and trace_id bound to the lines of an event or request that has
them, old events accepted and logged."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tests.helpers import ServedApi, body_of, event, publish, wait_for

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def json_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        assert "\x1b" not in line, f"a colour code in {line!r}"
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return records


def test_library_lines_of_every_level_come_out_as_json():
    code = """
import logging
from app.core.logs import configure_logging
configure_logging("debug", "json")
import faststream  # makes its own colourised logger at import
import consumers.audit  # adopts it
for name in ("faststream", "uvicorn.error", "uvicorn.access", "datastorage.faststream"):
    logging.getLogger(name).critical("from %s", name)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # FastStream's own handler wrote to stdout
    records = json_lines(result.stderr)
    assert {(r["logger"], r["level"], r["event"]) for r in records} >= {
        (name, "critical", f"from {name}")
        for name in ("faststream", "uvicorn.error", "uvicorn.access", "datastorage.faststream")}


async def test_a_consumer_logs_json_only_and_old_events_with_their_ids(consumers, client, db):
    consumer = await consumers("c1", log_level="debug")
    old = event(1, correlation_id="rem-old", trace_id="trace-old",
                event_timestamp=datetime.now(UTC) - timedelta(days=400))
    await publish(client, [old])
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM audit_events"), 30, "the old event stored")
    await client.xadd("audit_events", {"event_type": "x.y", "correlation_id": "rem-bad", "trace_id": "trace-bad"})
    await wait_for(lambda: "entry_dead_lettered" in consumer.log(), 30, "the dead letter")
    assert consumer.terminate() == 0
    records = json_lines(consumer.log())
    [accepted] = [r for r in records if r["event"] == "old_event_accepted"]
    assert (accepted["correlation_id"], accepted["trace_id"]) == ("rem-old", "trace-old")
    assert accepted["event_id"] == str(old.event_id) and accepted["age_days"] >= 399
    [dead] = [r for r in records if r["event"] == "entry_dead_lettered"]
    assert (dead["correlation_id"], dead["trace_id"]) == ("rem-bad", "trace-bad")
    assert any(r["event"] == "FastStream app starting..." for r in records)
    assert not any("correlation_id" in r for r in records if r["event"] in ("consumer_starting", "consumer_stopped"))


async def test_an_api_request_binds_its_trace_and_correlation_to_its_lines(database_url, redis_url, redis_server,
                                                                          tmp_path, db):
    with ServedApi(database_url, redis_url, tmp_path, log_level="debug") as api:
        import httpx

        redis_server.stop()  # a write-through: the API logs while handling the request
        old = event(2, correlation_id="rem-http", event_timestamp=datetime.now(UTC) - timedelta(days=500))
        response = httpx.post(f"{api.base_url}/api/v1/audit-events", json=body_of(old),
                              headers={"traceparent": TRACEPARENT}, timeout=30)
        assert response.status_code == 201, response.text
        redis_server.start()
        records = json_lines(api.log())
    [fallback] = [r for r in records if r["event"] == "redis_unavailable_wrote_to_postgres"]
    assert (fallback["correlation_id"], fallback["trace_id"]) == ("rem-http", "4bf92f3577b34da6a3ce929d0e0e4736")
    [accepted] = [r for r in records if r["event"] == "old_event_accepted"]
    assert accepted["correlation_id"] == "rem-http" and accepted["path"] == "http"
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 1


def test_a_terminal_s_exception_text_is_masked_too():
    code = """
import structlog
from app.core.logs import configure_logging, register_secrets
configure_logging("info", "console")
register_secrets(["s3cret-token-value"])
log = structlog.get_logger("t")
try:
    raise ConnectionError("connect to postgresql://app:hunter22@db:5432/x failed with s3cret-token-value")
except ConnectionError:
    log.exception("connect_failed")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "connect_failed" in result.stderr and "Traceback" in result.stderr
    assert "postgresql://app:***@db:5432/x" in result.stderr
    assert "hunter22" not in result.stderr and "s3cret-token-value" not in result.stderr
