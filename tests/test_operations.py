"""The operator's commands, run as an operator runs them: `datastorage stream|dlq|partitions …`."""

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from app.audit.partitions import ensure_partitions, list_partitions
from app.audit.wire import derived_event_id
from app.producer import AuditProducer
from app.streams.operations import DeadLetterEntry, replay_fields
from tests.helpers import STREAM, audit_row, dead_letters, events, insert_audit_row, row_counts, settled, wait_for

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")


def datastorage(database_url: str, redis_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({"DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": redis_url,
                "DATASTORAGE_LOG_FORMAT": "json"})
    result = subprocess.run([DATASTORAGE, *args], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def test_stream_status_shows_length_lag_pending_and_consumers(database_url, redis_url, client):
    await AuditProducer(client).publish_many(events(5))
    await client.xgroup_create(STREAM, "datastorage", id="0")
    await client.xreadgroup("datastorage", "slow-one", {STREAM: ">"}, count=2)
    status = json.loads(datastorage(database_url, redis_url, "stream", "status", "--json").stdout)
    assert status["length"] == 5 and status["dlq_depth"] == 0
    [group] = status["groups"]
    assert (group["name"], group["lag"], group["pending"]) == ("datastorage", 3, 2)
    assert group["oldest_pending_age_s"] >= 0
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("slow-one", 2)]
    text = datastorage(database_url, redis_url, "stream", "status").stdout
    assert "pending 2" in text and "consumer slow-one" in text


async def test_dead_letters_are_listed_shown_replayed_after_a_fix_and_purged(
        database_url, redis_url, db, client, consumers):
    await db.execute("ALTER TABLE audit_events ADD CONSTRAINT test_no_poison CHECK (resource_id <> 'poison')")
    batch = events(20)
    batch[3] = batch[3].model_copy(update={"resource_id": "poison"})
    await AuditProducer(client).publish_many(batch)
    await client.xadd(STREAM, {"event_type": "only-this"})  # invalid for good
    await consumers()
    await settled(db, client, rows=19, dlq=2)

    listed = json.loads(datastorage(database_url, redis_url, "dlq", "list", "--json").stdout)
    assert sorted(e["dlq_reason"] for e in listed) == ["permanent_db_error", "validation"]
    only_db = json.loads(datastorage(database_url, redis_url, "dlq", "list", "--reason", "permanent_db_error",
                                     "--json").stdout)
    assert [e["resource_id"] for e in only_db] == ["poison"]
    shown = json.loads(datastorage(database_url, redis_url, "dlq", "show", only_db[0]["id"]).stdout)
    assert shown["event_id"] == str(batch[3].event_id)
    assert datastorage(database_url, redis_url, "dlq", "show", "1-1", check=False).returncode == 1

    # The fix: the rule that refused the entry goes; the replay stores it.
    await db.execute("ALTER TABLE audit_events DROP CONSTRAINT test_no_poison")
    replay = datastorage(database_url, redis_url, "dlq", "replay", "--reason", "permanent_db_error")
    assert "replayed 1 of 1" in replay.stdout
    # (Each command also writes its self-audit event: wait for the replayed event itself.)
    await wait_for(lambda: db.fetchval("SELECT 1 FROM audit_events WHERE event_id = $1", batch[3].event_id), 30,
                   "the replayed event stored")
    assert await db.fetchval("SELECT resource_id FROM audit_events WHERE event_id = $1", batch[3].event_id) == "poison"

    # An entry that fails again comes back with a new dead letter.
    datastorage(database_url, redis_url, "dlq", "replay")
    await wait_for(lambda: _dlq_has_new_entry(client, listed), 30, "the invalid entry back in the DLQ")
    [letter] = await dead_letters(client)
    assert letter["dlq_reason"] == "validation" and letter["event_type"] == "only-this"

    assert datastorage(database_url, redis_url, "dlq", "purge", "--yes").stdout.strip() == "purged 1 dead letter(s)"
    assert await client.xlen("audit_dlq") == 0
    # The 20 events, once each, and the self-audit events of two replays and a purge.
    await wait_for(lambda: _rows_at_least(db, 23), 30, "the self-audit events stored")
    assert await row_counts(db) == (23, 23)
    assert await db.fetchval("SELECT count(*) FROM audit_events WHERE service_name <> 'datastorage'") == 20


async def _rows_at_least(db, count: int) -> bool:
    return (await row_counts(db))[0] >= count


async def _dlq_has_new_entry(client, before: list[dict]) -> bool:
    ids = {i.decode() for i, _ in await client.xrange("audit_dlq")}
    return len(ids) == 1 and not ids & {e["id"] for e in before}


def test_a_replayed_entry_keeps_the_identity_of_the_original():
    letter = DeadLetterEntry("1764091900000-0", {
        b"event_type": b"x.y", b"dlq_reason": b"max_deliveries", b"dlq_error": b"...",
        b"source_stream": b"audit_events", b"source_id": b"1764091800123-4", b"delivery_count": b"6",
        b"failed_at": b"2026-11-25T00:00:00+00:00",
    })
    fields = replay_fields(letter)
    assert fields[b"event_id"] == str(derived_event_id("audit_events", "1764091800123-4")).encode()
    assert fields[b"event_timestamp"].startswith(b"2025-11-25T17:30:00.123")
    assert not any(k.startswith(b"dlq_") or k in (b"source_id", b"failed_at") for k in fields)


async def test_partitions_drop_keeps_the_retention_and_never_the_current_month(database_url, redis_url, db):
    old_months = [date(2024, 1, 1), date(2024, 2, 1)]
    await ensure_partitions(db, old_months)
    await insert_audit_row(db, audit_row(datetime(2024, 1, 15, tzinfo=UTC)))
    before = {p.month for p in await list_partitions(db)}

    dry = datastorage(database_url, redis_url, "partitions", "drop", "--older-than", "13mo", "--dry-run").stdout
    assert "audit_events_2024_01" in dry and "audit_events_2024_02" in dry and "would be dropped" in dry
    assert {p.month for p in await list_partitions(db)} == before

    done = datastorage(database_url, redis_url, "partitions", "drop", "--older-than", "13mo", "--yes").stdout
    assert "dropped 2 partition(s)" in done
    assert {p.month for p in await list_partitions(db)} == before - set(old_months)
    today = datetime.now(UTC).date().replace(day=1)
    assert today in {p.month for p in await list_partitions(db)}

    refused = datastorage(database_url, redis_url, "partitions", "drop", "--older-than", "0mo", check=False)
    assert refused.returncode != 0 and "1mo or more" in refused.stderr
