"""WAL written per stored audit event: what a read replica must replay, and what turns the
replica lag bound (DATASTORAGE_READ_REPLICA_MAX_LAG_BYTES) into seconds at a given rate.

    .venv/bin/python ops/bench/wal_per_event.py [--events 100000]

On a fresh private Postgres with the service's schema: the ingest benchmark's events written the
two ways the service writes them, COPY (a clean batch) and INSERT … ON CONFLICT DO NOTHING (a batch
holding a redelivery), in batches of 500 (the consumer's default); WAL bytes from
pg_current_wal_lsn() before and after, and rows/s. Prints progress, then one JSON line.
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from app.audit.record import COLUMNS, INSERT_BATCH, row_values
from app.core.db import connect, create_database
from app.core.migrations import migrate_database
from app.core.settings import PROJECT_ROOT
from app.local.embedded import EmbeddedPostgres
from app.producer import new_audit_event

console = Console(stderr=True)
BATCH = 500


def make_events(count: int) -> list:
    # The ingest benchmark's event (ops/bench/ingest.py).
    return [
        new_audit_event(
            "notification.sent", "notification", "success",
            service_name="notification-controller", actor_type="controller",
            resource_type="notification", resource_id=f"notif-{n}", correlation_id=f"rem-{n // 20}",
            event_data={"channel": "email", "recipient": f"user{n % 5000}@example.com", "attempt": 1,
                        "namespace": f"ns-{n % 50}", "reason": "CrashLoopBackOff"},
        )
        for n in range(count)
    ]


async def measure(url: str, records: list, how: str, progress: Progress) -> dict:
    conn = await connect(url)
    try:
        await conn.execute("CHECKPOINT")
        task = progress.add_task(how, total=len(records))
        start_lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
        started = time.perf_counter()
        for offset in range(0, len(records), BATCH):
            batch = records[offset:offset + BATCH]
            if how == "copy":
                await conn.copy_records_to_table("audit_events", records=batch, columns=COLUMNS)
            else:
                await conn.execute(INSERT_BATCH, *zip(*batch, strict=True))  # the service's own statement
            progress.update(task, completed=offset + len(batch))
        seconds = time.perf_counter() - started
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", start_lsn)
        table_bytes = await conn.fetchval("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                                          "WHERE inhparent = 'audit_events'::regclass")
    finally:
        await conn.close()
    return {
        "wal_bytes_per_event": round(float(wal) / len(records)),
        "stored_bytes_per_event": round(float(table_bytes) / len(records)),
        "rows_per_s": round(len(records) / seconds),
    }


async def main(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="wal-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pgdata", delete_on_close=True)
        postgres.start()
        try:
            records = [row_values(event) for event in make_events(args.events)]
            figures = {}
            with Progress(console=console) as progress:
                for how in ("copy", "insert_on_conflict"):
                    url = await create_database(postgres.url(), f"wal_{how}")
                    await migrate_database(url, PROJECT_ROOT / "schema", months_ahead=1)
                    figures[how] = await measure(url, records, how, progress)
        finally:
            postgres.close()
    return {"events": args.events, "batch": BATCH, **figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
