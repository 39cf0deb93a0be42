"""Reads from a real streaming replica (pg_basebackup of the embedded Postgres): used while its
replay is within the bound in WAL bytes, the primary otherwise and whenever the replica fails,
with no error reaching a client; a search there embeds nothing itself."""

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from app.catalog.importer import import_catalog
from app.catalog.search import search
from app.catalog.store import create_pool
from app.core import metrics
from app.core.db import connect, create_engine
from app.core.read_replicas import ReadRouter, ReadSource, lsn_bytes
from app.core.settings import Settings
from tests.helpers import CATALOG, EVENTS, SCHEMA_DIR, audit_row, client_for, insert_audit_row, wait_for

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _not_measured_yet():
    """The gauges are the process's: each test starts from a replica not measured as usable."""
    metrics.READ_REPLICA_USABLE.labels("replica-0").set(0)


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _usable() -> float:
    return _sample("datastorage_read_replica_usable", replica="replica-0")


def _reads(target: str) -> float:
    return _sample("datastorage_db_reads_total", target=target)


def _settings(primary_url: str, replica_url: str, redis_url: str, max_lag_bytes: int) -> Settings:
    return Settings(
        database_url=primary_url,
        database_read_url=replica_url,
        redis_url=redis_url,
        read_replica_max_lag_bytes=max_lag_bytes,
        read_replica_check_interval_s=0.1,
        schema_dir=SCHEMA_DIR,
    )


@contextlib.asynccontextmanager
async def _router(primary_url: str, replica_url: str, max_lag_bytes: int):
    sources = []
    for name, url in (("primary", primary_url), ("replica-0", replica_url)):
        sources.append(ReadSource(name, create_engine(url), await create_pool(url, min_size=0, max_size=2)))
    sources[0].is_primary = True
    try:
        yield ReadRouter(sources[0], sources[1:], max_lag_bytes=max_lag_bytes)
    finally:
        for source in sources:
            await source.pool.close()
            await source.engine.dispose()


async def _insert_event(primary, correlation_id: str) -> uuid.UUID:
    event_id = uuid.uuid4()
    await insert_audit_row(primary, audit_row(datetime.now(UTC), event_id=event_id, correlation_id=correlation_id))
    return event_id


async def _caught_up(primary, replica) -> bool:
    current = lsn_bytes(await primary.fetchval("SELECT pg_current_wal_lsn()::text"))
    return lsn_bytes(await replica.fetchval("SELECT pg_last_wal_replay_lsn()::text")) >= current


async def _push_wal(primary, size: int) -> None:
    """Writes `size` bytes of WAL on the primary (a logical message: no table is touched)."""
    await primary.execute("SELECT pg_logical_emit_message(false, 'datastorage-test', repeat('x', $1))", size)


def test_a_wal_position_is_read_as_bytes():
    assert lsn_bytes("0/0") == 0
    assert lsn_bytes("16/B374D848") == (0x16 << 32) + 0xB374D848


async def test_an_idle_primary_leaves_the_replica_usable_though_its_replay_time_grows(replicated_database):
    primary_url, replica_url = replicated_database
    primary, replica = await connect(primary_url), await connect(replica_url)
    try:
        await _insert_event(primary, "rem-idle")
        await wait_for(lambda: _caught_up(primary, replica), 30, "the replica to replay the insert")
        await asyncio.sleep(1.5)
        replay_age = await replica.fetchval("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())")
        assert replay_age > 1.4  # what a replay-time bound would call 1.5 s behind
        async with _router(primary_url, replica_url, max_lag_bytes=MIB) as router:
            await router.measure()
            [source] = router.replicas
            assert source.usable and source.lag_bytes is not None and source.lag_bytes < MIB
            assert router.choose() is source
    finally:
        await asyncio.gather(primary.close(), replica.close())


async def test_a_replica_further_behind_than_the_bound_is_not_read(replicated_database, redis_url):
    primary_url, replica_url = replicated_database
    primary, replica = await connect(primary_url), await connect(replica_url)
    try:
        async with client_for(_settings(primary_url, replica_url, redis_url, max_lag_bytes=MIB)) as api:
            await wait_for(lambda: _usable() == 1, 30, "the replica measured as usable")
            await replica.execute("SELECT pg_wal_replay_pause()")
            event_id = await _insert_event(primary, "rem-behind")
            await _push_wal(primary, 2 * MIB)
            await wait_for(lambda: _usable() == 0, 10, "the replica measured as too far behind")
            assert await replica.fetchval("SELECT count(*) FROM audit_events") == 0
            replica_reads = _reads("replica")
            assert (await api.get(f"{EVENTS}/{event_id}")).status_code == 200  # the primary has it
            found = (await api.get(EVENTS, params={"correlation_id": "rem-behind"})).json()["data"]
            assert [row["event_id"] for row in found] == [str(event_id)]
            assert _reads("replica") == replica_reads

            await replica.execute("SELECT pg_wal_replay_resume()")
            await wait_for(lambda: _usable() == 1, 30, "the replica usable again once it replayed")
            assert (await api.get(f"{EVENTS}/{event_id}")).status_code == 200
            assert _reads("replica") == replica_reads + 1
    finally:
        with contextlib.suppress(Exception):
            await replica.execute("SELECT pg_wal_replay_resume()")
        await asyncio.gather(primary.close(), replica.close())


async def test_within_the_bound_reads_go_to_the_replica_and_see_what_it_has(replicated_database, redis_url):
    primary_url, replica_url = replicated_database
    primary, replica = await connect(primary_url), await connect(replica_url)
    try:
        async with client_for(_settings(primary_url, replica_url, redis_url, max_lag_bytes=1024 * MIB)) as api:
            await wait_for(lambda: _usable() == 1, 30, "the replica measured as usable")
            await replica.execute("SELECT pg_wal_replay_pause()")
            event_id = await _insert_event(primary, "rem-stale")
            await _push_wal(primary, 2 * MIB)
            await asyncio.sleep(0.3)  # measured again: 2 MiB behind, within 1 GiB
            assert _usable() == 1
            assert (await api.get(f"{EVENTS}/{event_id}")).status_code == 404  # not replayed yet
            await replica.execute("SELECT pg_wal_replay_resume()")
            await wait_for(lambda: _caught_up(primary, replica), 30, "the replica to replay")
            assert (await api.get(f"{EVENTS}/{event_id}")).status_code == 200
    finally:
        with contextlib.suppress(Exception):
            await replica.execute("SELECT pg_wal_replay_resume()")
        await asyncio.gather(primary.close(), replica.close())


async def test_a_search_on_a_replica_leaves_stale_rows_to_the_primary(replicated_database, embedder):
    primary_url, replica_url = replicated_database
    await import_catalog(primary_url, CATALOG, embedder=lambda: embedder)
    primary_pool = await create_pool(primary_url, min_size=1, max_size=2)
    replica_pool = await create_pool(replica_url, min_size=1, max_size=2)
    primary, replica = await connect(primary_url), await connect(replica_url)
    try:
        edited = await primary.fetchval(
            "UPDATE playbook_catalog SET description = description || ' (edited)' "
            "WHERE playbook_id = (SELECT min(playbook_id) FROM playbook_catalog WHERE is_latest_version) "
            "AND is_latest_version RETURNING playbook_id"
        )
        await wait_for(lambda: _caught_up(primary, replica), 30, "the replica to replay the edit")
        stale = "SELECT count(*) FROM playbook_catalog WHERE embedded_input_hash IS DISTINCT FROM embedding_input_hash"
        assert await replica.fetchval(stale) == 1
        by_search = _sample("datastorage_playbooks_embedded_total", by="search")

        hits = await search(primary_pool, embedder, "pods restarting out of memory", read_pool=replica_pool)
        assert hits and _sample("datastorage_playbooks_embedded_total", by="search") == by_search
        assert await primary.fetchval(stale) == 1  # nobody embedded it: that is the worker's job

        await search(primary_pool, embedder, "pods restarting out of memory")  # on the primary
        assert _sample("datastorage_playbooks_embedded_total", by="search") == by_search + 1
        assert await primary.fetchval(stale) == 0, f"{edited} embedded by the primary's search"
    finally:
        await asyncio.gather(primary_pool.close(), replica_pool.close(), primary.close(), replica.close())


async def test_the_replica_stopping_mid_load_sends_reads_to_the_primary_without_errors(
    replicated_postgres, replicated_database, redis_url, embedder, capsys
):
    primary_url, replica_url = replicated_database
    await import_catalog(primary_url, CATALOG, embedder=lambda: embedder)
    primary = await connect(primary_url)
    ids = [await _insert_event(primary, f"rem-{n % 5}") for n in range(50)]
    await primary.close()
    statuses: list[int] = []
    async with client_for(_settings(primary_url, replica_url, redis_url, max_lag_bytes=16 * MIB)) as api:
        await wait_for(lambda: _usable() == 1, 30, "the replica measured as usable")
        before = {target: _reads(target) for target in ("primary", "replica")}
        fallbacks = _sample("datastorage_read_replica_fallbacks_total", replica="replica-0")
        stop = asyncio.Event()

        async def reader(n: int) -> None:
            while not stop.is_set():
                for response in (
                    await api.get(EVENTS, params={"correlation_id": f"rem-{n}", "limit": "5"}),
                    await api.get(f"{EVENTS}/{ids[n]}"),
                    await api.get("/api/v1/playbooks/search", params={"query": "disk full on a node"}),
                ):
                    statuses.append(response.status_code)

        readers = [asyncio.create_task(reader(n)) for n in range(4)]
        await asyncio.sleep(1.5)
        on_replica_before_stop = _reads("replica") - before["replica"]
        await asyncio.to_thread(replicated_postgres.replica.stop, "immediate")
        primary_at_stop = _reads("primary")
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*readers)
    figures = {
        "requests": len(statuses),
        "non_200": sum(1 for s in statuses if s != 200),
        "replica_reads_before_stop": on_replica_before_stop,
        "primary_reads_after_stop": _reads("primary") - primary_at_stop,
        "fallbacks": _sample("datastorage_read_replica_fallbacks_total", replica="replica-0") - fallbacks,
    }
    with capsys.disabled():
        print(f"\n[replica] stopped mid-load: {figures}")
    assert figures["non_200"] == 0, sorted(set(statuses))
    assert figures["replica_reads_before_stop"] > 0 and figures["primary_reads_after_stop"] > 0
    assert _usable() == 0
