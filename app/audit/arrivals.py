"""Which audit rows were committed since a moment: commit order, not event time.

A live tail cannot poll the newest keyset. Several consumers commit batches concurrently, and a
row committed late may carry an older `event_timestamp` than rows already shown (a backlog after an
outage, a dead letter replayed, a producer's own clock). What is new is what became *visible*.
So a mark is a Postgres snapshot (`pg_current_snapshot()`, read in the same transaction as the page
it follows), and the rows committed between two marks are those the later snapshot sees and the
earlier one does not (`pg_visible_in_snapshot` of the row's inserting transaction).

The inserting transaction is, today, the row's `xmin` system column: 32 bits, widened here to an
`xid8` against the reading statement's own snapshot (every row it sees is younger than that
snapshot's xmax by less than 2^31 transactions: Postgres freezes before wrap-around). `xmin` cannot
be indexed, so the rows compared are narrowed by a look-back on `event_timestamp` (an index): a row
committed more than `lookback` after the time it carries is not reported as committed since (it is
in every page of the list all the same).

What the write path could give instead (docs: the viewer section of README.md): a column
`write_xid xid8 NOT NULL DEFAULT pg_current_xact_id()` with a btree index on it. Then
`committed_between` becomes `write_xid >= pg_snapshot_xmin(earlier)` (an index range) plus the same
two visibility tests, and the look-back goes; nothing else here or in the viewer changes.
"""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit.query import AuditQuery, Cursor, find_events
from app.audit.record import audit_events

# pg_snapshot's text form, xmin:xmax:xip,… (xip: the transactions in progress at the time).
_SNAPSHOT = re.compile(r"^\d{1,20}:\d{1,20}:(\d{1,20}(,\d{1,20})*)?$")
MAX_MARK_LENGTH = 4096

# xmin widened to xid8 against the statement's snapshot (h): h - ((h - xmin) mod 2^32). The special
# transaction ids below 3 (bootstrap, frozen) are older than any mark.
_WRITE_XID = (
    "(CASE WHEN xmin::text::bigint < 3 THEN NULL ELSE "
    "(pg_snapshot_xmax(pg_current_snapshot())::text::bigint - "
    "((pg_snapshot_xmax(pg_current_snapshot())::text::bigint - xmin::text::bigint) % 4294967296 "
    "+ 4294967296) % 4294967296)::text::xid8 END)"
)


@dataclass(frozen=True)
class ArrivalMark:
    """A moment in commit order: a Postgres snapshot, in its text form."""

    snapshot: str

    @classmethod
    def parse(cls, text_form: str) -> "ArrivalMark":
        if len(text_form) > MAX_MARK_LENGTH or not _SNAPSHOT.match(text_form):
            raise ValueError("is not a mark this service gave out")
        return cls(text_form)


@asynccontextmanager
async def one_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only REPEATABLE READ transaction: every query in it, and `current_mark`, see the
    same snapshot (a page and the mark its live tail starts from agree exactly)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with conn.begin():
            yield conn


async def current_mark(conn: AsyncConnection) -> ArrivalMark:
    """The snapshot of `conn`'s transaction: in a REPEATABLE READ transaction, the very one its
    queries see, so the rows committed since this mark are exactly those a page read there missed."""
    return ArrivalMark(await conn.scalar(text("SELECT pg_current_snapshot()::text")))


def committed_between(earlier: ArrivalMark, later: ArrivalMark) -> TextClause:
    """Rows whose inserting transaction `later` sees and `earlier` does not."""
    return text(
        f"coalesce(pg_visible_in_snapshot({_WRITE_XID}, CAST(:later_mark AS pg_snapshot)) "
        f"AND NOT pg_visible_in_snapshot({_WRITE_XID}, CAST(:earlier_mark AS pg_snapshot)), false)"
    ).bindparams(earlier_mark=earlier.snapshot, later_mark=later.snapshot)


async def find_arrivals(
    conn: AsyncConnection,
    query: AuditQuery,
    earlier: ArrivalMark,
    later: ArrivalMark,
    *,
    lookback: timedelta,
    now: datetime | None = None,
) -> tuple[list[dict], Cursor | None]:
    """A page of the rows matching `query` committed between the two marks, in `query`'s order
    (keyset pages through `query.after`, as for any page). `later` must not be newer than `conn`'s
    snapshot."""
    horizon = (now or datetime.now(UTC)) - lookback
    since = horizon if query.since is None else max(query.since, horizon)
    # audit_events itself, not the view: arrivals are new rows of the trail (xmin is a table's column).
    query = replace(query, since=since)
    return await find_events(conn, query, committed_between(earlier, later), table=audit_events)
