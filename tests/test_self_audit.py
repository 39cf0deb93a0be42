"""The service audits itself, on the real Postgres and Redis: each operator command leaves an event
(service_name datastorage, category operations, the OS user as operator) written like any other
event, and denied requests leave one summary per identity and window."""

import getpass
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from app.api.denials import MAX_IDENTITIES, DeniedRequests
from app.audit.partitions import ensure_partitions
from app.audit.self_audit import Action, Actor, record_action
from app.audit.store import AuditStore
from app.audit.wire import encode_event
from app.audit.writer import AuditWriter
from app.producer import AuditProducer
from tests.helpers import (
    CATALOG,
    DLQ,
    EVENTS,
    assert_problem,
    audit_row,
    body_of,
    client_for,
    event,
    insert_audit_row,
    self_audit_events,
    wait_for,
)

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")
OPERATOR = os.environ.get("SUDO_USER") or getpass.getuser()


def datastorage(*args: str, **settings: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({f"DATASTORAGE_{k.upper()}": v for k, v in settings.items() if v is not None})
    env["DATASTORAGE_LOG_FORMAT"] = "json"
    return subprocess.run([DATASTORAGE, *args], env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def assert_operator_event(found, action: Action, resource_type: str):
    assert found.event_type == action.value
    assert (found.service_name, found.event_category, found.event_outcome) == ("datastorage", "operations", "success")
    assert (found.actor_type, found.actor_id) == ("operator", OPERATOR)
    assert found.resource_type == resource_type
    assert found.metadata["via"] == "cli"


async def dead_letter(client, n: int, reason: str = "validation") -> None:
    fields = {**encode_event(event(n)), "dlq_reason": reason, "dlq_error": "test", "source_stream": "audit_events",
              "source_id": f"{1764000000000 + n}-0", "delivery_count": "1",
              "failed_at": datetime.now(UTC).isoformat()}
    await client.xadd(DLQ, fields)


async def test_dlq_replay_and_purge_are_recorded_and_stored_like_any_event(
        database_url, redis_url, client, db, consumers):
    for n in range(3):
        await dead_letter(client, n, reason="validation" if n < 2 else "max_deliveries")
    urls = {"database_url": database_url, "redis_url": redis_url}

    replayed = datastorage("dlq", "replay", "--reason", "validation", **urls)
    assert replayed.returncode == 0, replayed.stderr
    [found] = await self_audit_events(client, "datastorage.dlq.replayed")
    assert_operator_event(found, Action.DLQ_REPLAYED, "dlq")
    assert found.resource_id == "audit_dlq"
    assert {k: found.event_data[k] for k in ("replayed", "selected", "reason")} == {
        "replayed": 2, "selected": 2, "reason": "validation"}

    purged = datastorage("dlq", "purge", "--yes", **urls)
    assert purged.returncode == 0, purged.stderr
    [found] = await self_audit_events(client, "datastorage.dlq.purged")
    assert_operator_event(found, Action.DLQ_PURGED, "dlq")
    assert found.event_data == {"purged": 1, "reason": None}

    # The consumer stores them as it stores every event.
    await consumers()
    await wait_for(lambda: _stored_types(db, {"datastorage.dlq.replayed", "datastorage.dlq.purged"}), 30,
                   "both self-audit events stored")


async def _stored_types(db, wanted: set[str]) -> bool:
    rows = await db.fetch("SELECT event_type FROM audit_events WHERE service_name = 'datastorage'")
    return wanted <= {row["event_type"] for row in rows}


async def test_a_partition_drop_is_recorded_in_postgres_when_redis_is_away(database_url, redis_url, db, redis_server):
    await ensure_partitions(db, [date(2024, 1, 1)])
    await insert_audit_row(db, audit_row(datetime(2024, 1, 15, tzinfo=UTC)))
    redis_server.stop()
    done = datastorage("partitions", "drop", "--older-than", "13mo", "--yes", database_url=database_url,
                       redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    row = await db.fetchrow("SELECT * FROM audit_events WHERE event_type = 'datastorage.partitions.dropped'")
    assert (row["service_name"], row["event_category"], row["actor_type"], row["actor_id"]) == (
        "datastorage", "operations", "operator", OPERATOR)
    data = json.loads(row["event_data"])
    assert data["older_than"] == "13mo"
    assert [p["name"] for p in data["partitions"]] == ["audit_events_2024_01"]

    # Without a Redis URL at all, Postgres is the way too.
    await ensure_partitions(db, [date(2024, 2, 1)])
    done = datastorage("partitions", "drop", "--older-than", "13mo", "--yes", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert await db.fetchval(
        "SELECT count(*) FROM audit_events WHERE event_type = 'datastorage.partitions.dropped'") == 2


async def test_an_action_whose_event_no_store_takes_says_so_and_exits_1(database_url, redis_url, db, redis_server):
    await ensure_partitions(db, [date(2024, 1, 1)])
    await db.execute("ALTER TABLE audit_events ADD CONSTRAINT test_no_self_audit CHECK (service_name <> 'datastorage')")
    redis_server.stop()
    done = datastorage("partitions", "drop", "--older-than", "13mo", "--yes", database_url=database_url,
                       redis_url=redis_url)
    assert done.returncode == 1
    assert "dropped 1 partition(s)" in done.stdout
    assert "its audit event (datastorage.partitions.dropped) was not written" in done.stderr


async def test_a_catalog_import_is_recorded(database_url, redis_url, client):
    done = datastorage("playbooks", "import", str(CATALOG), database_url=database_url, redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    [found] = await self_audit_events(client, "datastorage.catalog.imported")
    assert_operator_event(found, Action.CATALOG_IMPORTED, "playbook_catalog")
    assert found.resource_id == CATALOG.name
    assert found.event_data["versions"] == 9 and found.event_data["written"] == 9
    assert found.event_data["force"] is False


async def test_denied_requests_become_one_event_per_identity_and_window(settings, tmp_path, client):
    path = tmp_path / "tokens"
    path.write_text("r3ader audit:read reader\nwr1ter audit:write writer\n")
    watched = settings.model_copy(update={"api_tokens_file": path, "audit_denied_threshold": 3,
                                          "audit_denied_window_s": 60})
    async with client_for(watched) as api:
        for _ in range(50):
            assert_problem(await api.get(EVENTS, headers={"Authorization": "Bearer guessed"}), 401)
        for _ in range(4):
            assert_problem(await api.post(EVENTS, json=body_of(event(1)), headers={"Authorization": "Bearer r3ader"}),
                           403)
        for _ in range(2):  # below the threshold
            assert_problem(await api.get(EVENTS, headers={"Authorization": "Bearer wr1ter"}), 403)
        assert await self_audit_events(client) == []  # the window is still open
    # The window closes at the latest when the service stops.
    found = {e.actor_id: e for e in await self_audit_events(client, "datastorage.access.denied")}
    assert set(found) == {"127.0.0.1", "reader"}
    stranger, reader = found["127.0.0.1"], found["reader"]
    assert (stranger.actor_type, stranger.event_outcome) == ("user", "failure")
    assert stranger.event_data["denied"] == 50 and stranger.event_data["statuses"] == {"401": 50}
    assert reader.actor_type == "operator"
    assert reader.event_data["denied"] == 4 and reader.event_data["missing_scopes"] == {"audit:write": 4}
    assert reader.event_data["paths"] == {"POST /api/v1/audit-events": 4}
    assert "guessed" not in str(stranger.model_dump()) and "r3ader" not in str(reader.model_dump())


async def test_denials_are_summarised_every_window_while_the_service_runs(settings, tmp_path, client):
    path = tmp_path / "tokens"
    path.write_text("r3ader audit:read reader\n")
    watched = settings.model_copy(update={"api_tokens_file": path, "audit_denied_threshold": 1,
                                          "audit_denied_window_s": 0.3})
    async with client_for(watched) as api:
        assert_problem(await api.post(EVENTS, json=body_of(event(1)), headers={"Authorization": "Bearer r3ader"}), 403)
        [found] = await wait_for(lambda: self_audit_events(client, "datastorage.access.denied"), 10,
                                 "the window's summary")
        assert found.actor_id == "reader" and found.event_data["denied"] == 1


def test_the_denial_table_is_bounded_however_many_identities_call():
    denials = DeniedRequests(threshold=1, window_s=60)
    for n in range(MAX_IDENTITIES + 500):
        denials.count(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", False, 401, "GET /api/v1/audit-events", "x")
    assert len(denials.tallies) == MAX_IDENTITIES + 1
    assert denials.tallies["(other identities)"].count == 500


async def test_one_call_records_any_later_action(client, pool):
    """What retention, legal holds and failed verifications will call: one event, the identity as actor."""
    writer = AuditWriter(AuditProducer(client), AuditStore(pool))
    status = await record_action(writer, Action.DLQ_PURGED, Actor("on-call"), resource_type="correlation",
                                 resource_id="rem-42", data={"reason": "investigation"}, correlation_id="rem-42")
    assert status == "accepted"
    [found] = await self_audit_events(client)
    assert (found.event_type, found.actor_id, found.actor_type) == ("datastorage.dlq.purged", "on-call", "operator")
    assert (found.correlation_id, found.metadata["via"]) == ("rem-42", "api")
