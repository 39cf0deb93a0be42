"""Monthly partitions of `audit_events`: which exist, and creating the missing ones.

Creation goes through the SQL function `audit_events_ensure_partition` (schema/001), which holds
the advisory lock and checks `pg_class`; call it in a transaction of its own, never inside the
transaction that inserts, so the exclusive lock it takes is held only for the DDL.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import asyncpg

from app.core.upkeep import PARTITIONS_ENSURE, record_success


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def upcoming_months(today: date, months_ahead: int) -> list[date]:
    """The current month and the `months_ahead` after it, as first days."""
    return [add_months(month_start(today), n) for n in range(months_ahead + 1)]


async def ensure_partitions(conn: asyncpg.Connection, days: Iterable[date]) -> list[str]:
    """Creates the partitions holding `days` where missing; returns their names, in month order."""
    months = sorted({month_start(day) for day in days})
    names = []
    for month in months:
        names.append(await conn.fetchval("SELECT audit_events_ensure_partition($1)", month))
    return names


async def ensure_upcoming_partitions(conn: asyncpg.Connection, months_ahead: int) -> list[str]:
    """The current month (by the database's clock, in UTC) and the `months_ahead` after it."""
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    names = await ensure_partitions(conn, upcoming_months(today, months_ahead))
    # Whoever ensured them (the CronJob, migrate, `run`): the alert watches that someone did.
    await record_success(conn, PARTITIONS_ENSURE, months_ahead=months_ahead, last=names[-1] if names else None)
    return names


@dataclass(frozen=True)
class Partition:
    name: str
    month: date
    rows: int
    bytes: int


async def list_partitions(conn: asyncpg.Connection, *, exact_counts: bool = False) -> list[Partition]:
    """Every partition with its size; rows are the planner's estimate unless `exact_counts`."""
    records = await conn.fetch(
        """
        SELECT c.oid::regclass::text AS name,
               c.relname,
               pg_total_relation_size(c.oid) AS bytes,
               greatest(c.reltuples, 0)::bigint AS estimated_rows
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass
        ORDER BY c.relname
        """
    )
    partitions = []
    for record in records:
        rows = record["estimated_rows"]
        if exact_counts:
            # The name comes from pg_class and is quoted by the regclass cast: no user input here.
            rows = await conn.fetchval(f"SELECT count(*) FROM {record['name']}")
        year, month = record["relname"].removeprefix("audit_events_").split("_")
        partitions.append(Partition(record["name"], date(int(year), int(month), 1), rows, record["bytes"]))
    return partitions
