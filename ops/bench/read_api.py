"""Read-side benchmark: audit queries through HTTP against the same SQL run bare, on 5M rows.

    .venv/bin/python ops/bench/read_api.py [--rows 5000000] [--samples 400]

Loads the rows with COPY across six months into a fresh private Postgres, starts
`datastorage serve`, then measures, query by query and in the same run:
  * `GET /api/v1/audit-events?correlation_id=…` (a remediation's events) and
  * `GET /api/v1/audit-events?since=24h&event_type=…` (recent events of a type),
each through HTTP (one keep-alive client, sequential requests) and as the statement the service
builds (`app.audit_query.build_select`) run bare with asyncpg. Prints progress, then one JSON line.
"""

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, private_servers, start_api, stop_all
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from app.audit.partitions import ensure_partitions
from app.audit.query import AuditQuery, build_select
from app.audit.record import COLUMNS
from app.core.db import connect

EVENT_TYPES = [f"{area}.{verb}" for area in ("notification", "workflow", "ai.analysis", "gateway")
               for verb in ("started", "completed", "failed", "retried", "skipped")]
SERVICES = [f"service-{n}" for n in range(10)]
EVENTS_PER_CORRELATION = 5
DAYS = 182


def rows(count: int, now: datetime, seed: int = 7):
    """Six months of events, newest last; each correlation's events minutes apart."""
    rng = random.Random(seed)
    start = now - timedelta(days=DAYS)
    step = (now - start) / count
    for n in range(count):
        timestamp = start + step * n
        yield (
            uuid.UUID(int=rng.getrandbits(128)), rng.choice(EVENT_TYPES), "workflow",
            rng.choice(("success", "success", "success", "failure", "pending")),
            timestamp, timestamp.date(), rng.choice(SERVICES), "v1.0.0", "controller",
            f"ctrl-{n % 100}", None, "workflow", f"wf-{n // EVENTS_PER_CORRELATION}", None,
            '{"phase": "apply", "attempt": 1, "namespace": "prod"}',
            f"rem-{n // EVENTS_PER_CORRELATION}", None, None, None, "{}",
        )


async def load(url: str, count: int, now: datetime, progress: Progress) -> None:
    conn = await connect(url)
    try:
        await ensure_partitions(conn, [(now - timedelta(days=d)).date() for d in range(0, DAYS + 31, 28)])
        task = progress.add_task("COPY rows", total=count)
        chunk, generator = 100_000, rows(count, now)
        for _ in range(0, count, chunk):
            records = [row for _, row in zip(range(chunk), generator)]
            await conn.copy_records_to_table("audit_events", records=records, columns=COLUMNS)
            progress.advance(task, len(records))
        await conn.execute("ANALYZE audit_events")
    finally:
        await conn.close()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bare(query: AuditQuery) -> tuple[str, list]:
    """The statement the service runs for `query`, as SQL text and positional parameters."""
    compiled = build_select(query).compile(dialect=asyncpg_dialect.dialect())
    params = compiled.construct_params()
    return str(compiled), [params[name] for name in compiled.positiontup]


async def measure(base_url: str, url: str, cases: list[tuple[dict, AuditQuery]], label: str,
                  progress: Progress) -> dict:
    conn = await connect(url)
    http_ms, sql_ms, rows_seen = [], [], 0
    task = progress.add_task(label, total=len(cases))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            for params, query in cases[:20]:  # warm both paths: caches, prepared statements
                await client.get("/api/v1/audit-events", params=params)
                sql, args = bare(query)
                await conn.fetch(sql, *args)
            for params, query in cases:
                started = time.perf_counter()
                response = await client.get("/api/v1/audit-events", params=params)
                http_ms.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
                rows_seen += len(response.json()["data"])
                sql, args = bare(query)
                started = time.perf_counter()
                await conn.fetch(sql, *args)
                sql_ms.append((time.perf_counter() - started) * 1000)
                progress.advance(task)
    finally:
        await conn.close()
    (http_p50, http_p99), (sql_p50, sql_p99) = percentiles(http_ms), percentiles(sql_ms)
    return {"http_p50_ms": round(http_p50, 2), "http_p99_ms": round(http_p99, 2),
            "sql_p50_ms": round(sql_p50, 2), "sql_p99_ms": round(sql_p99, 2),
            "http_over_sql_p50": round(http_p50 / sql_p50, 2),
            "rows_per_request": round(rows_seen / len(cases), 1)}


async def main(args) -> dict:
    console = Console(stderr=True)
    now = datetime.now(UTC)
    rng = random.Random(11)
    with private_servers("read-bench-") as (tmp, postgres, redis_server):
        api = None
        try:
            url = await fresh_database(postgres, "bench_read")
            with Progress(console=console) as progress:
                started = time.perf_counter()
                await load(url, args.rows, now, progress)
                load_seconds = time.perf_counter() - started
                api, base_url = start_api(url, redis_server.url, tmp / "api.log")
                latest = (now + timedelta(hours=1)).date()
                correlations = [f"rem-{rng.randrange(args.rows // EVENTS_PER_CORRELATION)}"
                                for _ in range(args.samples)]
                by_correlation = await measure(base_url, url, [
                    ({"correlation_id": c}, AuditQuery({"correlation_id": c}, latest_event_date=latest))
                    for c in correlations], "correlation_id=…", progress)
                types = [rng.choice(EVENT_TYPES) for _ in range(args.samples)]
                recent = await measure(base_url, url, [
                    ({"since": "24h", "event_type": t},
                     AuditQuery({"event_type": t}, since=datetime.now(UTC) - timedelta(hours=24),
                                latest_event_date=latest))
                    for t in types], "since=24h&event_type=…", progress)
        finally:
            stop_all([api] if api else [])
    return {
        "rows": args.rows, "load_rows_per_s": round(args.rows / load_seconds), "samples": args.samples,
        **{f"correlation_{k}": v for k, v in by_correlation.items()},
        **{f"recent_type_{k}": v for k, v in recent.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--samples", type=int, default=400)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
