"""The audit API over HTTP, on the real Postgres and Redis: queries, pages, writes, errors, auth."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.dialects import postgresql

from app.audit.partitions import ensure_partitions
from app.audit.query import AuditQuery, build_select
from app.audit.store import AuditStore
from app.audit.wire import decode_entry
from tests.helpers import EVENTS, assert_problem, body_of, client_for, event, submitted


@pytest.fixture
async def store(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield AuditStore(pool)
    await pool.close()


# --- queries -------------------------------------------------------------------------------


async def test_each_filter_selects_exactly_its_events(api, store):
    parent = uuid.uuid4()
    special = event(1, event_type="workflow.failed", event_category="workflow", event_outcome="failure",
                    service_name="wf-controller", correlation_id="rem-7", resource_type="workflow",
                    resource_id="wf-9", actor_type="controller", actor_id="ctrl-1",
                    parent_event_id=parent, trace_id="t-1")
    await store.insert(submitted([special] + [event(n) for n in range(2, 12)]))
    for name, value in [("event_type", "workflow.failed"), ("event_category", "workflow"),
                        ("event_outcome", "failure"), ("service_name", "wf-controller"),
                        ("correlation_id", "rem-7"), ("resource_type", "workflow"),
                        ("resource_id", "wf-9"), ("actor_type", "controller"), ("actor_id", "ctrl-1"),
                        ("parent_event_id", str(parent)), ("trace_id", "t-1")]:
        response = await api.get(EVENTS, params={name: value})
        assert response.status_code == 200, response.text
        assert [e["event_id"] for e in response.json()["data"]] == [str(special.event_id)], name


async def test_an_event_reads_back_as_it_was_written(api, store):
    written = event(3, correlation_id="rem-1", metadata={"source": "test"}, service_version="v1.2")
    await store.insert(submitted([written]))
    [read] = (await api.get(EVENTS)).json()["data"]
    assert read["event_id"] == str(written.event_id)
    assert datetime.fromisoformat(read["event_timestamp"]) == written.event_timestamp
    assert read["event_date"] == written.event_date.isoformat()
    assert read["event_data"] == {"n": 3}
    assert read["metadata"] == {"source": "test"}
    assert read["service_version"] == "v1.2"
    single = await api.get(f"{EVENTS}/{written.event_id}")
    assert single.json() == read


async def test_since_and_until_take_rfc3339_and_durations(api, store):
    now = datetime.now(UTC)
    ages = {"2m": timedelta(minutes=2), "3h": timedelta(hours=3), "2d": timedelta(days=2)}
    await store.insert(submitted([event(n, event_timestamp=now - age, resource_id=label)
                                  for n, (label, age) in enumerate(ages.items())]))

    async def resource_ids(**params) -> set[str]:
        response = await api.get(EVENTS, params=params)
        assert response.status_code == 200, response.text
        return {e["resource_id"] for e in response.json()["data"]}

    assert await resource_ids(since="15m") == {"2m"}
    assert await resource_ids(since="24h") == {"2m", "3h"}
    assert await resource_ids(since="7d") == {"2m", "3h", "2d"}
    assert await resource_ids(until="1h") == {"3h", "2d"}
    window_start = (now - timedelta(hours=4)).isoformat()
    window_end = (now - timedelta(hours=1)).isoformat()
    assert await resource_ids(since=window_start, until=window_end) == {"3h"}


@pytest.mark.parametrize("params,name", [
    ({"since": "-15m"}, "since"), ({"since": "15 minutes"}, "since"), ({"until": "yesterday"}, "until"),
    ({"since": "2026-01-01"}, "since"), ({"since": "1h", "until": "2h"}, "since"),
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"order": "sideways"}, "order"), ({"cursor": "not-a-cursor"}, "cursor"),
    ({"parent_event_id": "123"}, "parent_event_id"), ({"event_outcome": "maybe"}, "event_outcome"),
    ({"actor_type": "robot"}, "actor_type"), ({"colour": "red"}, "colour"),
    ({"resource_id": "x" * 256}, "resource_id"), ({"correlation_id": "a\x00b"}, "correlation_id"),
])
async def test_bad_query_parameters_are_400_naming_the_parameter(api, params, name):
    body = assert_problem(await api.get(EVENTS, params=params), 400, name)
    assert body["parameter"] == name


async def test_a_parameter_given_twice_is_refused(api):
    assert_problem(await api.get(f"{EVENTS}?event_type=a&event_type=b"), 400, "event_type: given more than once")


INJECTIONS = ["' OR '1'='1", "x'; DROP TABLE audit_events; --", "\\' UNION SELECT * FROM pg_user --",
              "%' OR 1=1 --", "$1", "'); DELETE FROM audit_events; --"]


@pytest.mark.parametrize("name", ["event_type", "event_category", "service_name", "correlation_id",
                                  "resource_type", "resource_id", "actor_id", "trace_id",
                                  "event_outcome", "actor_type", "parent_event_id", "since", "until",
                                  "cursor", "order", "limit"])
async def test_sql_injection_strings_do_nothing_but_a_400_or_an_empty_result(api, store, db, name):
    await store.insert(submitted([event(n) for n in range(5)]))
    for attack in INJECTIONS:
        response = await api.get(EVENTS, params={name: attack})
        assert response.status_code in (200, 400), response.text
        if response.status_code == 200:
            assert response.json()["data"] == []
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 5
    assert await db.fetchval("SELECT to_regclass('audit_events') IS NOT NULL")


async def test_order_asc_reads_a_correlation_oldest_first(api, store):
    start = datetime.now(UTC) - timedelta(minutes=10)
    batch = [event(n, correlation_id="rem-1", event_timestamp=start + timedelta(seconds=n)) for n in range(5)]
    await store.insert(submitted(list(reversed(batch))))
    newest_first = (await api.get(EVENTS, params={"correlation_id": "rem-1"})).json()["data"]
    oldest_first = (await api.get(EVENTS, params={"correlation_id": "rem-1", "order": "asc"})).json()["data"]
    assert [e["resource_id"] for e in oldest_first] == [f"notif-{n}" for n in range(5)]
    assert newest_first == list(reversed(oldest_first))


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_pages_cover_2500_rows_once_while_new_rows_arrive(api, store, order):
    start = datetime.now(UTC) - timedelta(hours=1)
    # Pairs of events share a timestamp: the event_id breaks the tie.
    initial = [event(n, event_timestamp=start + timedelta(milliseconds=(n // 2) * 1000)) for n in range(2500)]
    for offset in range(0, 2500, 500):
        await store.insert(submitted(initial[offset:offset + 500]))

    arriving = True

    async def keep_inserting():
        n = 0
        while arriving:
            await store.insert(submitted([event(10_000 + n, event_timestamp=datetime.now(UTC))]))
            n += 1
            await asyncio.sleep(0.005)

    inserter = asyncio.create_task(keep_inserting())
    try:
        seen, cursor, pages = [], None, 0
        upper = (start + timedelta(minutes=30)).isoformat()  # the initial rows only
        while True:
            params = {"limit": 97, "order": order, "until": upper}
            if cursor:
                params["cursor"] = cursor
            page = (await api.get(EVENTS, params=params)).json()
            seen += [e["event_id"] for e in page["data"]]
            pages += 1
            cursor = page["pagination"]["next_cursor"]
            assert page["pagination"]["has_more"] == (cursor is not None)
            if cursor is None:
                break
    finally:
        arriving = False
        await inserter
    assert len(seen) == len(set(seen)) == 2500
    assert set(seen) == {str(e.event_id) for e in initial}
    assert pages == 26
    expected = sorted(initial, key=lambda e: (e.event_timestamp, e.event_id), reverse=order == "desc")
    assert seen == [str(e.event_id) for e in expected]


async def test_pages_without_a_time_window_see_new_rows_only_on_the_first_page(api, store):
    """Newest first, new rows land before the cursor: later pages neither skip nor repeat."""
    base = datetime.now(UTC) - timedelta(minutes=5)
    await store.insert(submitted([event(n, event_timestamp=base + timedelta(seconds=n)) for n in range(30)]))
    first = (await api.get(EVENTS, params={"limit": 10})).json()
    await store.insert(submitted([event(100 + n) for n in range(5)]))
    second = (await api.get(EVENTS, params={"limit": 10, "cursor": first["pagination"]["next_cursor"]})).json()
    assert [e["resource_id"] for e in first["data"] + second["data"]] == [f"notif-{n}" for n in range(29, 9, -1)]


async def test_a_time_bounded_query_reads_only_its_partitions(db):
    now = datetime.now(UTC)
    await ensure_partitions(db, [now.date() - timedelta(days=62), now.date() - timedelta(days=31)])
    query = AuditQuery(filters={"event_type": "a.b"}, since=now - timedelta(hours=24),
                       latest_event_date=(now + timedelta(hours=1)).date())
    sql = str(build_select(query).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    plan = "\n".join(row[0] for row in await db.fetch("EXPLAIN " + sql))
    partitions = {p for p in await db.fetch("SELECT inhrelid::regclass::text AS p FROM pg_inherits "
                                            "WHERE inhparent = 'audit_events'::regclass")}
    scanned = {p["p"] for p in partitions if p["p"] in plan}
    months = {(now + timedelta(hours=h)).date().replace(day=1) for h in (-24, 0, 1)}
    assert scanned == {f"audit_events_{d:%Y_%m}" for d in months}
    assert len(partitions) >= 6


async def test_get_one_event_is_404_when_unknown(api):
    assert_problem(await api.get(f"{EVENTS}/{uuid.uuid4()}"), 404, "no audit event")


# --- writes --------------------------------------------------------------------------------


async def test_post_one_event_puts_it_on_the_stream(api, redis_url):
    written = event(1, correlation_id="rem-5")
    response = await api.post(EVENTS, json=body_of(written))
    assert response.status_code == 202, response.text
    assert response.json() == {"event_id": str(written.event_id), "status": "accepted"}
    client = aioredis.from_url(redis_url)
    [(entry_id, fields)] = await client.xrange("audit_events")
    await client.aclose()
    assert decode_entry("audit_events", entry_id.decode(), fields) == written


async def test_post_an_array_puts_every_event_on_the_stream(api, redis_url):
    batch = [event(n) for n in range(250)]
    response = await api.post(EVENTS, json=[body_of(e) for e in batch])
    assert response.status_code == 202
    assert response.json()["event_ids"] == [str(e.event_id) for e in batch]
    client = aioredis.from_url(redis_url)
    assert await client.xlen("audit_events") == 250
    await client.aclose()


async def test_post_names_the_index_and_field_of_the_first_bad_item(api, redis_url):
    items = [body_of(event(n)) for n in range(5)]
    items[3]["event_outcome"] = "maybe"
    items[4]["actor_type"] = "robot"
    body = assert_problem(await api.post(EVENTS, json=items), 400, "item 3: event_outcome")
    assert (body["index"], body["field"]) == (3, "event_outcome")
    client = aioredis.from_url(redis_url)
    assert await client.xlen("audit_events") == 0, "all or nothing"
    await client.aclose()


@pytest.mark.parametrize("payload,detail", [
    ([], "no events"),
    ("just a string", "event object or an array"),
    ([1, 2], "item 0: must be a JSON object"),
    ({"event_type": "x"}, "item 0: event_category: Field required"),
    ({**body_of(event()), "event_data": "[1]"}, "event_data: must be a JSON object"),
    ({**body_of(event()), "event_timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
    ({**body_of(event()), "surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({**body_of(event()), "event_data": {"n": 10**30}}, "event_data: holds an integer beyond 64 bits"),
])
async def test_post_refuses_bad_bodies_with_a_400(api, payload, detail):
    assert_problem(await api.post(EVENTS, json=payload), 400, detail)


async def test_post_limits_the_number_of_events_and_the_body_size(api, settings):
    assert_problem(await api.post(EVENTS, json=[body_of(event(n)) for n in range(1001)]), 400, "at most 1000")
    huge = body_of(event())
    huge["event_data"] = {"blob": "x" * (settings.max_body_bytes + 10)}
    assert_problem(await api.post(EVENTS, json=huge), 413, "larger than")


async def test_post_needs_a_json_body(api):
    assert_problem(await api.post(EVENTS, content=b"event_type=x", headers={"content-type": "text/plain"}), 415)
    assert_problem(await api.post(EVENTS, content=b"{nope", headers={"content-type": "application/json"}),
                   400, "not valid JSON")


async def test_post_takes_trace_context_from_traceparent(api, redis_url):
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    await api.post(EVENTS, json=body_of(event(1)), headers=headers)
    explicit = body_of(event(2, trace_id="mine"))
    await api.post(EVENTS, json=explicit, headers=headers)
    client = aioredis.from_url(redis_url)
    entries = [fields for _, fields in await client.xrange("audit_events")]
    await client.aclose()
    assert (entries[0][b"trace_id"], entries[0][b"span_id"]) == (b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7")
    assert entries[1][b"trace_id"] == b"mine"


async def test_post_with_redis_down_writes_to_postgres(api, redis_server, db):
    batch = [event(n) for n in range(3)]
    redis_server.stop()
    response = await api.post(EVENTS, json=[body_of(e) for e in batch])
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "stored"
    stored = {r["event_id"] for r in await db.fetch("SELECT event_id FROM audit_events")}
    assert stored == {e.event_id for e in batch}
    # The same request again (a client retry) is still three rows.
    assert (await api.post(EVENTS, json=[body_of(e) for e in batch])).status_code == 201
    assert await db.fetchval("SELECT count(*) FROM audit_events") == 3


async def test_post_with_redis_and_postgres_down_is_503_with_retry_after(api, redis_server, postgres_server):
    redis_server.stop()
    postgres_server.stop()
    response = await api.post(EVENTS, json=body_of(event()))
    body = assert_problem(response, 503, "retry later")
    assert response.headers["retry-after"] == "5"
    assert body["status"] == 503


# --- errors, health, auth ---------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_problems(api):
    assert_problem(await api.get("/api/v1/nothing-here"), 404)
    assert_problem(await api.delete(EVENTS), 405)


async def test_healthz_and_readyz(api, embedder):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "embedding_model": "ok"}


async def test_readyz_names_redis_when_it_is_down(api, redis_server):
    # Issue 12: a store that is down is reported, not a reason to take the pod out of the Service
    # (the write path falls back to Postgres): 200, naming Redis in checks.
    redis_server.stop()
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["checks"]["redis"].startswith("unreachable")
    assert body["checks"]["postgres"] == "ok"
    assert (await api.get("/healthz")).status_code == 200


async def test_readyz_names_an_unmigrated_schema(settings, empty_database_url):
    async with client_for(settings.model_copy(update={"database_url": empty_database_url})) as api:
        body = assert_problem(await api.get("/readyz"), 503, "postgres")
        assert body["checks"]["postgres"].startswith("schema not migrated")


async def test_with_tokens_every_api_route_needs_one(settings, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("file-token\n")
    secured = settings.model_copy(update={"api_tokens": "s3cret, other", "api_tokens_file": token_file})
    async with client_for(secured) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = await api.get(EVENTS, headers=headers)
            assert_problem(response, 401, "bearer token")
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert_problem(await api.post(EVENTS, json={}), 401)
        for token in ("s3cret", "other", "file-token"):
            assert (await api.get(EVENTS, headers={"Authorization": f"Bearer {token}"})).status_code == 200
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200


# --- event_data.<key>=<value> (issue 13) ------------------------------------------------------


async def test_event_data_filters_match_top_level_keys_by_containment(api, store):
    rows = [
        event(1, event_data={"channel": "email", "attempt": 3, "dry_run": True}),
        event(2, event_data={"channel": "email", "attempt": "3", "dry_run": "true"}),
        event(3, event_data={"channel": "sms", "attempt": 3.0, "dry_run": False}),
        event(4, event_data={"nested": {"channel": "email"}}),
    ]
    await store.insert(submitted(rows))

    async def ids(**params) -> set[int]:
        response = await api.get(EVENTS, params=params)
        assert response.status_code == 200, response.text
        return {int(e["resource_id"].removeprefix("notif-")) for e in response.json()["data"]}

    assert await ids(**{"event_data.channel": "email"}) == {1, 2}  # top level only: not 4
    assert await ids(**{"event_data.attempt": "3"}) == {1, 2, 3}  # the number 3 (3.0 too) and the string "3"
    assert await ids(**{"event_data.dry_run": "true"}) == {1, 2}
    assert await ids(**{"event_data.channel": "email", "event_data.dry_run": "false"}) == set()  # all must match
    assert await ids(**{"event_data.channel": "sms", "event_data.attempt": "3"}) == {3}
    assert await ids(**{"event_data.channel": "EMAIL"}) == set()
    assert await ids(**{"event_data.missing": "x"}) == set()
    assert_problem(await api.get(EVENTS, params={"event_data.": "x"}), 400, "event_data.")
    assert_problem(await api.get(EVENTS, params={"event_datum.x": "x"}), 400, "event_datum.x")


async def test_the_event_data_filter_is_served_by_the_gin_index(db):
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    compiled = build_select(AuditQuery(event_data={"channel": "email", "attempt": "3"})).compile(dialect=dialect())
    assert "event_data @>" in str(compiled)
    values = [compiled.params[name] for name in compiled.positiontup]
    values = [json.dumps(v) if isinstance(v, dict) else v for v in values]
    await db.execute("SET enable_seqscan = off")
    plan = "\n".join(row[0] for row in await db.fetch("EXPLAIN " + str(compiled), *values))
    assert "Bitmap Index Scan on audit_events_" in plan and "event_data_idx" in plan, plan


async def test_the_event_data_filter_is_in_the_openapi_document(api):
    operation = (await api.get("/openapi.json")).json()["paths"]["/api/v1/audit-events"]["get"]
    assert "event_data.<key>=<value>" in operation["description"]
    assert [p["name"] for p in operation["x-query-parameter-patterns"]] == ["event_data.<key>"]
