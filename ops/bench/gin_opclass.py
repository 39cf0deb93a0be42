"""What a GIN index on audit_events.event_data costs at write time, by operator class.

Loads the same N prepared rows with COPY into three freshly migrated databases on one private
embedded Postgres: without a GIN index on event_data, with `jsonb_ops` (the default) and with
`jsonb_path_ops` (the schema's choice), and prints rows/s and the ratio to no index.

    .venv/bin/python ops/bench/gin_opclass.py [--rows 200000] [--rounds 2]
"""

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.progress import Progress

from app.core.db import connect, create_database
from app.core.migrations import migrate_database
from app.core.settings import PROJECT_ROOT
from app.local.embedded import EmbeddedPostgres

VARIANTS = {
    "no_gin": "DROP INDEX idx_audit_events_event_data",
    "jsonb_ops": "DROP INDEX idx_audit_events_event_data; "
                 "CREATE INDEX idx_audit_events_event_data ON audit_events USING GIN (event_data)",
    "jsonb_path_ops": None,  # as migrated
}

COLUMNS = [
    "event_id", "event_type", "event_category", "event_outcome", "event_timestamp", "event_date",
    "service_name", "actor_type", "actor_id", "resource_type", "resource_id", "event_data",
    "correlation_id",
]


def sample_rows(count: int) -> list[tuple]:
    """Rows shaped like the platform's events: a few string and number fields in event_data."""
    rng = random.Random(42)
    now = datetime.now(UTC)
    rows = []
    for n in range(count):
        timestamp = now - timedelta(seconds=rng.randint(0, 3600))
        event_data = {
            "channel": rng.choice(["email", "slack", "pagerduty"]),
            "recipient": f"user{rng.randint(1, 5000)}@example.com",
            "attempt": rng.randint(1, 5),
            "namespace": f"ns-{rng.randint(1, 50)}",
            "pod": f"pod-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}",
            "reason": rng.choice(["OOMKilled", "CrashLoopBackOff", "ImagePullBackOff", "Evicted"]),
            "duration_ms": rng.randint(1, 100000),
        }
        rows.append((
            uuid.UUID(int=rng.getrandbits(128)), "notification.sent", "notification", "success",
            timestamp, timestamp.date(), "notification-controller", "service", "notifier",
            "notification", f"notif-{n}", json.dumps(event_data), f"rem-{n // 10}",
        ))
    return rows


async def copy_rate(url: str, rows: list[tuple], batch: int = 5000) -> float:
    conn = await connect(url)
    try:
        start = time.perf_counter()
        for offset in range(0, len(rows), batch):
            await conn.copy_records_to_table(
                "audit_events", records=rows[offset:offset + batch], columns=COLUMNS
            )
        return len(rows) / (time.perf_counter() - start)
    finally:
        await conn.close()


async def main(rows_count: int, rounds: int) -> dict:
    rows = sample_rows(rows_count)
    with tempfile.TemporaryDirectory(prefix="gin-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pgdata", delete_on_close=True)
        postgres.start()
        try:
            rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
            with Progress() as progress:
                task = progress.add_task("COPY", total=rounds * len(VARIANTS))
                for round_number in range(rounds):
                    for name, ddl in VARIANTS.items():
                        url = await create_database(postgres.url(), f"gin_{name}_{round_number}")
                        await migrate_database(url, PROJECT_ROOT / "schema", months_ahead=0)
                        if ddl:
                            conn = await connect(url)
                            await conn.execute(ddl)
                            await conn.close()
                        rates[name].append(await copy_rate(url, rows))
                        progress.advance(task)
        finally:
            postgres.close()
    best = {name: max(values) for name, values in rates.items()}
    return {
        "rows": rows_count,
        "rounds": rounds,
        **{f"{name}_rows_per_s": round(rate) for name, rate in best.items()},
        **{f"{name}_ratio": round(rate / best["no_gin"], 3) for name, rate in best.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.rounds))))
