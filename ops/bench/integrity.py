"""Integrity benchmark: verification and export throughput in rows/s, on fresh private servers.

    .venv/bin/python ops/bench/integrity.py [--events 200000] [--batch 500]

N events (a realistic notification shape) are stored sealed as a consumer stores them (one seal
per batch) over two months, and checkpointed. Then, in the same run:
(a) baseline: streaming every row with the cursor verification uses, JSON decoded, nothing checked;
(b) verify: `datastorage audit verify`'s whole-trail check (app/audit/integrity/verify.py);
(c) export: the verified NDJSON export of every row (proofs, seals, checkpoint), to a file;
(d) verify-export: the offline check of that file with the public key alone.

Target (issue 14): >= 100,000 rows/s verified on the 2-core machine. Prints progress, then one
JSON line.
"""

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, private_servers

from app.audit.identity import Submission
from app.audit.integrity.checkpoints import Checkpointer, published_checkpoints
from app.audit.integrity.export import export_lines, verify_export
from app.audit.integrity.keys import Signer, generate_key_pair
from app.audit.integrity.verify import FETCH_ROWS, ROW_COLUMNS, Window, verify
from app.audit.query import AuditQuery, export_select
from app.audit.store import AuditStore
from app.catalog.store import create_pool
from app.core.db import connect, create_engine
from app.core.settings import Settings
from app.producer import new_audit_event

console = Console(stderr=True)


def make_events(count: int) -> list:
    """Half last month, half this month: verification crosses a partition boundary."""
    now = datetime.now(UTC).replace(microsecond=0)
    last_month = now.replace(day=1) - timedelta(days=10)
    return [
        new_audit_event(
            "notification.sent", "notification", "success",
            service_name="notification-controller", actor_type="controller",
            resource_type="notification", resource_id=f"notif-{n}", correlation_id=f"rem-{n // 20}",
            event_timestamp=(last_month if n < count // 2 else now - timedelta(hours=1)) + timedelta(milliseconds=n),
            event_data={"channel": "email", "recipient": f"user{n % 5000}@example.com", "attempt": 1,
                        "namespace": f"ns-{n % 50}", "reason": "CrashLoopBackOff"},
        )
        for n in range(count)
    ]  # fmt: skip


async def store(url: str, events: list, batch: int, signer: Signer, progress: Progress) -> float:
    pool = await create_pool(url, min_size=1, max_size=2)
    task = progress.add_task("storing sealed", total=len(events))
    started = time.perf_counter()
    try:
        writer = AuditStore(pool, signer)
        for offset in range(0, len(events), batch):
            await writer.insert([Submission(e) for e in events[offset : offset + batch]])
            progress.update(task, completed=offset + batch)
    finally:
        await pool.close()
    return len(events) / (time.perf_counter() - started)


async def baseline(url: str, progress: Progress) -> float:
    conn = await connect(url)
    task = progress.add_task("(a) read rows", total=None)
    try:
        started, rows = time.perf_counter(), 0
        async with conn.transaction():
            async for row in conn.cursor(f"SELECT {ROW_COLUMNS} FROM audit_events", prefetch=FETCH_ROWS):
                orjson.loads(row["event_data"])
                rows += 1
                if rows % 10_000 == 0:
                    progress.advance(task, 10_000)
        return rows / (time.perf_counter() - started)
    finally:
        await conn.close()


async def main(args) -> dict:
    with private_servers("integrity-bench-") as (tmp, postgres, redis_server):
        signer = Signer.from_file(generate_key_pair(tmp / "keys")[0])
        url = await fresh_database(postgres, "bench_integrity", months_ahead=1)
        settings = Settings(database_url=url, redis_url=redis_server.url)
        events = make_events(args.events)
        with Progress(console=console) as progress:
            store_rate = await store(url, events, args.batch, signer, progress)
            pool = await create_pool(url, min_size=1, max_size=1)
            client = aioredis.from_url(redis_server.url)
            await Checkpointer(pool, client, signer, settings).checkpoint_once()
            checkpoints = await published_checkpoints(client)
            await client.aclose()
            await pool.close()

            read_rate = await baseline(url, progress)

            conn = await connect(url)
            task = progress.add_task("(b) verify", total=len(events))
            started = time.perf_counter()
            report = await verify(conn, signer.verifier, checkpoints, Window(),
                                  progress=lambda n: progress.advance(task, n))  # fmt: skip
            verify_seconds = time.perf_counter() - started
            assert report.intact and report.rows == len(events), report.as_json()

            exported = tmp / "export.ndjson"
            task = progress.add_task("(c) export", total=len(events))
            engine = create_engine(url)
            started = time.perf_counter()
            async with engine.connect() as rows_conn:
                result = await rows_conn.stream(export_select(AuditQuery({}, None, None)))
                rows = (row._mapping async for row in result)
                with open(exported, "wb") as file:
                    async for chunk in export_lines(conn, rows, checkpoints[-1], filters={},
                                                    progress=lambda n: progress.advance(task, n)):  # fmt: skip
                        file.write(chunk)
            export_seconds = time.perf_counter() - started
            await engine.dispose()
            await conn.close()

            task = progress.add_task("(d) verify-export", total=len(events))
            started = time.perf_counter()
            with open(exported, "rb") as file:
                check = verify_export(file, signer.verifier, lambda n: progress.advance(task, n))
            verify_export_seconds = time.perf_counter() - started
            export_bytes = exported.stat().st_size
            assert check.intact and check.events == len(events), check.problems[:5]
    verified = len(events) / verify_seconds
    return {
        "events": len(events),
        "seals": report.seals,
        "batch": args.batch,
        "baseline_read_rows_per_s": round(read_rate),
        "verify_rows_per_s": round(verified),
        "verify_vs_read": round(verified / read_rate, 3),
        "target_verify_rows_per_s": 100_000,
        "export_rows_per_s": round(len(events) / export_seconds),
        "export_bytes_per_row": round(export_bytes / len(events)),
        "verify_export_rows_per_s": round(len(events) / verify_export_seconds),
        "store_sealed_rows_per_s": round(store_rate),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="events per seal (a consumer's batch)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
