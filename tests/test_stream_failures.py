"""What others do to the audit stream is made visible and never makes an honest event wrong: an
explicit future entry id, entries deleted while pending, entries trimmed before anyone read them,
and the consumer group deleted under a running consumer. Real `datastorage consume` processes on a
real Redis and Postgres."""

import json
import time

from app.streams.dlq import REASON_ENTRY_DELETED
from tests.helpers import (
    DLQ,
    GROUP,
    STREAM,
    dead_letters,
    event,
    events,
    pending,
    publish,
    run_datastorage,
    settled,
    wait_for,
)


async def test_a_future_entry_id_makes_no_honest_event_wrong_and_is_reported(db, client, consumers, redis_url):
    """Another producer XADDs with an explicit id two hours ahead: every later `*` id is that late.
    Events without a timestamp take the read time (said in metadata), none is dead-lettered, and
    `stream status` warns."""
    future_ms = int(time.time() * 1000) + 2 * 3600 * 1000
    await publish(client, [event(0)])  # an honest event before
    await client.xadd(STREAM, {**_fields(event(1))}, id=f"{future_ms}-0")
    untimed = _fields(event(2))
    del untimed["event_timestamp"]
    await client.xadd(STREAM, untimed)  # gets <future_ms>-1
    await consumers()
    await settled(db, client, rows=3)

    stored = await db.fetchrow("SELECT event_timestamp, metadata FROM audit_events WHERE resource_id = 'notif-2'")
    assert abs(stored["event_timestamp"].timestamp() - time.time()) < 60, "the read time, not two hours ahead"
    assert json.loads(stored["metadata"])["timestamp_source"] == "read_time"
    status = run_datastorage({"DATASTORAGE_REDIS_URL": redis_url}, "stream", "status", "--json")
    assert 7000 < json.loads(status.stdout)["streams"][0]["entry_ids_ahead_s"] <= 7200
    text = run_datastorage({"DATASTORAGE_REDIS_URL": redis_url}, "stream", "status")
    assert "ahead of this clock" in text.stderr


async def test_an_entry_deleted_while_pending_is_dead_lettered_as_such_and_never_replayed(
        db, client, consumers, redis_url):
    ids = await publish(client, events(5))
    await client.xgroup_create(STREAM, GROUP, id="0")
    await client.xreadgroup(GROUP, "departed", {STREAM: ">"}, count=5)  # pending to a consumer that died
    await client.xdel(STREAM, ids[2])
    await consumers(claim_idle_ms=1000)
    await settled(db, client, rows=4, dlq=1)

    [letter] = await dead_letters(client)
    assert letter["dlq_reason"] == REASON_ENTRY_DELETED and letter["source_id"] == ids[2]
    assert "deleted from the stream" in letter["dlq_error"]
    replay = run_datastorage({"DATASTORAGE_REDIS_URL": redis_url}, "dlq", "replay")
    assert "replayed 0 of 1" in replay.stdout and "hold no original entry" in replay.stderr
    assert await client.xlen(DLQ) == 1, "the record of the loss stays"


async def test_entries_trimmed_before_any_consumer_read_them_are_counted_and_the_lag_is_right(
        db, client, consumers, redis_url):
    first = await consumers("first")  # creates the group
    assert first.terminate() == 0
    await publish(client, events(50))
    await client.xtrim(STREAM, maxlen=0)
    consumer = await consumers("second")
    await wait_for(lambda: "unread_entries_trimmed" in consumer.log(), 30, "the loss to be reported")
    lost = [json.loads(line) for line in consumer.log().splitlines() if "unread_entries_trimmed" in line]
    assert lost[0]["entries"] == 50
    status = json.loads(run_datastorage({"DATASTORAGE_REDIS_URL": redis_url}, "stream", "status", "--json").stdout)
    assert status["groups"][0]["lag"] == 0, "the group's lag no longer counts what is gone"
    await publish(client, events(5))
    await settled(db, client, rows=5)


async def test_the_group_deleted_under_a_running_consumer_is_recreated_and_nothing_is_lost(db, client, consumers):
    consumer = await consumers()
    await publish(client, events(10))
    await settled(db, client, rows=10)
    await client.xgroup_destroy(STREAM, GROUP)
    await publish(client, [event(100 + n) for n in range(10)])
    await settled(db, client, rows=20)  # the first ten are read again: no-ops
    assert "consumer_group_recreated" in consumer.log()
    assert consumer.running
    assert await pending(client) == 0


def _fields(e) -> dict[str, str]:
    from app.audit.identity import Submission
    from app.audit.wire import encode_submission

    return {k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else v.decode()
            for k, v in encode_submission(Submission(e)).items()}
