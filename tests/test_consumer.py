"""The audit consumer as it runs in production: real `datastorage consume` processes, a real Redis,
a real Postgres. The promise under test: every XADDed entry ends up exactly once as a row or in the
DLQ with a reason, and nothing stays pending."""

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta

import asyncpg

from app.audit.store import AuditStore
from app.audit.wire import decode
from app.core.db import connect
from app.local.embedded import free_port
from app.producer import AuditProducer
from app.streams.attempts import failures_key, marker_key
from consumers.reader import StreamReader
from tests.helpers import (
    DLQ,
    GROUP,
    STREAM,
    dead_letters,
    events,
    pending,
    publish,
    row_counts,
    settled,
    submitted,
    wait_for,
)


async def test_events_flow_from_the_stream_to_rows(db, client, consumers):
    batch = events(300)
    await publish(client, batch)
    await consumers()
    await settled(db, client, rows=300)

    stored = await db.fetchrow("SELECT * FROM audit_events WHERE event_id = $1", batch[7].event_id)
    assert stored["resource_id"] == "notif-7"
    assert stored["correlation_id"] == "rem-0"
    assert json.loads(stored["event_data"]) == {"n": 7}
    assert stored["event_timestamp"] == batch[7].event_timestamp
    assert stored["event_date"] == batch[7].event_date


async def test_xack_happens_only_for_what_was_stored(db, client, consumers):
    await publish(client, events(50))
    await consumers()
    await settled(db, client, rows=50)
    summary = await client.xpending(STREAM, GROUP)
    assert summary["pending"] == 0
    group = (await client.xinfo_groups(STREAM))[0]
    assert group["entries-read"] == 50


async def test_entries_added_before_any_consumer_ran_are_read(db, client, consumers):
    # The stream and its first entries exist before the group does.
    await publish(client, events(10))
    assert await client.xinfo_groups(STREAM) == []
    await consumers()
    await settled(db, client, rows=10)


async def test_an_entry_redelivered_after_its_commit_makes_one_row(database_url, db, client, consumers):
    """A consumer committed rows, then died before XACK: the entries are delivered again."""
    await client.xadd(STREAM, {  # no event_id: derived from the entry id, the same on redelivery
        "event_type": "notification.sent", "event_category": "notification", "event_outcome": "success",
        "service_name": "gateway", "actor_type": "service", "resource_type": "notification",
        "resource_id": "notif-1",
    })
    await publish(client, events(20))
    await client.xgroup_create(STREAM, GROUP, id="0")
    [(_, delivered)] = await client.xreadgroup(GROUP, "crashed", {STREAM: ">"}, count=100)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        committed = [decode(STREAM, i.decode(), f) for i, f in delivered[::2]]
        assert len((await AuditStore(pool).insert(committed)).stored) == 11
    finally:
        await pool.close()

    await consumers(claim_idle_ms=1000)
    await settled(db, client, rows=21)
    assert (await client.xpending(STREAM, GROUP))["pending"] == 0


async def test_the_same_event_sent_twice_makes_one_row(db, client, consumers):
    """A producer that retried an XADD it thought had failed."""
    batch = events(10)
    await publish(client, batch)
    await publish(client, batch[:5])
    await consumers()
    await wait_for(lambda: _group_read(client, 15), 30, "all 15 entries read")
    await settled(db, client, rows=10)


async def test_the_same_event_twice_in_one_batch_makes_one_row(database_url, db):
    """The retried XADD read in the same batch as the original: the first copy is stored, the
    second is its redelivery."""
    batch = events(3)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        result = await AuditStore(pool).insert(submitted([*batch, batch[0], batch[1]]))
    finally:
        await pool.close()
    assert [s.event.event_id for s in result.stored] == [e.event_id for e in batch]
    assert len(result.duplicates) == 2 and not result.conflicts
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 3


async def _group_read(client, count: int) -> bool:
    groups = await client.xinfo_groups(STREAM)
    return bool(groups) and (groups[0]["entries-read"] or 0) >= count and groups[0]["pending"] == 0


INVALID_ENTRIES = {
    "missing_required": ({"event_type": "x.y"}, "event_category: Field required"),
    "bad_enum": ({"event_outcome": "maybe"}, "event_outcome:"),
    "bad_uuid": ({"event_id": "not-a-uuid"}, "event_id:"),
    "bad_json": ({"event_data": "{nope"}, "event_data: is not valid JSON"),
    "json_not_object": ({"event_data": "[1,2]"}, "event_data: must be a JSON object"),
    "too_long": ({"resource_id": "r" * 256}, "resource_id: String should have at most 255"),
    "future": ({"event_timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
    "naive_timestamp": ({"event_timestamp": "2026-01-01T00:00:00"}, "event_timestamp: must carry a UTC offset"),
    "reserved_data_field": ({"data": "{}"}, "data: field name reserved"),
    "unknown_field": ({"colour": "red"}, "colour: unknown field"),
    "nul_character": ({"actor_name": "a\x00b"}, "actor_name: must not contain NUL"),
    "deep_json": ({"event_data": "[" * 40 + "]" * 40}, "event_data:"),
    "wide_integer": ({"event_data": '{"n": 123456789012345678901234567890}'},
                     "event_data: holds an integer beyond 64 bits"),
    "blank_type": ({"event_type": "  "}, "event_type:"),
}


async def test_every_kind_of_invalid_entry_is_dead_lettered_with_its_reason(db, client, consumers):
    valid = {
        "event_type": "workflow.started", "event_category": "workflow", "event_outcome": "success",
        "service_name": "wf", "actor_type": "controller", "resource_type": "workflow", "resource_id": "wf-1",
    }
    sent = {}
    for name, (changes, _) in INVALID_ENTRIES.items():
        fields = {**valid, **changes}
        if name == "missing_required":
            fields = changes
        sent[await client.xadd(STREAM, fields)] = (name, fields)
    bad_utf8 = {**{k.encode(): v.encode() for k, v in valid.items()}, b"resource_name": b"\xff\xfe"}
    sent[await client.xadd(STREAM, bad_utf8)] = ("invalid_utf8", bad_utf8)
    await publish(client, events(5))

    await consumers()
    await settled(db, client, rows=5, dlq=len(sent))

    for dlq_id, fields in await client.xrange(DLQ):
        name, original = sent[fields[b"source_id"]]
        assert fields[b"dlq_reason"] == b"validation", name
        assert fields[b"source_stream"] == b"audit_events"
        assert fields[b"delivery_count"] == b"1"
        assert datetime.fromisoformat(fields[b"failed_at"].decode()) <= datetime.now(UTC)
        expected = INVALID_ENTRIES[name][1] if name in INVALID_ENTRIES else "resource_name: value is not valid UTF-8"
        assert expected in fields[b"dlq_error"].decode(), (name, fields[b"dlq_error"])
        originals = {(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
                     for k, v in original.items()}
        assert {k: v for k, v in fields.items() if not k.startswith((b"dlq_", b"source_", b"delivery_count",
                                                                      b"failed_at"))} == originals, name


async def test_one_poison_entry_in_a_batch_of_500_costs_only_itself(db, client, consumers):
    # A rule the database knows and the model does not: the kind of entry only Postgres refuses.
    await db.execute("ALTER TABLE audit_events ADD CONSTRAINT test_no_poison CHECK (resource_id <> 'poison')")
    batch = events(500)
    batch[321] = batch[321].model_copy(update={"resource_id": "poison"})
    ids = await publish(client, batch)

    await consumers()
    await settled(db, client, rows=499, dlq=1)
    [letter] = await dead_letters(client)
    assert letter["dlq_reason"] == "permanent_db_error"
    assert letter["dlq_error"].startswith("23514:")
    assert letter["source_id"] == ids[321]
    assert letter["resource_id"] == "poison"


async def test_an_entry_that_made_consumers_fail_max_deliveries_times_is_dead_lettered(db, client, consumers):
    await publish(client, events(3))
    await client.xgroup_create(STREAM, GROUP, id="0")
    # A consumer died while working on the first entry (its in-flight marker is left behind), after
    # four earlier consumers had died on it: the claim counts the fifth failure.
    reader = StreamReader(client, STREAM, GROUP, "crashing", marker_key(STREAM, "crashing"),
                          max_records=1, max_bytes=1 << 20, max_entry_bytes=1 << 20)
    [poison] = (await reader.read("new")).entries
    await client.hset(failures_key(STREAM), poison.id, 4)
    # Redeliveries alone count nothing: five more deliveries change no failure count.
    for _ in range(5):
        await client.xclaim(STREAM, GROUP, "crashing", min_idle_time=0, message_ids=[poison.id])

    await consumers(claim_idle_ms=1000)
    await settled(db, client, rows=2, dlq=1)
    [letter] = await dead_letters(client)
    assert letter["dlq_reason"] == "max_deliveries"
    assert letter["source_id"] == poison.id
    assert int(letter["delivery_count"]) == 6
    assert await client.hlen(failures_key(STREAM)) == 0


async def test_events_of_two_months_land_in_two_partitions(db, client, consumers):
    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(hour=12)
    await publish(client, events(5, event_timestamp=now) + events(5, event_timestamp=last_month))
    await consumers()
    await settled(db, client, rows=10)
    rows = await db.fetch("SELECT tableoid::regclass::text AS part, count(*) FROM audit_events GROUP BY 1")
    assert {r["part"]: r["count"] for r in rows} == {
        f"audit_events_{now:%Y_%m}": 5,
        f"audit_events_{last_month:%Y_%m}": 5,
    }


async def test_two_consumers_share_the_work_without_duplicates(db, client, consumers):
    await consumers("a", batch_max_records=100)
    await consumers("b", batch_max_records=100)
    for _ in range(10):
        await publish(client, events(300))
        await asyncio.sleep(0.05)
    await settled(db, client, rows=3000)
    readers = {c["name"].decode(): c for c in await client.xinfo_consumers(STREAM, GROUP)}
    assert set(readers) == {"a", "b"}


async def slow_down_inserts(db, seconds_per_row: float) -> None:
    """Makes every batch take a while, so that a kill or a SIGTERM lands while one is in hand."""
    await db.execute(f"""
        CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({seconds_per_row}); RETURN NEW; END $$;
        CREATE TRIGGER test_slow_insert BEFORE INSERT ON audit_events
            FOR EACH ROW EXECUTE FUNCTION test_slow_insert();
    """)


async def batch_in_hand(db, client, min_rows: int) -> bool:
    return await _rows_at_least(db, min_rows) and await pending(client) > 0


async def test_a_consumer_killed_mid_batch_loses_nothing_and_doubles_nothing(db, client, consumers):
    await slow_down_inserts(db, 0.0005)
    victim = await consumers("victim", batch_max_records=200)
    await publish(client, events(6000))
    await wait_for(lambda: batch_in_hand(db, client, 200), 30, "a batch in hand", interval=0.01)
    victim.kill()
    stored_at_kill = (await row_counts(db))[0]
    assert stored_at_kill < 6000, "the kill came too late to be mid-stream"
    assert await pending(client) > 0, "the victim held entries when it died"

    # A second consumer claims the dead one's entries once they are idle (2 s here).
    await consumers("rescuer")
    await settled(db, client, rows=6000)


async def test_a_restarted_consumer_takes_back_its_own_pending_entries(db, client, consumers):
    await slow_down_inserts(db, 0.0005)
    first = await consumers("steady", batch_max_records=200, claim_idle_ms=600_000)
    await publish(client, events(3000))
    await wait_for(lambda: batch_in_hand(db, client, 200), 30, "a batch in hand", interval=0.01)
    first.kill()
    assert await pending(client) > 0
    # Same name, claiming effectively off: only reading its own pending list at start can help.
    await consumers("steady", claim_idle_ms=600_000)
    await settled(db, client, rows=3000)


async def test_sigterm_during_a_batch_loses_nothing(db, client, consumers):
    await slow_down_inserts(db, 0.0005)
    consumer = await consumers("graceful", batch_max_records=500)
    await publish(client, events(5000))
    await wait_for(lambda: batch_in_hand(db, client, 500), 30, "a batch in hand", interval=0.01)
    assert consumer.terminate() == 0
    assert "consumer_stopped" in consumer.log()
    await consumers("graceful")
    await settled(db, client, rows=5000)


async def test_the_next_batch_is_read_while_one_is_written_and_a_stop_counts_no_failure(db, client, consumers):
    """The read loop reads ahead: while Postgres writes a batch, the next is read and decoded. Both
    are in flight (pending, named by the marker, so a crash counts against both); a clean stop
    leaves both pending and counts nothing; the restart stores each once."""
    await slow_down_inserts(db, 0.002)  # a second per batch of 500
    consumer = await consumers("ahead", batch_max_records=500)
    await publish(client, events(3000))
    marker = marker_key(STREAM, "ahead")

    async def two_batches_in_flight() -> bool:
        named = (await client.get(marker) or b"").decode().strip(",").split(",")
        return await pending(client) == 1000 and len(named) == 1000

    await wait_for(two_batches_in_flight, 30, "a batch written and the next read ahead", interval=0.01)
    assert consumer.terminate() == 0
    assert await client.exists(marker) == 0, "a clean stop leaves no crash mark"
    assert await pending(client) > 0
    await consumers("ahead")
    await settled(db, client, rows=3000)
    assert await client.hlen(failures_key(STREAM)) == 0


async def test_postgres_stopped_for_20_seconds_loses_nothing(database_url, client, consumers, postgres_server):
    await consumers("patient")
    producer = AuditProducer(client)
    loop = asyncio.get_running_loop()
    sent = 0

    async def produce_for(seconds: float) -> None:
        """About 200 events/s, as producers keep doing whatever Postgres does."""
        nonlocal sent
        end = loop.time() + seconds
        while loop.time() < end:
            await producer.publish_many(events(20))
            sent += 20
            await asyncio.sleep(0.1)

    await produce_for(2)
    postgres_server.stop()
    await produce_for(20)
    group = (await client.xinfo_groups(STREAM))[0]
    assert group["pending"] + (group["lag"] or 0) > 0, "the outage left entries waiting in the stream"
    postgres_server.start()
    await produce_for(3)

    db = await connect(database_url)
    try:
        await settled(db, client, rows=sent, timeout=90)
    finally:
        await db.close()


async def test_a_bad_release_is_retried_and_alerted_never_dead_lettered(db, client, consumers):
    """A column missing under the consumer (SQLSTATE 42703, a release ahead of its migration):
    every batch fails alike. The entries wait in the stream, none is dead-lettered, and they are
    stored once the schema is right again."""
    await db.execute("ALTER TABLE audit_events RENAME COLUMN resource_name TO resource_label")
    consumer = await consumers(retry_initial_s=0.2, retry_max_s=0.5)
    await publish(client, events(50))
    await wait_for(lambda: consumer.log().count("audit_write_release_error") >= 3, 30, "three failed attempts")
    assert await pending(client) == 50 and await client.xlen(DLQ) == 0
    await db.execute("ALTER TABLE audit_events RENAME COLUMN resource_label TO resource_name")
    await settled(db, client, rows=50)


async def _rows_at_least(db, count: int) -> bool:
    return (await row_counts(db))[0] >= count


async def test_the_stream_is_trimmed_but_never_below_a_pending_entry(db, client, consumers):
    await publish(client, events(1000))
    await client.xgroup_create(STREAM, GROUP, id="0")
    [(_, held)] = await client.xreadgroup(GROUP, "slowpoke", {STREAM: ">"}, count=3)
    await consumers(claim_idle_ms=600_000)
    await wait_for(lambda: _rows_at_least(db, 997), 30, "the rest stored")
    await asyncio.sleep(1.5)  # three upkeep rounds
    assert await client.xlen(STREAM) == 1000, "nothing at or above the oldest pending entry is trimmed"
    assert [i for i, _ in await client.xrange(STREAM, count=3)] == [i for i, _ in held]

    await client.xack(STREAM, GROUP, *(i for i, _ in held))
    await wait_for(lambda: _stream_shorter_than(client, 200), 10, "the stream to be trimmed")


async def _stream_shorter_than(client, length: int) -> bool:
    return await client.xlen(STREAM) < length


async def test_the_consumer_exposes_its_metrics(db, client, consumers):
    port = free_port()
    await publish(client, events(40))
    await client.xadd(STREAM, {"event_type": "incomplete"})
    await consumers(metrics_port=port)
    await settled(db, client, rows=40, dlq=1)

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("datastorage_")}

    await wait_for(lambda: scrape().get("datastorage_dlq_depth") == 1, 10, "the DLQ gauge")
    found = scrape()
    assert found['datastorage_audit_writes_total{outcome="stored"}'] == 40
    assert found['datastorage_audit_writes_total{outcome="dead_lettered"}'] == 1
    assert found['datastorage_dlq_entries_total{reason="validation"}'] == 1
    assert found["datastorage_audit_end_to_end_latency_seconds_count"] == 40
    assert found["datastorage_audit_batch_size_sum"] == 41
    assert found["datastorage_stream_pending"] == 0
    assert found["datastorage_stream_lag"] == 0
    assert "datastorage_db_connections_in_use" in found
    assert found["datastorage_audit_write_duration_seconds_count"] >= 1
