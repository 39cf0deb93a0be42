"""Arbitrary stream entries: the decoder either gives an event Postgres stores or says why not,
and a running consumer stores or dead-letters every one of them, never dies, and still stores the
next valid entry."""

import json

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.audit.store import AuditStore
from app.audit.wire import EVENT_FIELDS, InvalidEntry, decode_entry
from tests.helpers import SCALE, submitted, wait_for

pytestmark = pytest.mark.faults

VALID = {
    b"event_type": b"workflow.started", b"event_category": b"workflow", b"event_outcome": b"success",
    b"service_name": b"fuzz", b"actor_type": b"controller", b"resource_type": b"workflow",
    b"resource_id": b"wf-1",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
values = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=60).map(lambda depth: ("[" * depth + "]" * depth).encode()),
    st.integers(min_value=1, max_value=60).map(lambda depth: ('{"a":' * depth + "1" + "}" * depth).encode()),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat().encode()),
    st.uuids().map(lambda u: str(u).encode()),
    st.sampled_from([b"", b"\x00", b"\xff\xfe", b"x" * 300_000, b'{"k": "\\u0000"}', b"NaN", b"1e999"]),
)
names = st.one_of(st.sampled_from(sorted(EVENT_FIELDS) + ["data", "dlq_reason", "colour"]).map(str.encode),
                  st.binary(min_size=1, max_size=12))
entries = st.one_of(
    # A valid entry with some fields replaced, added or removed: close to what producers send.
    st.tuples(st.dictionaries(names, values, max_size=4), st.sets(st.sampled_from(sorted(VALID)), max_size=3))
    .map(lambda change: {k: v for k, v in {**VALID, **change[0]}.items() if k not in change[1]}),
    st.dictionaries(names, values, min_size=1, max_size=8),
)


@settings(max_examples=int(300 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=entries)
def test_the_decoder_gives_a_storable_event_or_a_reason(fields):
    try:
        event = decode_entry("audit_events", "1764091800123-0", fields)
    except InvalidEntry as error:
        assert str(error), "a refusal always says why"
        return
    assert event.event_timestamp.tzinfo is not None


async def test_decoded_fuzz_events_are_accepted_by_postgres(database_url):
    """Everything the decoder accepts, Postgres stores (no 22P05, 22021, 23514 surprises)."""
    accepted = []

    @settings(max_examples=int(300 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
    @given(fields=entries)
    def collect(fields):
        try:
            accepted.append(decode_entry("audit_events", f"1764091800123-{len(accepted)}", fields))
        except InvalidEntry:
            pass

    collect()
    assert accepted, "the strategy produces valid entries too"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = AuditStore(pool)
        for event in accepted:  # one by one: a refusal would name its event
            await store.insert(submitted([event]))
    finally:
        await pool.close()


async def test_a_running_consumer_stores_or_dead_letters_every_fuzz_entry(db, redis_url, consumers):
    consumer = await consumers("fuzzed")
    client = aioredis.from_url(redis_url)
    batches = []

    @settings(max_examples=int(40 * SCALE), deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(entries, min_size=1, max_size=6))
    def collect(batch):
        batches.append(batch)

    collect()
    try:
        for number, batch in enumerate(batches):
            ids = [await client.xadd("audit_events", fields) for fields in batch]
            await client.xadd("audit_events", {**VALID, b"resource_id": f"sentinel-{number}".encode()})

            async def sentinel_stored():
                return await db.fetchval("SELECT count(*) FROM audit_events WHERE resource_id = $1",
                                         f"sentinel-{number}") == 1

            await wait_for(sentinel_stored, 30, f"the valid entry after fuzz batch {number}")
            dead = {fields[b"source_id"].decode() for _, fields in await client.xrange("audit_dlq")}
            for entry_id, fields in zip(ids, batch):
                entry_id = entry_id.decode()
                try:
                    expected = decode_entry("audit_events", entry_id, fields)
                except InvalidEntry:
                    assert entry_id in dead, (entry_id, fields)
                    continue
                stored = await db.fetchval("SELECT count(*) FROM audit_events WHERE event_id = $1",
                                           expected.event_id)
                assert stored == 1 or entry_id in dead, (entry_id, fields)
            assert consumer.running, consumer.log()[-3000:]
        assert (await client.xpending("audit_events", "datastorage"))["pending"] == 0
        letters = [fields for _, fields in await client.xrange("audit_dlq")]
        assert all(fields[b"dlq_reason"] and fields[b"dlq_error"] for fields in letters)
    finally:
        await client.aclose()
