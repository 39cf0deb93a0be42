"""Tamper evidence on a real Postgres (docs/INTEGRITY.md): the attacker has SQL as a superuser
(the append-only triggers switched off), not the signing key and not every copy of the
checkpoints. Every change below is really made, and verification must name what was changed:
the event_id, the seal (chain index), the partition, and the column when it can be told.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from app.audit.integrity import merkle
from app.audit.integrity.checkpoints import Checkpoint, Checkpointer, published_checkpoints
from app.audit.integrity.encoding import ENCODED_COLUMNS, encode_row, leaf_hash
from app.audit.integrity.keys import Signer, generate_key_pair
from app.audit.integrity.seals import HEADER_COLUMNS, SealHeader, pack_leaves, unpack_leaves
from app.audit.integrity.verify import Report, Window, verify
from app.audit.partitions import add_months, month_start
from app.audit.store import AuditStore
from app.catalog.store import create_pool
from app.producer import AuditEvent
from tests.helpers import audit_row, event, insert_audit_row, submitted

NOW = datetime.now(UTC)
# Two months of rows: every seal of the old month is well past the sealing bound, and a partition
# of its own can be dropped or truncated.
OLD = month_start(add_months(NOW.date(), -1)) + timedelta(days=3)
OLD_TIME = datetime(OLD.year, OLD.month, OLD.day, 9, tzinfo=UTC)
RECENT_TIME = NOW - timedelta(hours=2)
BOUND = timedelta(seconds=10)


@dataclass
class Trail:
    """A sealed, checkpointed trail: five seals over two months (one seal spans both)."""

    events: list[AuditEvent]
    old: list[AuditEvent]
    recent: list[AuditEvent]
    old_partition: str


async def _batch(start: int, count: int, when: datetime, correlation: str) -> list[AuditEvent]:
    return [
        event(
            start + n, event_timestamp=when + timedelta(seconds=n), correlation_id=correlation,
            actor_id=f"actor-{n}", metadata={"source": "test", "ratio": 0.5},
            event_data={"n": start + n, "reason": "CrashLoopBackOff", "nested": {"k": [1, 2.5, None]}},
        )
        for n in range(count)
    ]  # fmt: skip


@pytest.fixture
async def trail(database_url, redis_url, client, signer, settings) -> Trail:
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        store = AuditStore(pool, signer)
        batches = [
            await _batch(0, 20, OLD_TIME, "rem-a"),
            await _batch(100, 20, OLD_TIME + timedelta(hours=1), "rem-b"),
            [*await _batch(200, 5, OLD_TIME + timedelta(hours=2), "rem-c"),
             *await _batch(205, 5, RECENT_TIME - timedelta(minutes=5), "rem-c")],
            await _batch(300, 20, RECENT_TIME, "rem-d"),
            await _batch(400, 20, RECENT_TIME + timedelta(minutes=1), "rem-e"),
        ]  # fmt: skip
        for batch in batches:
            assert len((await store.insert(submitted(batch))).stored) == len(batch)
        assert await Checkpointer(pool, client, signer, settings).checkpoint_once() is not None
    finally:
        await pool.close()
    every = [e for batch in batches for e in batch]
    return Trail(
        events=every,
        old=[e for e in every if e.event_date == OLD],
        recent=[e for e in every if e.event_date != OLD],
        old_partition=f"audit_events_{OLD:%Y_%m}",
    )


async def check(db, signer: Signer, client, window: Window = Window(), **options) -> Report:
    checkpoints = [*options.pop("checkpoints", []), *await published_checkpoints(client)]
    return await verify(db, signer.verifier, checkpoints, window, sealing_bound=options.pop("bound", BOUND))


async def as_superuser(db, *statements: tuple) -> None:
    """What an attacker with SQL does: the append-only triggers off for the session, then the change."""
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        for statement, *args in statements:
            await db.execute(statement, *args)


def named(report: Report) -> set[tuple]:
    return {(f.kind, f.event_id, f.seal, f.column) for f in report.findings}


def kinds(report: Report) -> set[str]:
    return {f.kind for f in report.findings}


async def seal_of(db, e: AuditEvent) -> int:
    return await db.fetchval(
        "SELECT s.chain_index FROM audit_events a JOIN audit_seals s USING (seal_id) WHERE a.event_id = $1", e.event_id
    )


# --- no false alarm -------------------------------------------------------------------------------


async def test_an_untouched_trail_verifies_intact_whole_by_window_and_by_correlation(db, client, signer, trail):
    report = await check(db, signer, client)
    assert report.intact, report.findings
    assert (report.rows, report.seals, report.checkpoints) == (len(trail.events), 5, 1)
    assert report.pending == 0

    window = await check(db, signer, client, Window(since=RECENT_TIME - timedelta(hours=1)))
    assert window.intact, window.findings
    assert window.rows == len([e for e in trail.events if e.event_timestamp.date() >= window_day(RECENT_TIME)])

    spanning = await check(db, signer, client, Window(correlation_id="rem-c"))
    assert spanning.intact, spanning.findings
    assert spanning.rows == 10


def window_day(moment: datetime):
    return (moment - timedelta(hours=1)).date()


async def test_the_append_only_triggers_refuse_the_change_without_superuser_tricks(db, trail):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE audit_events SET event_outcome = 'failure' WHERE event_id = $1", trail.old[0].event_id)


# --- a changed column ----------------------------------------------------------------------------

CHANGES = {
    "event_outcome": "event_outcome = 'failure'",
    "actor_id": "actor_id = 'someone-else'",
    "event_data value": """event_data = jsonb_set(event_data, '{reason}', '"OOMKilled"')""",
    "event_data key added": """event_data = event_data || '{"approved": true}'""",
    "event_data nested": """event_data = jsonb_set(event_data, '{nested,k,1}', '2.6')""",
    "metadata": """metadata = '{"source": "test", "ratio": 0.25}'""",
    "event_timestamp": "event_timestamp = event_timestamp - interval '1 microsecond'",
    "correlation_id": "correlation_id = 'rem-z'",
    "parent_event_id set": "parent_event_id = gen_random_uuid()",
    "trace_id set": "trace_id = 'trace-forged'",
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=list(CHANGES))
async def test_a_changed_column_of_a_sealed_row_names_the_event_and_its_seal(db, client, signer, trail, change):
    victim = trail.old[3]
    seal = await seal_of(db, victim)
    await as_superuser(db, (f"UPDATE audit_events SET {change} WHERE event_id = $1", victim.event_id))

    report = await check(db, signer, client)
    assert named(report) == {("row_changed", str(victim.event_id), seal, None)}
    by_correlation = await check(db, signer, client, Window(correlation_id="rem-a"))
    assert named(by_correlation) == {("row_changed", str(victim.event_id), seal, None)}


async def test_a_row_re_dated_within_its_month_names_the_column(db, client, signer, trail):
    victim = trail.old[0]
    await as_superuser(
        db, ("UPDATE audit_events SET event_date = event_date + 1, event_timestamp = event_timestamp + interval '1 day' "
             "WHERE event_id = $1", victim.event_id),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert named(report) == {("row_changed", str(victim.event_id), await seal_of(db, victim), "event_date")}


async def test_a_row_re_dated_into_another_month_moves_partition_and_is_named_once(db, client, signer, trail):
    victim = trail.old[5]
    seal = await seal_of(db, victim)
    await as_superuser(
        db, ("UPDATE audit_events SET event_date = $2, event_timestamp = $3 WHERE event_id = $1",
             victim.event_id, RECENT_TIME.date(), RECENT_TIME),
    )  # fmt: skip
    assert await db.fetchval(f"SELECT count(*) FROM {trail.old_partition} WHERE event_id = $1", victim.event_id) == 0
    report = await check(db, signer, client)
    assert named(report) == {("row_changed", str(victim.event_id), seal, "event_date")}


async def test_swapped_salts_name_both_rows(db, client, signer, trail):
    a, b = trail.recent[0], trail.recent[1]
    await as_superuser(
        db,
        ("CREATE TEMP TABLE salts AS SELECT event_id, integrity_salt FROM audit_events WHERE event_id = ANY($1::uuid[])",
         [a.event_id, b.event_id]),
        ("UPDATE audit_events SET integrity_salt = (SELECT integrity_salt FROM salts WHERE event_id = $2) "
         "WHERE event_id = $1", a.event_id, b.event_id),
        ("UPDATE audit_events SET integrity_salt = (SELECT integrity_salt FROM salts WHERE event_id = $1) "
         "WHERE event_id = $2", a.event_id, b.event_id),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert {(f.kind, f.event_id) for f in report.findings} == {
        ("row_changed", str(a.event_id)), ("row_changed", str(b.event_id)),
    }  # fmt: skip


# --- deleted rows, truncated and dropped partitions --------------------------------------------


async def test_a_deleted_row_is_named_in_the_whole_trail_its_window_and_its_correlation(db, client, signer, trail):
    victim = trail.recent[7]
    seal = await seal_of(db, victim)
    await as_superuser(db, ("DELETE FROM audit_events WHERE event_id = $1", victim.event_id))
    expected = {("row_deleted", str(victim.event_id), seal, None)}

    assert named(await check(db, signer, client)) == expected
    assert named(await check(db, signer, client, Window(since=RECENT_TIME - timedelta(days=1)))) == expected
    assert named(await check(db, signer, client, Window(correlation_id=victim.correlation_id))) == expected
    # A window that does not hold the row does not report it.
    assert (await check(db, signer, client, Window(until=OLD_TIME + timedelta(days=1)))).intact


async def test_a_truncated_partition_names_every_row_it_held(db, client, signer, trail):
    await as_superuser(db, (f"TRUNCATE {trail.old_partition}",))
    report = await check(db, signer, client)
    assert {f.kind for f in report.findings} == {"row_deleted"}
    assert {f.event_id for f in report.findings} == {str(e.event_id) for e in trail.old}


async def test_a_partition_dropped_outside_retention_names_the_partition(db, client, signer, trail):
    await as_superuser(db, (f"DROP TABLE {trail.old_partition}",))
    report = await check(db, signer, client)
    assert [(f.kind, f.partition) for f in report.findings] == [("partition_missing", trail.old_partition)]
    assert str(len(trail.old)) in report.findings[0].detail
    # Verifying the correlation of a dropped row still names each of its events.
    by_correlation = await check(db, signer, client, Window(correlation_id="rem-a"))
    assert {(f.kind, f.event_id) for f in by_correlation.findings} == {
        ("row_deleted", str(e.event_id)) for e in trail.old if e.correlation_id == "rem-a"
    }


async def test_a_detached_partition_is_as_gone_as_a_dropped_one(db, client, signer, trail):
    await as_superuser(db, (f"ALTER TABLE audit_events DETACH PARTITION {trail.old_partition}",))
    report = await check(db, signer, client)
    assert [(f.kind, f.partition) for f in report.findings] == [("partition_missing", trail.old_partition)]


# --- inserted rows ---------------------------------------------------------------------------------


async def test_a_row_inserted_outside_any_seal_is_named(db, client, signer, trail):
    forged = audit_row(OLD_TIME + timedelta(hours=5), event_id=uuid.uuid4())
    await as_superuser(db)  # no trigger stands in the way of an INSERT: plain SQL does it
    await insert_audit_row(db, forged)
    assert named(await check(db, signer, client)) == {("row_unsealed", str(forged["event_id"]), None, None)}


async def test_a_row_inserted_into_a_sealed_range_is_named_with_the_seal_it_claims(db, client, signer, trail):
    neighbour = trail.old[2]
    seal_id = await db.fetchval("SELECT seal_id FROM audit_events WHERE event_id = $1", neighbour.event_id)
    forged = audit_row(OLD_TIME + timedelta(seconds=30), event_id=uuid.uuid4(), seal_id=seal_id,
                       integrity_salt=bytes(16), correlation_id="rem-a")  # fmt: skip
    await insert_audit_row(db, forged)
    expected = {("row_inserted", str(forged["event_id"]), await seal_of(db, neighbour), None)}
    assert named(await check(db, signer, client)) == expected
    assert named(await check(db, signer, client, Window(correlation_id="rem-a"))) == expected


async def test_a_row_naming_a_seal_that_does_not_exist_is_named(db, client, signer, trail):
    forged = audit_row(OLD_TIME, event_id=uuid.uuid4(), seal_id=999_999, integrity_salt=bytes(16))
    await insert_audit_row(db, forged)
    report = await check(db, signer, client)
    assert named(report) == {("row_inserted", str(forged["event_id"]), None, None)}
    assert "999999" in report.findings[0].detail


async def test_a_forged_unsealed_row_dated_in_the_future_is_not_left_pending(db, client, signer, trail):
    forged = audit_row(NOW + timedelta(days=20), event_id=uuid.uuid4())
    await as_superuser(db, ("SELECT audit_events_ensure_partition($1)", forged["event_date"]))
    await insert_audit_row(db, forged)
    report = await check(db, signer, client)
    assert named(report) == {("row_unsealed", str(forged["event_id"]), None, None)}
    assert report.pending == 0


async def test_a_fresh_unsealed_row_is_pending_then_fails_once_older_than_the_bound(db, client, signer, trail):
    fresh = audit_row(datetime.now(UTC), event_id=uuid.uuid4())
    await insert_audit_row(db, fresh)
    young = await check(db, signer, client)
    assert young.intact and young.pending == 1
    old = await check(db, signer, client, bound=timedelta(0))
    assert ("row_unsealed", str(fresh["event_id"]), None, None) in named(old)


# --- moved rows, altered and reordered seals --------------------------------------------------------


async def test_a_row_moved_to_another_seal_is_named_with_the_seal_that_lists_it(db, client, signer, trail):
    victim, other = trail.recent[10], trail.recent[-1]
    listed_in = await seal_of(db, victim)
    await as_superuser(
        db, ("UPDATE audit_events SET seal_id = (SELECT seal_id FROM audit_events WHERE event_id = $2) "
             "WHERE event_id = $1", victim.event_id, other.event_id),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert named(report) == {("row_moved", str(victim.event_id), listed_in, None)}


@pytest.mark.parametrize(
    "change",
    ["row_count = row_count + 1", "merkle_root = sha256(merkle_root)", "sealed_at = sealed_at - interval '1 day'",
     "first_date = first_date - 1", "details = '{\"note\": \"forged\"}'"],
)  # fmt: skip
async def test_an_altered_seal_header_is_named(db, client, signer, trail, change):
    await as_superuser(db, (f"UPDATE audit_seals SET {change} WHERE chain_index = 2",))
    report = await check(db, signer, client)
    assert ("seal_changed", None, 2, None) in named(report)


async def test_a_re_hashed_seal_without_the_key_fails_its_signature(db, client, signer, trail):
    header = SealHeader.from_record(
        await db.fetchrow(f"SELECT {HEADER_COLUMNS} FROM audit_seals WHERE chain_index = 2")
    )
    forged = SealHeader(**{**header.__dict__, "sealed_at": header.sealed_at - timedelta(hours=1)})
    await as_superuser(
        db, ("UPDATE audit_seals SET sealed_at = $1, seal_hash = $2 WHERE chain_index = 2", forged.sealed_at,
             forged.hash),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert ("seal_signature", None, 2, None) in named(report)
    assert ("chain_broken", None, 3, None) in named(report)


async def test_a_changed_row_with_its_leaf_rewritten_is_caught_by_the_signed_merkle_root(db, client, signer, trail):
    victim = trail.old[0]
    seal = await seal_of(db, victim)
    await as_superuser(db, ("UPDATE audit_events SET event_outcome = 'failure' WHERE event_id = $1", victim.event_id))
    seal_id = await db.fetchval("SELECT seal_id FROM audit_events WHERE event_id = $1", victim.event_id)
    new_hash = (await leaf_hashes_now(db, seal_id))[victim.event_id]
    leaves = unpack_leaves(await db.fetchval("SELECT leaves FROM audit_seals WHERE seal_id = $1", seal_id))
    rewritten = [
        type(leaf)(leaf.event_id, leaf.event_date, new_hash) if leaf.event_id == victim.event_id else leaf
        for leaf in leaves
    ]
    await as_superuser(db, ("UPDATE audit_seals SET leaves = $1 WHERE seal_id = $2", pack_leaves(rewritten),
                            seal_id))  # fmt: skip
    report = await check(db, signer, client)
    assert named(report) == {("seal_leaves", None, seal, None)}
    assert named(await check(db, signer, client, Window(correlation_id="rem-a"))) == {("seal_leaves", None, seal, None)}


async def test_a_deleted_row_hidden_by_re_dating_its_leaf_is_caught(db, client, signer, trail):
    victim = trail.old[1]
    seal_id = await db.fetchval("SELECT seal_id FROM audit_events WHERE event_id = $1", victim.event_id)
    leaves = unpack_leaves(await db.fetchval("SELECT leaves FROM audit_seals WHERE seal_id = $1", seal_id))
    hidden = [
        type(leaf)(leaf.event_id, leaf.event_date - timedelta(days=400), leaf.hash)
        if leaf.event_id == victim.event_id else leaf
        for leaf in leaves
    ]  # fmt: skip
    await as_superuser(
        db, ("DELETE FROM audit_events WHERE event_id = $1", victim.event_id),
        ("UPDATE audit_seals SET leaves = $1 WHERE seal_id = $2", pack_leaves(hidden), seal_id),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert "seal_leaves" in kinds(report), report.findings
    assert ("seal_leaves", str(victim.event_id)) in {(f.kind, f.event_id) for f in report.findings}


async def test_reordered_seals_are_named(db, client, signer, trail):
    await as_superuser(
        db, ("UPDATE audit_seals SET chain_index = -chain_index WHERE chain_index IN (2, 3)",),
        ("UPDATE audit_seals SET chain_index = CASE chain_index WHEN -2 THEN 3 ELSE 2 END WHERE chain_index < 0",),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert {("seal_changed", 2), ("seal_changed", 3), ("chain_broken", 2), ("chain_broken", 3)} <= {
        (f.kind, f.seal) for f in report.findings
    }


# --- cut-off chains, checkpoints, other keys ------------------------------------------------------


async def test_the_newest_seals_cut_off_are_found_by_the_published_checkpoint(db, client, signer, trail):
    await as_superuser(
        db, ("DELETE FROM audit_events WHERE seal_id IN (SELECT seal_id FROM audit_seals WHERE chain_index >= 4)",),
        ("DELETE FROM audit_seals WHERE chain_index >= 4",), ("DELETE FROM audit_checkpoints",),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert named(report) == {("seals_cut_off", None, 5, None)}


async def test_a_cut_off_head_is_found_by_a_saved_checkpoint_when_redis_lost_them_too(db, client, signer, trail):
    saved = await published_checkpoints(client)
    await client.delete("audit_checkpoints")
    await as_superuser(
        db, ("DELETE FROM audit_events WHERE seal_id IN (SELECT seal_id FROM audit_seals WHERE chain_index = 5)",),
        ("DELETE FROM audit_seals WHERE chain_index = 5",), ("DELETE FROM audit_checkpoints",),
    )  # fmt: skip
    report = await check(db, signer, client, checkpoints=[Checkpoint.from_json(c.as_json()) for c in saved])
    assert named(report) == {("seals_cut_off", None, 5, None)}


async def test_deleted_checkpoints_everywhere_are_reported_not_taken_as_intact(db, client, signer, trail):
    await client.delete("audit_checkpoints")
    await as_superuser(db, ("DELETE FROM audit_checkpoints",))
    report = await check(db, signer, client, bound=timedelta(0))
    assert kinds(report) == {"no_checkpoint"}


async def test_the_oldest_seals_cut_off_are_named(db, client, signer, trail):
    await as_superuser(
        db, ("DELETE FROM audit_events WHERE seal_id IN (SELECT seal_id FROM audit_seals WHERE chain_index = 1)",),
        ("DELETE FROM audit_seals WHERE chain_index = 1",),
    )  # fmt: skip
    report = await check(db, signer, client)
    assert named(report) == {("chain_start_missing", None, 2, None)}


async def test_a_forged_checkpoint_is_named(db, client, signer, trail, tmp_path):
    other = Signer.from_file(generate_key_pair(tmp_path)[0])
    real = (await published_checkpoints(client))[-1]
    unsigned = Checkpoint(**{**real.__dict__, "checkpoint_index": 99, "signature": b""})
    forged = Checkpoint(**{**unsigned.__dict__, "signature": other.sign(unsigned.hash)})
    report = await check(db, signer, client, checkpoints=[forged])
    assert kinds(report) == {"checkpoint_signature"}


async def test_a_whole_chain_re_sealed_with_another_key_fails_every_signature_and_the_checkpoint(
    db, client, signer, trail, tmp_path
):
    attacker = Signer.from_file(generate_key_pair(tmp_path)[0])
    victim = trail.old[0]
    await as_superuser(db, ("UPDATE audit_events SET event_outcome = 'failure' WHERE event_id = $1", victim.event_id))
    await reseal_everything(db, attacker)

    report = await check(db, signer, client)
    assert {f.seal for f in report.findings if f.kind == "seal_signature"} == {1, 2, 3, 4, 5}
    assert ("checkpoint_mismatch", None, 5, None) in named(report)
    # With the attacker's key the chain itself is consistent: only the checkpoint outside tells.
    assert kinds(await check(db, attacker, client)) == {"checkpoint_signature"}


async def reseal_everything(db, attacker: Signer) -> None:
    """Recomputes every seal from the rows as they are now, chained and signed with `attacker`."""
    prev, total = bytes(32), 0
    for record in await db.fetch(f"SELECT {HEADER_COLUMNS}, leaves FROM audit_seals ORDER BY chain_index"):
        header = SealHeader.from_record(record)
        old = unpack_leaves(bytes(record["leaves"]))
        now = await leaf_hashes_now(db, header.seal_id)
        leaves = [type(leaf)(leaf.event_id, leaf.event_date, now[leaf.event_id]) for leaf in old]
        total += len(leaves)
        new = SealHeader(**{**header.__dict__, "prev_hash": prev, "merkle_root": merkle.root([x.hash for x in leaves]),
                            "rows_total": total, "key_id": attacker.key_id})  # fmt: skip
        await as_superuser(
            db, ("UPDATE audit_seals SET prev_hash = $2, merkle_root = $3, rows_total = $4, key_id = $5, leaves = $6, "
                 "seal_hash = $7, signature = $8 WHERE seal_id = $1", header.seal_id, new.prev_hash, new.merkle_root,
                 new.rows_total, new.key_id, pack_leaves(leaves), new.hash, attacker.sign(new.hash)),
        )  # fmt: skip
        prev = new.hash


async def leaf_hashes_now(db, seal_id: int) -> dict:
    """The leaf hash of each row of a seal as the row is now (what an attacker re-seals)."""
    found = {}
    for row in await db.fetch(
        f"SELECT {', '.join(ENCODED_COLUMNS)}, integrity_salt FROM audit_events WHERE seal_id = $1", seal_id
    ):
        values = [row[name] for name in ENCODED_COLUMNS]
        for name in ("event_data", "metadata"):
            position = ENCODED_COLUMNS.index(name)
            values[position] = orjson.loads(values[position]) if values[position] is not None else None
        found[row["event_id"]] = leaf_hash(encode_row(values, bytes(row["integrity_salt"])))
    return found
