"""Rows committed since a mark, in commit order (`app/audit/arrivals.py`): what the viewer's live
tail is fed from. A row committed late with an older timestamp is an arrival all the same."""

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from app.audit.arrivals import ArrivalMark, current_mark, find_arrivals
from app.audit.query import AuditQuery
from app.core.db import connect, create_engine
from tests.helpers import audit_row, insert_audit_row

LOOKBACK = timedelta(hours=1)


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url, json_deserializer=orjson.loads)
    yield engine
    await engine.dispose()


async def mark(engine) -> ArrivalMark:
    async with engine.connect() as conn:
        return await current_mark(conn)


async def arrived(engine, earlier: ArrivalMark, later: ArrivalMark | None = None, **filters) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            later = later or await current_mark(conn)
            rows, _ = await find_arrivals(conn, AuditQuery(filters, order="asc", limit=1000), earlier, later,
                                          lookback=LOOKBACK)
    return {row["event_id"] for row in rows}


def row(minutes_ago: float, **overrides):
    return audit_row(datetime.now(UTC) - timedelta(minutes=minutes_ago), event_id=uuid.uuid4(), **overrides)


async def test_a_row_committed_after_the_mark_arrives_even_with_an_older_timestamp(db, engine):
    newest = row(1)
    await insert_audit_row(db, newest)
    start = await mark(engine)
    late = row(30)  # committed now, dated half an hour before the newest row already shown
    await insert_audit_row(db, late)
    assert await arrived(engine, start) == {late["event_id"]}


async def test_a_transaction_in_progress_at_the_mark_arrives_when_it_commits(db, database_url, engine):
    writer = await connect(database_url)
    try:
        transaction = writer.transaction()
        await transaction.start()
        slow = row(5)
        await insert_audit_row(writer, slow)  # has its transaction id, not committed
        start = await mark(engine)
        quick = row(2)
        await insert_audit_row(db, quick)  # younger transaction, committed first
        assert await arrived(engine, start) == {quick["event_id"]}
        await transaction.commit()
        assert await arrived(engine, start) == {quick["event_id"], slow["event_id"]}
    finally:
        await writer.close()


async def test_only_rows_between_the_two_marks_and_matching_the_filters(db, engine):
    start = await mark(engine)
    wanted, other = row(3, correlation_id="rem-a"), row(3, correlation_id="rem-b")
    await insert_audit_row(db, wanted)
    await insert_audit_row(db, other)
    end = await mark(engine)
    after_end = row(3, correlation_id="rem-a")
    await insert_audit_row(db, after_end)
    assert await arrived(engine, start, end, correlation_id="rem-a") == {wanted["event_id"]}
    assert await arrived(engine, end) == {after_end["event_id"]}
    assert await arrived(engine, await mark(engine)) == set()


async def test_rows_dated_before_the_look_back_are_not_compared(db, engine):
    # The documented limit of the xmin-based implementation (an indexed write_xid lifts it).
    start = await mark(engine)
    ancient = row(LOOKBACK.total_seconds() / 60 + 10)
    await insert_audit_row(db, ancient)
    assert await arrived(engine, start) == set()


@pytest.mark.parametrize("text", ["", "1:2", "a:b:", "1:2:3,", "1:2:3;DROP", "9" * 21 + ":1:", "1:2:" + "3," * 3000 + "3"])
def test_a_mark_is_a_snapshot_text_and_nothing_else(text):
    with pytest.raises(ValueError):
        ArrivalMark.parse(text)
    assert ArrivalMark.parse("740:745:741,743").snapshot == "740:745:741,743"
