"""The sharded stream on a real Redis Cluster (three masters, a replica each): shard names and the
slots they land in, the producer's routing and its WAIT option, the HTTP write path, and the
operator's commands across shards."""

import asyncio
import json
import zlib
from datetime import UTC, datetime

import orjson
import pytest
import redis.asyncio as aioredis

from app.audit.wire import encode_event
from app.core.redis_client import create_redis
from app.core.settings import Settings
from app.producer import AuditProducer, NotReplicated
from app.streams.dlq import DeadLetter, dead_letter_fields
from app.streams.keys import StreamKeys
from tests.helpers import EVENTS, SCHEMA_DIR, body_of, client_for, event, row_counts, run_datastorage, wait_for

SHARD_ID = "1764091800123-0"  # the same entry id in two shards' DLQs
PLAIN_ID = "1764091800999-0"


# --- names --------------------------------------------------------------------------------------


def test_one_shard_keeps_the_plain_names_and_n_shards_add_hash_tagged_ones():
    one = StreamKeys()
    assert [(s.index, s.stream, s.dlq) for s in one.read_shards] == [(None, "audit_events", "audit_dlq")]
    assert one.stream_for("rem-42") == one.stream_for(None) == "audit_events"

    four = StreamKeys(shards=4)
    assert [(s.index, s.stream, s.dlq) for s in four.read_shards] == [
        (None, "audit_events", "audit_dlq"),
        (0, "audit_events:{0}", "audit_dlq:{0}"),
        (1, "audit_events:{1}", "audit_dlq:{1}"),
        (2, "audit_events:{2}", "audit_dlq:{2}"),
        (3, "audit_events:{3}", "audit_dlq:{3}"),
    ]
    with pytest.raises(ValueError, match="no stream shard 4"):
        four.shard(4)


def test_the_shard_is_crc32_of_the_utf8_correlation_id_mod_n():
    # The README's rule for producers in other languages, with its worked examples.
    assert zlib.crc32(b"rem-42") == 752790862
    assert StreamKeys(shards=4).stream_for("rem-42") == "audit_events:{2}"
    assert StreamKeys(shards=3).stream_for("rem-42") == "audit_events:{1}"
    assert StreamKeys(shards=3).shard_index("r\u00e9-9") == 2  # UTF-8 bytes, not code points
    assert {StreamKeys(shards=4).shard_index(None) for _ in range(200)} == {0, 1, 2, 3}


async def test_each_shard_shares_a_slot_with_its_dlq_and_the_plain_pair_does_not(cluster_client):
    keys = StreamKeys(shards=16)
    for shard in keys.read_shards[1:]:
        assert await _keyslot(cluster_client, shard.stream) == await _keyslot(cluster_client, shard.dlq)
        assert shard.dlq_in_same_slot
    # The plain stream and its DLQ are two slots: no MULTI or script can hold both on a cluster.
    assert await _keyslot(cluster_client, "audit_events") != await _keyslot(cluster_client, "audit_dlq")
    assert not keys.plain.dlq_in_same_slot


async def test_how_the_hash_tags_spread_over_three_default_masters(cluster_client):
    """Shards per master (masters ordered by their slot ranges) for N = 1…16: `{0}`, `{1}`, `{2}`
    land on two masters only; N = 4 is the first N to use all three (docs/SCALING.md)."""
    spread = {n: await _shards_per_master(cluster_client, n) for n in range(1, 17)}
    assert spread[3] == (0, 2, 1)
    assert spread[4] == (1, 2, 1)
    assert spread[5] == (1, 2, 2)
    assert spread[16] == (6, 6, 4)
    assert min(n for n, counts in spread.items() if all(counts)) == 4


async def _keyslot(client, key: str) -> int:
    return int(await client.execute_command("CLUSTER KEYSLOT", key))


async def _shards_per_master(client, shards: int) -> tuple[int, ...]:
    slots = await client.execute_command("CLUSTER SLOTS")  # {(start, end): {"primary": (host, port)…}}
    ranges = sorted((start, end, tuple(found["primary"])) for (start, end), found in slots.items())
    counts = dict.fromkeys((primary for _, _, primary in ranges), 0)
    for shard in StreamKeys(shards=shards).read_shards[1:]:
        slot = await _keyslot(client, shard.stream)
        counts[next(primary for start, end, primary in ranges if start <= slot <= end)] += 1
    return tuple(counts.values())


# --- producing ----------------------------------------------------------------------------------


async def test_the_producer_keeps_each_correlation_on_its_shard_in_order(cluster_client):
    producer = AuditProducer(cluster_client, shards=4)
    batch = [event(n, correlation_id=f"rem-{n % 25}") for n in range(1000)]
    await producer.publish_many(batch[:600])
    for e in batch[600:650]:
        await producer.publish(e)
    await producer.publish_many(batch[650:])
    uncorrelated = [event(2000 + n) for n in range(200)]
    await producer.publish_many(uncorrelated)

    keys = StreamKeys(shards=4)
    numbers: dict[str, list[int]] = {}
    shard_of: dict[str, set[int]] = {}
    seen_ids = []
    without_correlation: set[int] = set()
    for shard in keys.read_shards[1:]:
        for _, fields in await cluster_client.xrange(shard.stream):
            seen_ids.append(fields[b"event_id"])
            correlation = fields.get(b"correlation_id", b"").decode()
            if not correlation:
                without_correlation.add(shard.index)
                continue
            numbers.setdefault(correlation, []).append(orjson.loads(fields[b"event_data"])["n"])
            shard_of.setdefault(correlation, set()).add(shard.index)
    assert await cluster_client.xlen("audit_events") == 0
    assert sorted(seen_ids) == sorted(str(e.event_id).encode() for e in batch + uncorrelated)
    for correlation, found in numbers.items():
        assert shard_of[correlation] == {zlib.crc32(correlation.encode()) % 4}
        assert found == sorted(found) == [n for n in range(1000) if f"rem-{n % 25}" == correlation]
    assert {index for indexes in shard_of.values() for index in indexes} == {0, 1, 2, 3}
    assert without_correlation == {0, 1, 2, 3}


async def test_a_producer_written_for_one_stream_still_writes_the_plain_stream(cluster_client):
    entry_id = await AuditProducer(cluster_client).publish(event(1, correlation_id="rem-42"))
    [(stored_id, _)] = await cluster_client.xrange("audit_events")
    assert stored_id.decode() == entry_id


async def test_wait_replicas_returns_once_a_replica_has_the_events(cluster_client):
    producer = AuditProducer(cluster_client, shards=3, wait_replicas=1, wait_timeout_ms=2000)
    ids = await producer.publish_many([event(n, correlation_id=f"rem-{n}") for n in range(30)])
    assert len(ids) == 30
    # Each master has one replica: asking for two cannot be confirmed, and says so.
    with pytest.raises(NotReplicated) as refused:
        await producer.publish(event(99, correlation_id="rem-1"), wait_replicas=2)
    assert (refused.value.wanted, refused.value.confirmed, len(refused.value.entry_ids)) == (2, 1, 1)


async def test_wait_goes_to_the_master_that_took_the_xadd(redis_cluster_server, cluster_client):
    """With one master's replica paused, only the events on that master go unconfirmed: a WAIT
    sent to any other node would confirm them."""
    cluster = redis_cluster_server.local
    keys = StreamKeys(shards=3)
    slot = cluster_client.keyslot(keys.shard_stream(0))
    master = cluster.master_of_slot(slot)
    [replica] = cluster.replicas_of(master)
    on_paused = [c for c in (f"rem-{n}" for n in range(100)) if keys.shard_index(c) == 0][:5]
    elsewhere = [
        c
        for c in (f"rem-{n}" for n in range(100))
        if cluster.master_of_slot(cluster_client.keyslot(keys.stream_for(c))) is not master
    ][:5]
    assert on_paused and elsewhere
    producer = AuditProducer(cluster_client, shards=3, wait_replicas=1, wait_timeout_ms=300)
    cluster.pause(replica)
    try:
        await producer.publish_many([event(n, correlation_id=c) for n, c in enumerate(elsewhere)])
        with pytest.raises(NotReplicated) as refused:
            await producer.publish_many([event(n, correlation_id=c) for n, c in enumerate(on_paused + elsewhere)])
        assert refused.value.confirmed == 0
    finally:
        cluster.resume(replica)


async def test_wait_on_a_plain_redis_without_replicas_is_refused(client):
    with pytest.raises(NotReplicated) as refused:
        await AuditProducer(client, wait_replicas=1, wait_timeout_ms=50).publish(event(1))
    assert refused.value.confirmed == 0
    assert await client.xlen("audit_events") == 1  # Redis has it; only the promise is missing


async def test_the_http_write_path_routes_by_correlation_on_the_cluster(database_url, redis_cluster_url, cluster_client):
    settings = Settings(
        database_url=database_url,
        redis_url=redis_cluster_url,
        redis_cluster=True,
        stream_shards=3,
        stream_wait_replicas=1,
        schema_dir=SCHEMA_DIR,
    )
    batch = [event(n, correlation_id=f"rem-{n % 7}") for n in range(70)]
    async with client_for(settings) as api:
        response = await api.post(EVENTS, json=[body_of(e) for e in batch])
        assert response.status_code == 202, response.text
        ready = await api.get("/readyz")
        assert ready.json()["checks"]["redis"] == "ok", ready.text
    keys = StreamKeys(shards=3)
    for k in range(3):
        stored = [f[b"correlation_id"].decode() for _, f in await cluster_client.xrange(keys.shard_stream(k))]
        expected = [e.correlation_id for e in batch if keys.shard_index(e.correlation_id) == k]
        assert stored == expected


# --- operator commands ----------------------------------------------------------------------------


def _dead_letter(stream: str, entry_id: str, reason: str, n: int) -> dict:
    letter = DeadLetter(entry_id, {k.encode(): v.encode() for k, v in _wire(n).items()}, reason, "made by a test", 6)
    return dead_letter_fields(letter, stream, datetime.now(UTC))


def _wire(n: int) -> dict[str, str]:
    return {str(k): str(v) for k, v in encode_event(event(n, correlation_id="rem-42")).items()}


async def test_stream_status_and_dlq_commands_work_across_shards(redis_cluster_url, cluster_client):
    keys = StreamKeys(shards=3)
    await AuditProducer(cluster_client, shards=3).publish_many(
        [event(n, correlation_id=f"rem-{n % 6}") for n in range(30)]
    )
    await AuditProducer(cluster_client).publish_many([event(100), event(101)])  # the plain stream
    for shard in keys.read_shards:
        await cluster_client.xgroup_create(shard.stream, "datastorage", id="0", mkstream=True)
    await cluster_client.xreadgroup("datastorage", "slow-one", {keys.shard_stream(0): ">"}, count=2)
    await cluster_client.xreadgroup("datastorage", "slow-one", {keys.shard_stream(2): ">"}, count=1)
    await cluster_client.xadd(keys.shard_dlq(0), _dead_letter(keys.shard_stream(0), "1-1", "validation", 1), id=SHARD_ID)
    await cluster_client.xadd(
        keys.shard_dlq(2), _dead_letter(keys.shard_stream(2), "1-2", "permanent_db_error", 2), id=SHARD_ID
    )
    await cluster_client.xadd("audit_dlq", _dead_letter("audit_events", "1-3", "validation", 3), id=PLAIN_ID)
    settings = {
        "DATASTORAGE_REDIS_URL": redis_cluster_url,
        "DATASTORAGE_REDIS_CLUSTER": "true",
        "DATASTORAGE_STREAM_SHARDS": "3",
    }

    status = json.loads(run_datastorage(settings, "stream", "status", "--json").stdout)
    assert (status["shards"], status["length"], status["dlq_depth"]) == (3, 32, 3)
    assert [s["stream"] for s in status["streams"]] == ["audit_events", *(keys.shard_stream(k) for k in range(3))]
    assert all(s["node"].startswith("127.0.0.1:") for s in status["streams"])
    [group] = status["groups"]
    assert (group["name"], group["pending"], group["lag"]) == ("datastorage", 3, 29)
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [("slow-one", 3)]
    assert group["oldest_pending_id"].split(":")[0] in ("0", "2")
    text = run_datastorage(settings, "stream", "status").stdout
    assert "stream audit_events and 3 shards: 32 entries; DLQs: 3" in text
    assert "audit_events:{2} on 127.0.0.1:" in text and "consumer slow-one: pending 3" in text

    listed = json.loads(run_datastorage(settings, "dlq", "list", "--json").stdout)
    assert sorted(e["id"] for e in listed) == sorted([f"0:{SHARD_ID}", f"2:{SHARD_ID}", PLAIN_ID])
    only_db = json.loads(run_datastorage(settings, "dlq", "list", "--reason", "permanent_db_error", "--json").stdout)
    assert [e["id"] for e in only_db] == [f"2:{SHARD_ID}"]
    ambiguous = run_datastorage(settings, "dlq", "show", SHARD_ID, check=False)
    assert ambiguous.returncode == 2 and "several DLQs" in ambiguous.stderr
    assert run_datastorage(settings, "dlq", "show", f"7:{SHARD_ID}", check=False).returncode == 2
    shown = json.loads(run_datastorage(settings, "dlq", "show", f"2:{SHARD_ID}").stdout)
    assert (shown["id"], shown["source_stream"]) == (f"2:{SHARD_ID}", keys.shard_stream(2))
    assert json.loads(run_datastorage(settings, "dlq", "show", PLAIN_ID).stdout)["resource_id"] == "notif-3"

    # A shard's dead letter goes back to its shard in one MULTI; the plain one to the plain stream
    # (two slots on a cluster: XADD, then XDEL).
    replayed = run_datastorage(settings, "dlq", "replay", f"2:{SHARD_ID}", PLAIN_ID).stdout
    assert "replayed 2 of 2" in replayed
    assert await cluster_client.xlen(keys.shard_dlq(2)) == 0 and await cluster_client.xlen("audit_dlq") == 0
    # (The replay's own audit event goes to a shard too: the entries are found by what they hold.)
    [back] = [f for _, f in await cluster_client.xrevrange(keys.shard_stream(2), count=2)
              if f[b"resource_id"] == b"notif-2"]
    assert b"dlq_reason" not in back
    [plain_back] = [f for _, f in await cluster_client.xrevrange("audit_events", count=2)
                    if f[b"resource_id"] == b"notif-3"]
    assert b"dlq_reason" not in plain_back

    purged = run_datastorage(settings, "dlq", "purge", "--yes").stdout
    assert purged.strip() == "purged 1 dead letter(s)"
    assert [await cluster_client.xlen(s.dlq) for s in keys.read_shards] == [0, 0, 0, 0]


async def test_one_shard_on_a_cluster_keeps_the_plain_names(redis_cluster_url, cluster_client):
    await AuditProducer(cluster_client).publish_many([event(1), event(2)])
    settings = {"DATASTORAGE_REDIS_URL": redis_cluster_url, "DATASTORAGE_REDIS_CLUSTER": "true"}
    status = json.loads(run_datastorage(settings, "stream", "status", "--json").stdout)
    assert (status["stream"], status["length"], status["dlq_stream"]) == ("audit_events", 2, "audit_dlq")
    assert [s["stream"] for s in status["streams"]] == ["audit_events"]
    text = run_datastorage(settings, "stream", "status").stdout
    assert text.startswith("stream audit_events: 2 entries; DLQ audit_dlq: 0")


async def test_shards_without_a_cluster_work_the_same(redis_url, client):
    keys = StreamKeys(shards=2)
    await AuditProducer(client, shards=2).publish_many([event(n, correlation_id=f"rem-{n}") for n in range(10)])
    await client.xadd(keys.shard_dlq(1), _dead_letter(keys.shard_stream(1), "1-1", "validation", 1), id=SHARD_ID)
    await client.xadd(keys.shard_dlq(0), _dead_letter(keys.shard_stream(0), "1-1", "validation", 2), id="1-5")
    settings = {"DATASTORAGE_REDIS_URL": redis_url, "DATASTORAGE_STREAM_SHARDS": "2"}
    status = json.loads(run_datastorage(settings, "stream", "status", "--json").stdout)
    assert (status["length"], status["dlq_depth"], len(status["streams"])) == (10, 2, 3)
    assert "node" not in status["streams"][0]
    listed = json.loads(run_datastorage(settings, "dlq", "list", "--json").stdout)
    assert [e["id"] for e in listed] == ["0:1-5", f"1:{SHARD_ID}"]  # oldest first, over both DLQs
    # A bare id that only one DLQ holds is found there.
    assert json.loads(run_datastorage(settings, "dlq", "show", SHARD_ID).stdout)["id"] == f"1:{SHARD_ID}"
    assert "replayed 2 of 2" in run_datastorage(settings, "dlq", "replay").stdout
    # The 2 replayed entries and the replay's own audit event, which goes to a shard like any event.
    assert await client.xlen(keys.shard_stream(0)) + await client.xlen(keys.shard_stream(1)) == 13
    assert not await client.exists(keys.stream)


async def test_the_factory_makes_a_cluster_client_when_asked(redis_cluster_url, redis_url):
    cluster = create_redis(Settings(redis_url=redis_cluster_url, redis_cluster=True))
    plain = create_redis(Settings(redis_url=redis_url))
    try:
        assert isinstance(cluster, aioredis.RedisCluster) and len(cluster.get_primaries()) == 0  # not yet connected
        await cluster.set("k", "v")
        assert len(cluster.get_primaries()) == 3
        assert isinstance(plain, aioredis.Redis) and await plain.ping()
    finally:
        await asyncio.gather(cluster.aclose(), plain.aclose())


# --- the consumers read every shard ------------------------------------------------------------


async def test_consumers_store_every_shard_and_the_plain_stream_exactly_once_on_the_cluster(
        database_url, db, redis_cluster_url, cluster_client, consumers):
    """Two consumers, three shards and the plain stream on a real cluster: each event one row; an
    invalid entry in a shard goes to that shard's DLQ (one script in its slot), one in the plain
    stream to audit_dlq (two steps: the pair spans two slots)."""
    keys = StreamKeys(shards=3)
    sharded = [event(n, correlation_id=f"rem-{n % 17}") for n in range(300)]
    await AuditProducer(cluster_client, shards=3).publish_many(sharded)
    await AuditProducer(cluster_client).publish_many([event(1000 + n) for n in range(20)])  # a one-stream producer
    await cluster_client.xadd(keys.shard_stream(1), {"event_type": "x.y"})
    await cluster_client.xadd(keys.stream, {"event_type": "x.y"})
    started = [await consumers(name, redis_cluster="true", stream_shards="3", cluster_url=redis_cluster_url)
               for name in ("c1", "c2")]

    async def all_there() -> bool:
        dead = sum([await cluster_client.xlen(s.dlq) for s in keys.read_shards])
        return (await row_counts(db))[0] >= 320 and dead >= 2

    await wait_for(all_there, 90, "320 rows and 2 dead letters")
    assert all(c.running for c in started)
    assert await row_counts(db) == (320, 320)
    assert [await cluster_client.xlen(s.dlq) for s in keys.read_shards] == [1, 0, 1, 0]
    for shard in keys.read_shards:
        assert (await cluster_client.xpending(shard.stream, "datastorage"))["pending"] == 0, shard.stream


async def test_consumers_read_shards_without_a_cluster_too(db, client, consumers):
    await AuditProducer(client, shards=2).publish_many([event(n, correlation_id=f"rem-{n}") for n in range(50)])
    await consumers(stream_shards="2")
    await wait_for(lambda: _rows_at_least(db, 50), 60, "50 rows")
    assert await row_counts(db) == (50, 50)


async def _rows_at_least(db, count: int) -> bool:
    return (await row_counts(db))[0] >= count
