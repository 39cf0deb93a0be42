"""Viewer benchmark: the correlation page of a remediation of 1,000 events on 5M rows, and the live
tail's costs, against the same data read bare in the same run.

    .venv/bin/python ops/bench/viewer.py [--rows 5000000] [--samples 50]

Loads the rows as ops/bench/read_api.py does (six months, COPY), adds one correlation of 1,000
events (a tree: steps under workflows under a signal, over an hour), starts `datastorage serve`,
then measures:
  * GET /ui/correlations/{id}: the whole HTML page through HTTP (target: under 200 ms), against
    the same 1,000 rows as the API's JSON (`/api/v1/audit-events?correlation_id=…&order=asc`) and
    as bare SQL (the statement `build_select` makes);
  * the page in Chromium (when /usr/bin/chromium is there): navigation to DOMContentLoaded;
  * GET /ui/ (the first page of the list, 100 rows) and one event's page;
  * the live tail: one poll's query (`find_arrivals`, xmin with the look-back) and the same without
    a look-back (every row compared: why the look-back exists), and commit-to-browser latency
    (a row inserted, seen on an open /ui/tail stream).
Prints progress, then one JSON line.
"""

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from read_api import load, percentiles
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, private_servers, start_api, stop_all
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from app.audit.arrivals import current_mark, find_arrivals, one_snapshot
from app.audit.query import AuditQuery, build_select
from app.audit.record import COLUMNS
from app.core.db import connect, create_engine

CORRELATION = "rem-viewer-bench"
EVENTS_IN_CORRELATION = 1000
CHROMIUM = Path("/usr/bin/chromium")


def remediation(start: datetime) -> list[tuple]:
    """1,000 events over an hour: a signal, 9 workflows under it, 110 steps under each."""
    rng = random.Random(5)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(EVENTS_IN_CORRELATION)]
    records = []
    for n, event_id in enumerate(ids):
        parent = None if n == 0 else ids[0] if n <= 9 else ids[1 + (n - 10) % 9]
        at = start + timedelta(seconds=3.6 * n)
        records.append((
            event_id, "workflow.step" if n > 9 else "workflow.started", "workflow",
            rng.choice(("success", "success", "failure", "pending")), at, at.date(),
            f"service-{n % 7}", "v1.0.0", "controller", "ctrl-1", None, "deployment", f"app-{n % 13}", None,
            orjson.dumps({"step": n, "phase": "apply", "detail": "x" * 200}).decode(),
            CORRELATION, parent, None, None, "{}",
        ))
    return records


def bare(query: AuditQuery) -> tuple[str, list]:
    compiled = build_select(query).compile(dialect=asyncpg_dialect.dialect())
    params = compiled.construct_params()
    return str(compiled), [params[name] for name in compiled.positiontup]


def ms(samples: list[float]) -> dict:
    p50, p99 = percentiles(samples)
    return {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}


async def timed_get(client: httpx.AsyncClient, path: str, samples: int, progress: Progress, label: str) -> tuple[dict, int]:
    task = progress.add_task(label, total=samples)
    times, size = [], 0
    for _ in range(5):  # warm: prepared statements, templates, caches
        await client.get(path)
    for _ in range(samples):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text[:500]
        size = len(response.content)
        progress.advance(task)
    return ms(times), size


async def browser_load(url: str, samples: int) -> dict | None:
    if not CHROMIUM.exists():
        return None
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        with tempfile.TemporaryDirectory() as profile:
            context = await driver.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = await context.new_page()
            await page.goto(url)
            loaded = []
            for _ in range(samples):
                await page.goto(url)
                loaded.append(await page.evaluate(
                    "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
            await context.close()
    return ms(loaded)


async def tail_latency(base_url: str, database_url: str, samples: int) -> dict:
    """Commit → the row on an open /ui/tail stream (the service polls every 0.5 s by default)."""
    latencies = []
    conn = await connect(database_url)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client, client.stream(
                "GET", "/ui/tail", params={"correlation_id": "rem-tail-bench"}) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line == "event: ready":
                    break
            for n in range(samples):
                event_id = uuid.uuid4()
                now = datetime.now(UTC)
                values = dict(zip(COLUMNS, (event_id, "bench.tail", "bench", "success", now, now.date(), "bench",
                                            None, "system", None, None, "bench", f"r-{n}", None, "{}",
                                            "rem-tail-bench", None, None, None, "{}")))
                await conn.execute(
                    f"INSERT INTO audit_events ({', '.join(values)}) "
                    f"VALUES ({', '.join(f'${i}' for i in range(1, len(values) + 1))})", *values.values())
                committed = time.perf_counter()
                async for line in lines:
                    if str(event_id) in line:
                        latencies.append((time.perf_counter() - committed) * 1000)
                        break
                await asyncio.sleep(random.uniform(0.05, 0.4))
    finally:
        await conn.close()
    return ms(latencies)


async def arrivals_cost(database_url: str, samples: int) -> dict:
    engine = create_engine(database_url, json_deserializer=orjson.loads)
    query = AuditQuery({}, order="asc", limit=100)
    figures = {}
    try:
        async with one_snapshot(engine) as conn:
            mark = await current_mark(conn)
        for label, lookback, count in (("lookback_1h", timedelta(hours=1), samples),
                                       ("no_lookback", timedelta(days=400), 3)):
            times = []
            for _ in range(count):
                started = time.perf_counter()
                async with one_snapshot(engine) as conn:
                    later = await current_mark(conn)
                    await find_arrivals(conn, query, mark, later, lookback=lookback)
                times.append((time.perf_counter() - started) * 1000)
            figures[label] = ms(times)
    finally:
        await engine.dispose()
    return figures


async def main(args) -> dict:
    console = Console(stderr=True)
    now = datetime.now(UTC)
    with private_servers("viewer-bench-") as (tmp, postgres, redis_server):
        api = None
        try:
            url = await fresh_database(postgres, "bench_viewer")
            with Progress(console=console) as progress:
                await load(url, args.rows, now, progress)
                conn = await connect(url)
                try:
                    records = remediation(now - timedelta(days=3))
                    await conn.copy_records_to_table("audit_events", records=records, columns=COLUMNS)
                    await conn.execute("ANALYZE audit_events")
                    total = await conn.fetchval("SELECT count(*) FROM audit_events")
                finally:
                    await conn.close()
                api, base_url = start_api(url, redis_server.url, tmp / "api.log")
                latest = (now + timedelta(hours=1)).date()
                async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                    page, page_bytes = await timed_get(client, f"/ui/correlations/{CORRELATION}", args.samples,
                                                       progress, "correlation page")
                    api_json, json_bytes = await timed_get(
                        client, f"/api/v1/audit-events?correlation_id={CORRELATION}&order=asc&limit=1000",
                        args.samples, progress, "the same rows as JSON")
                    first_page, _ = await timed_get(client, "/ui/", args.samples, progress, "event list")
                    event_page, _ = await timed_get(client, f"/ui/events/{records[500][0]}", args.samples,
                                                    progress, "event page")
                conn = await connect(url)
                try:
                    sql, values = bare(AuditQuery({"correlation_id": CORRELATION}, order="asc", limit=1000,
                                                  latest_event_date=latest))
                    sql_times = []
                    for n in range(args.samples + 5):
                        started = time.perf_counter()
                        rows = await conn.fetch(sql, *values)
                        if n >= 5:
                            sql_times.append((time.perf_counter() - started) * 1000)
                    assert len(rows) == EVENTS_IN_CORRELATION
                finally:
                    await conn.close()
                console.print("browser, tail latency, arrivals query…")
                browser = await browser_load(f"{base_url}/ui/correlations/{CORRELATION}", 10)
                latency = await tail_latency(base_url, url, 20)
                arrivals = await arrivals_cost(url, args.samples)
        finally:
            stop_all([api] if api else [])
    return {
        "rows": total, "correlation_events": EVENTS_IN_CORRELATION, "samples": args.samples,
        "correlation_page": {**page, "bytes": page_bytes, "under_200ms": page["p99_ms"] < 200},
        "correlation_json_api": {**api_json, "bytes": json_bytes},
        "correlation_bare_sql": ms(sql_times),
        "correlation_page_in_chromium_dom_content_loaded": browser,
        "event_list_page": first_page,
        "event_page": event_page,
        "tail_commit_to_stream": latency,
        "tail_poll_query": arrivals,
        "median_page_over_json": round(page["p50_ms"] / api_json["p50_ms"], 2),
        "median_page_over_sql": round(page["p50_ms"] / statistics.median(sql_times), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--samples", type=int, default=50)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
