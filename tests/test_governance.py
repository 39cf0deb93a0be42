"""Retention and legal holds (issue 15), on the real Postgres and Redis: a held correlation survives
a retention run and stays queryable while an unheld one of the same month is gone; the trail still
verifies after the drop; a dry run changes nothing; the floor, the prompt and the current month
hold; holds answer as the issue says, to admins only; every run and hold change is audited."""

import asyncio
import getpass
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from app.audit.integrity.keys import public_key_path
from app.audit.integrity.proofs import verify_proof
from app.audit.integrity.verify import Window, verify
from app.audit.partitions import add_months, ensure_partitions, list_partitions, month_start
from app.audit.retention import (
    RetentionPolicy,
    RetentionRefused,
    apply,
    export_figures,
    older_than_due,
    retention_figures,
)
from app.audit.self_audit import Action
from app.audit.store import AuditStore
from app.local.run import apply_retention
from tests.helpers import EVENTS, assert_problem, client_for, event, self_audit_events, submitted, wait_for

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")
OPERATOR = os.environ.get("SUDO_USER") or getpass.getuser()
HOLDS = "/api/v1/audit/legal-holds"
OLD = datetime(2019, 3, 15, 12, 0, tzinfo=UTC)  # far past any retention the tests configure
TOKENS = "4dmin admin on-call\nr3ader audit:read reader\n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def datastorage(*args: str, stdin: int | None = subprocess.DEVNULL, **settings: str | Path | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({f"DATASTORAGE_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    env["DATASTORAGE_LOG_FORMAT"] = "json"
    return subprocess.run([DATASTORAGE, *args], env=env, capture_output=True, text=True, timeout=180, stdin=stdin)


@pytest.fixture
def secured(settings, tmp_path, signing_key):
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return settings.model_copy(update={"api_tokens_file": path, "audit_signing_key_file": signing_key})


async def store_old_month(pool, signer) -> dict[str, list]:
    """A month of 2019: two events of a correlation to hold, two of another, one without one; and
    two events of this month (never a candidate)."""
    batches = {
        "case-7": [event(n, event_timestamp=OLD + timedelta(hours=n), correlation_id="case-7") for n in range(2)],
        "rem-1": [event(n, event_timestamp=OLD + timedelta(hours=n), correlation_id="rem-1") for n in range(2, 4)],
        "none": [event(4, event_timestamp=OLD)],
        "now": [event(n, correlation_id="rem-1") for n in range(5, 7)],
    }
    store = AuditStore(pool, signer)
    for batch in batches.values():
        await store.insert(submitted(batch))
    return batches


async def test_a_held_correlation_survives_retention_and_stays_queryable_and_verifiable(
    secured, pool, db, signer, client, database_url, redis_url, signing_key
):
    stored = await store_old_month(pool, signer)
    held_ids = [e.event_id for e in stored["case-7"]]
    gone_ids = [e.event_id for e in stored["rem-1"] + stored["none"]]
    async with client_for(secured) as api:
        placed = await api.post(f"{HOLDS}/case-7", json={"reason": "case 2019-7"}, headers=bearer("4dmin"))
        assert placed.status_code == 201, placed.text

        done = datastorage("retention", "apply", "--yes", database_url=database_url, redis_url=redis_url,
                           audit_signing_key_file=signing_key)
        assert done.returncode == 0, done.stderr
        assert "dropped 1 partition(s): 3 row(s) gone, 2 held row(s) moved to the archive" in done.stdout
        assert date(2019, 3, 1) not in {p.month for p in await list_partitions(db)}

        # The held correlation is still there, through the list and the get; the other is gone.
        page = (await api.get(EVENTS, params={"correlation_id": "case-7"}, headers=bearer("r3ader"))).json()
        assert sorted(e["event_id"] for e in page["data"]) == sorted(str(i) for i in held_ids)
        assert (await api.get(f"{EVENTS}/{held_ids[0]}", headers=bearer("r3ader"))).status_code == 200
        assert (await api.get(f"{EVENTS}/{gone_ids[0]}", headers=bearer("r3ader"))).status_code == 404
        # An archived row still proves its inclusion with the public key alone.
        proof = await api.get(f"{EVENTS}/{held_ids[0]}/proof", headers=bearer("r3ader"))
        assert proof.status_code == 200 and verify_proof(proof.json(), public_key_path(signing_key).read_bytes())
        page = (await api.get(EVENTS, params={"correlation_id": "rem-1"}, headers=bearer("r3ader"))).json()
        assert {e["event_id"] for e in page["data"]} == {str(e.event_id) for e in stored["now"]}

        # Only the dropped rows' ids are free again (a stored id stays claimed).
        claimed = {r["event_id"] for r in await db.fetch("SELECT event_id FROM audit_event_ids")}
        assert set(held_ids) <= claimed and not set(gone_ids) & claimed

        # The chain records the drop, and the whole trail and the held correlation verify.
        seal = await db.fetchrow("SELECT details, correlation_ids FROM audit_seals WHERE kind = 'retention'")
        details = json.loads(seal["details"])
        assert (details["month"], details["rows_dropped"], details["rows_held"]) == ("2019-03-01", 3, 2)
        assert seal["correlation_ids"] == ["case-7"]
        report = await verify(db, signer.verifier, [], Window())
        assert report.intact, report.findings
        assert (report.dropped_by_retention, report.rows) == (3, 4)
        assert (await verify(db, signer.verifier, [], Window(correlation_id="case-7"))).intact

        # An archived row deleted behind the service's back is found (not read as dropped).
        tampering = db.transaction()
        await tampering.start()
        await db.execute("SET LOCAL session_replication_role = replica")  # triggers off, as a superuser can
        await db.execute("DELETE FROM audit_events_held WHERE event_id = $1", held_ids[1])
        tampered = await verify(db, signer.verifier, [], Window())
        await tampering.rollback()
        assert [(f.kind, f.partition) for f in tampered.findings] == [("held_rows_missing", "audit_events_held")]

        # The run is recorded (for the metric) and audited, with the OS user as actor.
        figures = await retention_figures(db)
        assert figures.last_success is not None and (figures.partitions_dropped, figures.rows_dropped) == (1, 3)
        [applied] = await self_audit_events(client, Action.RETENTION_APPLIED.value)
        assert (applied.actor_type, applied.actor_id, applied.event_outcome) == ("operator", OPERATOR, "success")
        assert applied.event_data["rows_archived"] == 2

        # Released, the archive goes with the next run; the trail still verifies.
        assert (await api.delete(f"{HOLDS}/case-7", headers=bearer("4dmin"))).status_code == 200
        again = datastorage("retention", "apply", "--yes", database_url=database_url, redis_url=redis_url,
                            audit_signing_key_file=signing_key)
        assert again.returncode == 0, again.stderr
        assert "released hold 'case-7'  2 archived rows" in again.stdout
        page = (await api.get(EVENTS, params={"correlation_id": "case-7"}, headers=bearer("r3ader"))).json()
        assert page["data"] == []
        assert not set(held_ids) & {r["event_id"] for r in await db.fetch("SELECT event_id FROM audit_event_ids")}
        report = await verify(db, signer.verifier, [], Window())
        assert report.intact, report.findings
        assert (report.dropped_by_retention, report.rows) == (5, 2)


async def test_a_dry_run_changes_nothing(pool, db, signer, client, database_url, redis_url, signing_key):
    await store_old_month(pool, signer)
    await db.execute("INSERT INTO audit_legal_holds (correlation_id, reason, placed_by) VALUES ('case-7', 'r', 'x')")

    async def state():
        return (
            [p.name for p in await list_partitions(db)],
            await db.fetchval("SELECT count(*) FROM audit_events_all"),
            await db.fetchval("SELECT count(*) FROM audit_event_ids"),
            await db.fetchval("SELECT count(*) FROM audit_seals"),
            await db.fetchval("SELECT count(*) FROM audit_retention_runs"),
            await client.xlen("audit_events"),
        )

    before = await state()
    dry = datastorage("retention", "apply", "--dry-run", database_url=database_url, redis_url=redis_url,
                      audit_signing_key_file=signing_key)
    assert dry.returncode == 0, dry.stderr
    assert "audit_events_2019_03  2019-03  5 rows, 2 held row(s) kept (case-7)" in dry.stdout
    assert "dry run: 1 partition(s) would be dropped, 2 held row(s) kept" in dry.stdout
    assert await state() == before


async def test_without_standard_input_and_without_yes_it_refuses(db, database_url, redis_url):
    await ensure_partitions(db, [date(2019, 3, 1)])
    refused = datastorage("retention", "apply", database_url=database_url, redis_url=redis_url)
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert date(2019, 3, 1) in {p.month for p in await list_partitions(db)}


async def test_a_retention_under_the_floor_is_refused_without_allow_shorter(db, database_url, redis_url):
    today = datetime.now(UTC).date()
    three_months_ago = add_months(month_start(today), -3)
    await ensure_partitions(db, [three_months_ago])
    short = {"database_url": database_url, "redis_url": redis_url, "retention_days": "30"}
    refused = datastorage("retention", "apply", "--yes", **short)
    assert refused.returncode == 2 and "DATASTORAGE_RETENTION_DAYS=30 is below the floor of 365" in refused.stderr
    refused = datastorage("retention", "apply", "--yes", **short, retention_category_days="debug=7",
                          retention_floor_days="10")
    assert refused.returncode == 2 and "debug=7" in refused.stderr
    refused = datastorage("partitions", "drop", "--older-than", "2mo", "--yes", database_url=database_url,
                          redis_url=redis_url)
    assert refused.returncode == 2 and "--allow-shorter" in refused.stderr
    assert three_months_ago in {p.month for p in await list_partitions(db)}

    done = datastorage("retention", "apply", "--yes", "--allow-shorter", **short)
    assert done.returncode == 0, done.stderr
    months = {p.month for p in await list_partitions(db)}
    # The current month is never dropped, however short the retention.
    assert three_months_ago not in months and month_start(today) in months


async def test_per_category_retention_replaces_the_default_for_its_category(
    pool, db, signer, database_url, redis_url, signing_key
):
    # Two months two years back: one of notifications only (90 days), one that also holds a
    # security event (3650 days): only the first is past retention.
    today = datetime.now(UTC).date()
    first, second = add_months(month_start(today), -24), add_months(month_start(today), -23)
    at = lambda month: datetime(month.year, month.month, 10, tzinfo=UTC)  # noqa: E731
    store = AuditStore(pool, signer)
    await store.insert(submitted([event(1, event_timestamp=at(first)), event(2, event_timestamp=at(second)),
                                  event(3, event_timestamp=at(second), event_category="security")]))
    done = datastorage("retention", "apply", "--yes", database_url=database_url, redis_url=redis_url,
                       audit_signing_key_file=signing_key, retention_category_days="security=3650,notification=90",
                       retention_floor_days="30")
    assert done.returncode == 0, done.stderr
    months = {p.month for p in await list_partitions(db)}
    assert first not in months and second in months
    assert (await verify(db, signer.verifier, [], Window())).intact


def test_a_month_is_past_retention_when_its_last_day_is_older_than_every_retention_of_its_categories():
    policy = RetentionPolicy(default_days=400, category_days={"notification": 90, "security": 3650})
    due = policy.due(date(2026, 11, 26))
    # 2026-07's last day (07-31) is 118 days back; 2026-08-31 is 87 days back.
    assert due(date(2026, 7, 1), frozenset({"notification"}))
    assert not due(date(2026, 8, 1), frozenset({"notification"}))
    assert not due(date(2026, 7, 1), frozenset({"notification", "workflow"}))  # workflow: the default
    assert due(date(2025, 9, 1), frozenset({"notification", "workflow"}))
    assert not due(date(2025, 9, 1), frozenset({"security"}))
    assert due(date(2025, 9, 1), frozenset())  # an empty month: the default
    # Never the current or a future month.
    assert not RetentionPolicy(default_days=1).due(date(2026, 11, 26))(date(2026, 11, 1), frozenset())
    assert not older_than_due(1, date(2026, 11, 26))(date(2026, 10, 1), frozenset())
    assert older_than_due(1, date(2026, 11, 26))(date(2026, 9, 1), frozenset())
    assert policy.below_floor() == ["notification=90"]


async def test_partitions_drop_archives_held_rows_and_seals_like_retention(
    pool, db, signer, database_url, redis_url, signing_key
):
    await store_old_month(pool, signer)
    await db.execute("INSERT INTO audit_legal_holds (correlation_id, reason, placed_by) VALUES ('case-7', 'r', 'x')")
    done = datastorage("partitions", "drop", "--older-than", "13mo", "--yes", database_url=database_url,
                       redis_url=redis_url, audit_signing_key_file=signing_key)
    assert done.returncode == 0, done.stderr
    assert await db.fetchval("SELECT count(*) FROM audit_events_held WHERE correlation_id = 'case-7'") == 2
    assert await db.fetchval("SELECT count(*) FROM audit_seals WHERE kind = 'retention'") == 1
    assert await db.fetchval("SELECT command FROM audit_retention_runs") == "partitions drop"
    assert (await verify(db, signer.verifier, [], Window())).intact


async def test_a_sealed_trail_is_not_dropped_without_the_signing_key(pool, db, signer, database_url, redis_url):
    await store_old_month(pool, signer)
    refused = datastorage("retention", "apply", "--yes", database_url=database_url, redis_url=redis_url)
    assert refused.returncode == 2 and "DATASTORAGE_AUDIT_SIGNING_KEY_FILE" in refused.stderr
    assert date(2019, 3, 1) in {p.month for p in await list_partitions(db)}


async def test_the_daily_run_of_datastorage_run_applies_the_policy_and_audits_it(settings, pool, db, signer, client,
                                                                                  signing_key):
    await store_old_month(pool, signer)
    done = await apply_retention(settings.model_copy(update={"audit_signing_key_file": signing_key}), signer)
    assert (done.partitions, done.rows_dropped) == (1, 5)
    assert tuple(await db.fetchrow("SELECT command, succeeded FROM audit_retention_runs")) == ("retention apply", True)
    [applied] = await self_audit_events(client, Action.RETENTION_APPLIED.value)
    assert (applied.actor_type, applied.metadata["via"]) == ("system", "schedule")
    # A retention under the floor is never applied unattended.
    with pytest.raises(RetentionRefused, match="run `datastorage retention apply --allow-shorter` by hand"):
        await apply_retention(settings.model_copy(update={"retention_days": 30}), signer)


async def test_the_archive_and_the_view_have_the_columns_of_audit_events_in_order(db):
    async def columns(name: str) -> list[tuple[str, str]]:
        return [tuple(r) for r in await db.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 "
            "ORDER BY ordinal_position", name)]

    assert await columns("audit_events") == await columns("audit_events_held") == await columns("audit_events_all")


async def test_legal_holds_answer_as_stated_to_admins_only(secured, client):
    async with client_for(secured) as api:
        admin = bearer("4dmin")
        assert_problem(await api.post(f"{HOLDS}/rem-9", json={}, headers=admin), 400, "reason")
        assert_problem(await api.post(f"{HOLDS}/rem-9", json={"reason": "  "}, headers=admin), 400, "reason")
        placed = await api.post(f"{HOLDS}/rem-9", json={"reason": "INC-1"}, headers=admin)
        assert placed.status_code == 201
        hold = placed.json()
        assert (hold["correlation_id"], hold["reason"], hold["placed_by"], hold["released_by"]) == (
            "rem-9", "INC-1", "on-call", None)
        again = await api.post(f"{HOLDS}/rem-9", json={"reason": "something else"}, headers=admin)
        assert again.status_code == 200 and again.json() == hold
        assert (await api.get(f"{HOLDS}/rem-9", headers=admin)).json() == hold
        assert (await api.get(HOLDS, headers=admin)).json() == {"legal_holds": [hold]}

        # Not an admin: 403 naming the scope; no token: 401.
        for method, path in (("POST", f"{HOLDS}/rem-9"), ("DELETE", f"{HOLDS}/rem-9"), ("GET", HOLDS),
                             ("GET", f"{HOLDS}/rem-9")):
            denied = await api.request(method, path, json={"reason": "x"}, headers=bearer("r3ader"))
            assert assert_problem(denied, 403)["scope"] == "admin"
            assert_problem(await api.request(method, path, json={"reason": "x"}), 401)

        released = await api.delete(f"{HOLDS}/rem-9", headers=admin)
        assert released.status_code == 200 and released.json()["released_by"] == "on-call"
        assert_problem(await api.get(f"{HOLDS}/rem-9", headers=admin), 404)
        assert_problem(await api.delete(f"{HOLDS}/rem-9", headers=admin), 404)
        assert_problem(await api.delete(f"{HOLDS}/never-held", headers=admin), 404)
        assert (await api.get(HOLDS, headers=admin)).json() == {"legal_holds": []}
        # Held again: a new hold.
        assert (await api.post(f"{HOLDS}/rem-9", json={"reason": "INC-2"}, headers=admin)).status_code == 201

    # Each change once in the trail (the unchanged repeat is not a change), the token's NAME as actor.
    placed_events = await self_audit_events(client, Action.LEGAL_HOLD_PLACED.value)
    [released_event] = await self_audit_events(client, Action.LEGAL_HOLD_RELEASED.value)
    assert [e.event_data["reason"] for e in placed_events] == ["INC-1", "INC-2"]
    for found in (*placed_events, released_event):
        assert (found.actor_type, found.actor_id, found.resource_type, found.resource_id) == (
            "operator", "on-call", "legal_hold", "rem-9")
    assert released_event.event_data["released_by"] == "on-call"


async def test_the_legal_hold_commands_place_list_and_release_as_the_os_user(database_url, redis_url, client):
    urls = {"database_url": database_url, "redis_url": redis_url}
    missing = datastorage("legal-hold", "place", "rem-3", **urls)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    assert datastorage("legal-hold", "place", "rem-3", "--reason", "INC-3", **urls).returncode == 0
    assert "already held" in datastorage("legal-hold", "place", "rem-3", "--reason", "again", **urls).stdout
    [hold] = json.loads(datastorage("legal-hold", "list", "--json", **urls).stdout)["legal_holds"]
    assert (hold["correlation_id"], hold["reason"], hold["placed_by"]) == ("rem-3", "INC-3", OPERATOR)
    assert datastorage("legal-hold", "release", "rem-3", **urls).returncode == 0
    assert datastorage("legal-hold", "release", "rem-3", **urls).returncode == 1
    assert json.loads(datastorage("legal-hold", "list", "--json", **urls).stdout) == {"legal_holds": []}
    [placed] = await self_audit_events(client, Action.LEGAL_HOLD_PLACED.value)
    [released] = await self_audit_events(client, Action.LEGAL_HOLD_RELEASED.value)
    assert (placed.actor_id, released.actor_id, placed.metadata["via"]) == (OPERATOR, OPERATOR, "cli")


async def test_a_run_that_fails_part_way_keeps_what_it_did_and_records_the_failure(
    pool, db, signer, client, database_url, redis_url, signing_key
):
    store = AuditStore(pool, signer)
    await store.insert(submitted([event(1, event_timestamp=datetime(2019, 2, 10, tzinfo=UTC))]))
    await store_old_month(pool, signer)
    # Something depends on March's partition: its DROP fails (and its transaction rolls back).
    await db.execute("CREATE VIEW march AS SELECT * FROM audit_events_2019_03")
    failed = datastorage("retention", "apply", "--yes", database_url=database_url, redis_url=redis_url,
                         audit_signing_key_file=signing_key)
    assert failed.returncode == 1 and "retention stopped after 1 partition(s)" in failed.stderr
    months = {p.month for p in await list_partitions(db)}
    assert date(2019, 2, 1) not in months and date(2019, 3, 1) in months
    run = await db.fetchrow("SELECT succeeded, partitions_dropped, details FROM audit_retention_runs")
    assert (run["succeeded"], run["partitions_dropped"]) == (False, 1) and "DependentObjects" in json.loads(run["details"])["error"]
    assert (await retention_figures(db)).last_success is None
    [applied] = await self_audit_events(client, Action.RETENTION_APPLIED.value)
    assert applied.event_outcome == "failure" and applied.event_data["partitions_dropped"] == 1
    report = await verify(db, signer.verifier, [], Window())
    assert report.intact, report.findings
    assert report.dropped_by_retention == 1


async def test_the_pods_export_the_newest_successful_run_and_what_retention_dropped(pool, db, signer):
    from app.core import metrics

    await store_old_month(pool, signer)

    async def exported() -> tuple[float, float, float]:
        stop = asyncio.Event()
        stop.set()  # one round
        await export_figures(pool, stop)
        return (metrics.RETENTION_LAST_SUCCESS._value.get(), metrics.RETENTION_PARTITIONS_DROPPED._value.get(),
                metrics.RETENTION_ROWS_DROPPED._value.get())

    assert await exported() == (0, 0, 0)  # nothing recorded yet: the alert's 48 h are long past
    before = datetime.now(UTC).timestamp()
    today = datetime.now(UTC).date()
    await apply(db, RetentionPolicy(default_days=2555).due(today), today, signer, command="retention apply",
                actor="test")
    last, partitions, rows = await exported()
    assert last >= before - 1 and (partitions, rows) == (1, 5)


async def test_a_drop_whose_lock_is_not_granted_in_time_is_tried_again(pool, db, signer, database_url, monkeypatch):
    from app.audit import retention
    from app.core.db import connect

    monkeypatch.setattr(retention, "LOCK_RETRY_PAUSE_S", 2.0)  # long enough to see the first give up
    await store_old_month(pool, signer)
    reader = await connect(database_url)  # a long read of the old month holds off the DETACH
    reading = reader.transaction()
    await reading.start()
    await reader.fetchval("SELECT count(*) FROM audit_events_2019_03")
    today = datetime.now(UTC).date()
    runner = await connect(database_url)
    run = asyncio.create_task(apply(runner, RetentionPolicy(default_days=2555).due(today), today, signer,
                                    command="retention apply", actor="test"))

    async def waiting() -> bool:
        return await reader.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted") > 0

    async def gave_up_once() -> bool:
        return not await waiting()

    await wait_for(waiting, 30, "the DETACH waiting for its lock")
    await wait_for(gave_up_once, 30, "the first attempt giving up")
    await reading.rollback()
    await reader.close()
    done = await asyncio.wait_for(run, 60)
    await runner.close()
    assert done.partitions == 1
    assert await db.fetchval("SELECT bool_and(succeeded) FROM audit_retention_runs")
