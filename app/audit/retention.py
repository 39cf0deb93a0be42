"""Retention: dropping whole monthly partitions past retention, never losing a held event.

The policy (issue 15): events are kept `DATASTORAGE_RETENTION_DAYS` (2555, about 7 years), or the
days `DATASTORAGE_RETENTION_CATEGORY_DAYS` gives their category. A month is past retention when its
last day is older than every retention that applies to a category present in it (an empty month:
the default retention). The current and future months never are. `partitions drop --older-than`
is the manual form: another rule for which months are due, the same everything else.

Dropping one month is one transaction:
1. the month's partition is locked against inserts, the holds table against new holds;
2. the rows of correlations under a legal hold are copied into their archive partition
   (`audit_events_held`, one partition per correlation; schema/008), values, seal ids and salts
   as they are, so they keep verifying and the read side (view `audit_events_all`) keeps
   returning them;
3. the other rows' ids leave `audit_event_ids` (an id is claimed only while its row exists);
4. the partition is detached, a retention seal is appended to the integrity chain
   (`kind: retention`, details `{"month": "YYYY-MM-01", ...}`: verification reads the month's
   missing rows as dropped, docs/INTEGRITY.md), and the partition is dropped.
The seal comes after the DETACH on purpose: a consumer holds its insert lock on audit_events
while it waits for the chain lock, so taking the chain lock first and then waiting for
audit_events could deadlock.

An archive partition whose hold was released is dropped the same way once every row in it is
past retention. Every run (not a dry run) is recorded in `audit_retention_runs`; the pods export
the newest success as a metric, and an alert fires when there was none for 48 hours.
"""

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import structlog

from app.audit.integrity.keys import Signer
from app.audit.integrity.seals import next_seal_id, seal_rows
from app.audit.partitions import add_months, list_partitions, month_start
from app.audit.record import STORED_COLUMNS
from app.core import metrics
from app.core.settings import Settings, parse_category_days

log = structlog.get_logger(__name__)

# A session-level advisory lock: one retention run (or partition drop) at a time, whichever pod,
# CronJob or operator starts it.
RETENTION_LOCK_ID = 0x72657465_6E74696F  # "retentio"
# How long a drop waits for a lock (the DETACH waits for the inserts and reads in progress on
# audit_events, and new ones queue behind it meanwhile: keep it short), and how often a month is
# tried again when the wait runs out, before the run fails and the next run tries again.
LOCK_TIMEOUT = "3s"
LOCK_ATTEMPTS = 3
LOCK_RETRY_PAUSE_S = 5.0
_COLUMNS = ", ".join(STORED_COLUMNS)

T = TypeVar("T")
# Whether a month holding these categories is due: (first day of the month, categories) → bool.
Due = Callable[[date, frozenset[str]], bool]


class RetentionRefused(Exception):
    """The run may not go ahead as asked (a retention under the floor, a sealed trail and no key)."""


class RetentionFailed(Exception):
    """A run stopped part-way; `done` is what it dropped before (dropped for good, and sealed)."""

    def __init__(self, done: "RetentionPlan", error: Exception):
        super().__init__(f"retention stopped after {done.partitions} partition(s): {error!r}")
        self.done = done
        self.error = error


class RetentionBusy(Exception):
    """Another retention run holds the lock."""


@dataclass(frozen=True)
class RetentionPolicy:
    default_days: int
    category_days: Mapping[str, int] = field(default_factory=dict)
    floor_days: int = 365

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetentionPolicy":
        return cls(
            settings.retention_days,
            parse_category_days(settings.retention_category_days),
            settings.retention_floor_days,
        )

    def below_floor(self) -> list[str]:
        """Each configured retention shorter than the floor, described."""
        found = [f"DATASTORAGE_RETENTION_DAYS={self.default_days}"] if self.default_days < self.floor_days else []
        found += [f"{c}={d}" for c, d in sorted(self.category_days.items()) if d < self.floor_days]
        return found

    def days_for(self, categories: frozenset[str]) -> int:
        if not categories:
            return self.default_days
        return max(self.category_days.get(category, self.default_days) for category in categories)

    def due(self, today: date) -> Due:
        def past_retention(month: date, categories: frozenset[str]) -> bool:
            last_day = add_months(month, 1) - timedelta(days=1)
            return month < month_start(today) and last_day < today - timedelta(days=self.days_for(categories))

        return past_retention


def older_than_due(months: int, today: date) -> Due:
    """`partitions drop --older-than Nmo`: months that ended more than N months ago."""
    if months < 1:
        raise ValueError("retention must keep at least the current month (older-than of 1mo or more)")
    cutoff = add_months(month_start(today), -months)
    return lambda month, categories: month < cutoff


def older_than_days(months: int, today: date) -> int:
    """The shortest retention `--older-than Nmo` amounts to, in days (for the floor)."""
    return (today - add_months(month_start(today), -months)).days


@dataclass
class MonthDrop:
    partition: str
    month: date
    categories: list[str]
    rows: int
    held_rows: int
    held_correlations: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "month": self.month.isoformat(),
            "categories": self.categories,
            "rows_dropped": self.rows - self.held_rows,
            "rows_held": self.held_rows,
            "held_correlations": self.held_correlations,
        }


@dataclass
class ArchiveDrop:
    """The archive partition of a released hold, past retention."""

    partition: str
    correlation_id: str
    rows: int
    newest: date
    categories: list[str]
    rows_by_month: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "correlation_id": self.correlation_id,
            "rows_dropped": self.rows,
            "months": self.rows_by_month,
        }


@dataclass
class RetentionPlan:
    months: list[MonthDrop] = field(default_factory=list)
    archives: list[ArchiveDrop] = field(default_factory=list)

    @property
    def partitions(self) -> int:
        return len(self.months) + len(self.archives)

    @property
    def rows_dropped(self) -> int:
        return sum(m.rows - m.held_rows for m in self.months) + sum(a.rows for a in self.archives)

    @property
    def rows_archived(self) -> int:
        return sum(m.held_rows for m in self.months)

    def as_json(self) -> dict[str, Any]:
        return {
            "partitions_dropped": self.partitions,
            "rows_dropped": self.rows_dropped,
            "rows_archived": self.rows_archived,
            "months": [m.as_json() for m in self.months],
            "archives": [a.as_json() for a in self.archives],
        }


async def today_utc(conn: asyncpg.Connection) -> date:
    """Today by the database's clock, in UTC (the clock partitions are made by)."""
    today: date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return today


async def plan(conn: asyncpg.Connection, due: Due, today: date) -> RetentionPlan:
    """What a run would drop now: months past retention, and released holds' archives."""
    found = RetentionPlan()
    for partition in await list_partitions(conn):
        if partition.month >= month_start(today):
            continue  # never the current or a future month, whatever the rule says
        # Categories first (a probe per category): the rows are counted only in a month that is due.
        if due(partition.month, frozenset(await _categories(conn, partition.name))):
            found.months.append(await _month(conn, partition.name, partition.month))
    for archive in await _released_archives(conn):
        if due(month_start(archive.newest), frozenset(archive.categories)):
            found.archives.append(archive)
    return found


async def apply(
    conn: asyncpg.Connection, due: Due, today: date, signer: Signer | None, *, command: str, actor: str
) -> RetentionPlan:
    """Drops what is due, month by month (each in its own transaction) and records the run.

    Raises RetentionBusy when another run is under way, RetentionRefused when the trail is
    sealed and no signing key is given (a drop without its retention seal would read as
    tampering). A failure part-way is recorded as a failed run and raised as RetentionFailed;
    what was dropped stays dropped."""
    if signer is None and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM audit_seals)"):
        raise RetentionRefused(
            "the audit trail is sealed: retention records each drop in the chain and needs the signing key "
            "(DATASTORAGE_AUDIT_SIGNING_KEY_FILE)"
        )
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID):
        raise RetentionBusy("another retention run (or partition drop) is under way")
    started = datetime.now(UTC)
    done = RetentionPlan()
    try:
        todo = await plan(conn, due, today)
        for month in todo.months:
            dropped = await _with_lock_retries(functools.partial(_drop_month, conn, month, due, signer))
            if dropped is not None:
                done.months.append(dropped)
        for archive in todo.archives:
            gone = await _with_lock_retries(functools.partial(_drop_archive, conn, archive, due, signer))
            if gone is not None:
                done.archives.append(gone)
    except BaseException as error:
        # Recorded when the connection still works; the error that stopped the run is what is raised.
        with contextlib.suppress(Exception):
            await _record_run(conn, command, actor, started, done, succeeded=False, error=repr(error))
        if isinstance(error, Exception):
            raise RetentionFailed(done, error) from error
        raise
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)
    await _record_run(conn, command, actor, started, done, succeeded=True)
    return done


async def _with_lock_retries(drop: Callable[[], Awaitable[T]]) -> T:
    """Runs one drop's transaction, again after a pause when a lock was not granted in time (55P03)."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return await drop()
        except asyncpg.LockNotAvailableError:
            if attempt == LOCK_ATTEMPTS:
                raise
            log.warning("retention_lock_not_granted", attempt=attempt, timeout=LOCK_TIMEOUT)
            await asyncio.sleep(LOCK_RETRY_PAUSE_S)
    raise AssertionError("unreachable")


async def _month(conn: asyncpg.Connection, name: str, month: date) -> MonthDrop:
    # Partition names come from pg_class, quoted by the regclass cast: no user input in this SQL.
    categories = await _categories(conn, name)
    held = await conn.fetch(
        f"SELECT e.correlation_id, count(*) AS n FROM {name} e "
        "JOIN audit_legal_holds l ON l.correlation_id = e.correlation_id AND l.released_at IS NULL "
        "GROUP BY e.correlation_id ORDER BY e.correlation_id"
    )
    rows = await conn.fetchval(f"SELECT count(*) FROM {name}")
    return MonthDrop(name, month, categories, rows, sum(r["n"] for r in held), [r["correlation_id"] for r in held])


async def _categories(conn: asyncpg.Connection, name: str) -> list[str]:
    """The distinct categories of a partition, by skipping through its category index (a loose
    index scan: one probe per category, not a read of every row)."""
    records = await conn.fetch(
        f"""
        WITH RECURSIVE c AS (
            (SELECT event_category FROM {name} ORDER BY event_category LIMIT 1)
            UNION ALL
            SELECT (SELECT e.event_category FROM {name} e WHERE e.event_category > c.event_category
                    ORDER BY e.event_category LIMIT 1)
            FROM c WHERE c.event_category IS NOT NULL
        )
        SELECT event_category FROM c WHERE event_category IS NOT NULL
        """
    )
    return [r["event_category"] for r in records]


async def _drop_month(
    conn: asyncpg.Connection, planned: MonthDrop, due: Due, signer: Signer | None
) -> MonthDrop | None:
    name = planned.partition
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # No row arrives in the month, and no hold is placed or released, until this commits.
        await conn.execute(f"LOCK TABLE {name} IN SHARE MODE")
        await conn.execute("LOCK TABLE audit_legal_holds IN SHARE MODE")
        month = await _month(conn, name, planned.month)
        if not due(month.month, frozenset(month.categories)):
            return None  # a late event of a longer-kept category arrived since the plan
        held = month.held_correlations
        for correlation_id in held:
            await conn.fetchval("SELECT audit_events_held_ensure_partition($1)", correlation_id)
        if held:
            await conn.execute(
                f"INSERT INTO audit_events_held ({_COLUMNS}) SELECT {_COLUMNS} FROM {name} "
                "WHERE correlation_id = ANY($1::text[])",
                held,
            )
        await conn.execute(
            f"DELETE FROM audit_event_ids i USING {name} e WHERE i.event_id = e.event_id "
            "AND (e.correlation_id IS NULL OR NOT e.correlation_id = ANY($1::text[]))",
            held,
        )
        await conn.execute(f"ALTER TABLE audit_events DETACH PARTITION {name}")
        if signer is not None:
            details = {"month": month.month.isoformat(), **month.as_json()}
            await seal_rows(conn, signer, await next_seal_id(conn), [], held, kind="retention", details=details)
        await conn.execute(f"DROP TABLE {name}")
    return month


async def _released_archives(conn: asyncpg.Connection, correlation_id: str | None = None) -> list[ArchiveDrop]:
    records = await conn.fetch(
        """
        SELECT h.tableoid::regclass::text AS partition, h.correlation_id, count(*) AS rows,
               max(h.event_date) AS newest, array_agg(DISTINCT h.event_category) AS categories
        FROM audit_events_held h
        WHERE ($1::text IS NULL OR h.correlation_id = $1)
          AND NOT EXISTS (SELECT 1 FROM audit_legal_holds l
                          WHERE l.correlation_id = h.correlation_id AND l.released_at IS NULL)
        GROUP BY 1, 2 ORDER BY 2
        """,
        correlation_id,
    )
    return [
        ArchiveDrop(r["partition"], r["correlation_id"], r["rows"], r["newest"], sorted(r["categories"]))
        for r in records
    ]


async def _drop_archive(
    conn: asyncpg.Connection, planned: ArchiveDrop, due: Due, signer: Signer | None
) -> ArchiveDrop | None:
    name = planned.partition
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("LOCK TABLE audit_legal_holds IN SHARE MODE")
        found = await _released_archives(conn, planned.correlation_id)
        archive = found[0] if found else None
        if archive is None or not due(month_start(archive.newest), frozenset(archive.categories)):
            return None  # held again since the plan
        archive.rows_by_month = {
            r["month"].isoformat(): r["n"]
            for r in await conn.fetch(
                f"SELECT date_trunc('month', event_date)::date AS month, count(*) AS n FROM {name} "
                "GROUP BY 1 ORDER BY 1"
            )
        }
        await conn.execute(f"DELETE FROM audit_event_ids i USING {name} e WHERE i.event_id = e.event_id")
        await conn.execute(f"ALTER TABLE audit_events_held DETACH PARTITION {name}")
        if signer is not None:
            details = {"held_partition": name, **archive.as_json()}
            await seal_rows(
                conn, signer, await next_seal_id(conn), [], [archive.correlation_id], kind="retention", details=details
            )
        await conn.execute(f"DROP TABLE {name}")
    return archive


async def _record_run(
    conn: asyncpg.Connection,
    command: str,
    actor: str,
    started: datetime,
    done: RetentionPlan,
    *,
    succeeded: bool,
    error: str | None = None,
) -> None:
    details = done.as_json() | ({"error": error} if error else {})
    await conn.execute(
        "INSERT INTO audit_retention_runs (command, actor, started_at, finished_at, succeeded, partitions_dropped, "
        "rows_dropped, rows_archived, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
        command, actor[:255], started, datetime.now(UTC), succeeded, done.partitions, done.rows_dropped,
        done.rows_archived, json.dumps(details),
    )  # fmt: skip


@dataclass(frozen=True)
class RetentionFigures:
    """What the pods export: the newest successful run of the policy, and totals dropped."""

    last_success: datetime | None
    partitions_dropped: int
    rows_dropped: int


async def retention_figures(conn: asyncpg.Connection) -> RetentionFigures:
    record = await conn.fetchrow(
        "SELECT max(finished_at) FILTER (WHERE succeeded AND command = 'retention apply') AS last_success, "
        "coalesce(sum(partitions_dropped), 0) AS partitions, coalesce(sum(rows_dropped), 0) AS rows "
        "FROM audit_retention_runs"
    )
    return RetentionFigures(record["last_success"], int(record["partitions"]), int(record["rows"]))


async def export_figures(pool: asyncpg.Pool, stop: asyncio.Event, interval_s: float = 60.0) -> None:
    """Keeps the retention gauges of this pod current from the database (any pod may have run
    retention, or a CronJob that is gone by now: the database is where the runs are)."""
    while True:
        try:
            async with pool.acquire() as conn:
                figures = await retention_figures(conn)
            metrics.RETENTION_LAST_SUCCESS.set(figures.last_success.timestamp() if figures.last_success else 0)
            metrics.RETENTION_PARTITIONS_DROPPED.set(figures.partitions_dropped)
            metrics.RETENTION_ROWS_DROPPED.set(figures.rows_dropped)
        except Exception as error:  # noqa: BLE001 - Postgres away, schema not migrated: next time
            log.debug("retention_figures_unavailable", error=repr(error))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
