"""Load and soak: the whole service for minutes under the plan's mixed workload (docs/PLAN.md).

    .venv/bin/python ops/bench/soak.py [--seconds 600] [--rate 2000] [--batch 100] [--search-share 0.2]

On fresh private servers: `datastorage serve` and two `datastorage consume`, the project's test
catalog imported. Open-loop load through HTTP: audit events POSTed in batches of --batch at --rate
events/s (30% of the requests), and reads (70%): audit queries and, for --search-share of the
reads, playbook searches. Every 10 s it samples the RSS of each process. At the end it waits for
every acknowledged event to be stored and prints p50/p99 per kind of request, errors, events
lost and duplicated, and each process's RSS first against last, as one JSON line.
"""

import argparse
import asyncio
import json
import random
import subprocess
import time

import httpx
from memory import rss_mib
from rich.console import Console
from rich.progress import Progress
from service import DATASTORAGE, fresh_database, import_catalog_file, private_servers, service_env, start_api, stop_all

from app.core.db import connect

QUERIES = ["pod keeps getting OOMKilled", "node disk almost full", "certificate expired on ingress",
           "crashloop after config change", "queue backlog growing"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else 0.0


def event_body(n: int) -> dict:
    return {"event_type": "workflow.step", "event_category": "workflow", "event_outcome": "success",
            "service_name": "soak", "actor_type": "controller", "resource_type": "workflow",
            "resource_id": f"wf-{n}", "correlation_id": f"rem-{n // 50}", "event_data": {"n": n}}


async def drive(base_url: str, seconds: float, rate: int, batch: int, search_share: float,
                samples: dict, processes: dict, progress: Progress) -> dict:
    write_interval = batch / rate  # one POST of `batch` events
    reads_per_write = 7 / 3
    latencies = {"write": [], "query": [], "search": []}
    errors = {"write": 0, "query": 0, "search": 0}
    acknowledged = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    in_flight = asyncio.Semaphore(64)
    rng = random.Random(1)
    tasks = set()

    async def request(kind: str, client: httpx.AsyncClient, method: str, url: str, **kwargs) -> None:
        nonlocal acknowledged
        async with in_flight:
            started = time.perf_counter()
            try:
                response = await client.request(method, url, **kwargs)
                ok = response.status_code < 400
                if kind == "write" and ok:
                    acknowledged += batch
            except httpx.HTTPError:
                ok = False
            latencies[kind].append((time.perf_counter() - started) * 1000)
            if not ok:
                errors[kind] += 1

    task = progress.add_task("soak", total=seconds)
    started = time.monotonic()
    next_sample = started + 10  # after the warm-up: first against last is about steady state
    n = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        writes = 0
        while (elapsed := time.monotonic() - started) < seconds:
            if time.monotonic() >= next_sample:
                for name, process in processes.items():
                    samples.setdefault(name, []).append(round(rss_mib(process.pid), 1))
                next_sample += 10
                progress.update(task, completed=elapsed)
            body = [event_body(n + i) for i in range(batch)]
            n += batch
            spawn = [("write", "POST", "/api/v1/audit-events", {"json": body})]
            for _ in range(int(reads_per_write) + (rng.random() < reads_per_write % 1)):
                if rng.random() < search_share:
                    spawn.append(("search", "GET", "/api/v1/playbooks/search", {"params": {"query": rng.choice(QUERIES)}}))
                else:
                    params = ({"correlation_id": f"rem-{rng.randrange(max(1, n // 50))}", "order": "asc"}
                              if rng.random() < 0.5 else {"since": "15m", "limit": 50})
                    spawn.append(("query", "GET", "/api/v1/audit-events", {"params": params}))
            for kind, method, url, kwargs in spawn:
                t = asyncio.create_task(request(kind, client, method, url, **kwargs))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            writes += 1
            delay = started + writes * write_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 1), "events_acknowledged": acknowledged,
        "events_per_s": round(acknowledged / elapsed),
        **{f"{kind}_requests": len(values) for kind, values in latencies.items()},
        **{f"{kind}_p50_ms": percentile(values, 0.5) for kind, values in latencies.items()},
        **{f"{kind}_p99_ms": percentile(values, 0.99) for kind, values in latencies.items()},
        "errors": sum(errors.values()), "errors_by_kind": errors,
        "read_share": round((len(latencies["query"]) + len(latencies["search"]))
                            / max(1, sum(len(v) for v in latencies.values())), 3),
    }


async def main(args) -> dict:
    console = Console(stderr=True)
    with private_servers("soak-", redis_appendonly=True) as (tmp, postgres, redis_server):
        processes: dict[str, subprocess.Popen] = {}
        samples: dict[str, list[float]] = {}
        try:
            url = await fresh_database(postgres, "soak")
            await import_catalog_file(url)
            processes["api"], base_url = start_api(url, redis_server.url, tmp / "api.log")
            for n in range(2):
                processes[f"consumer{n}"] = subprocess.Popen(
                    [DATASTORAGE, "consume"], env=service_env(url, redis_server.url, consumer_name=f"soak-{n}"),
                    stdout=open(tmp / f"consumer{n}.log", "w"), stderr=subprocess.STDOUT)
            with Progress(console=console) as progress:
                figures = await drive(base_url, args.seconds, args.rate, args.batch, args.search_share,
                                      samples, processes, progress)
            conn = await connect(url)
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    rows, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT event_id) FROM audit_events")
                    if rows >= figures["events_acknowledged"]:
                        break
                    await asyncio.sleep(0.5)
            finally:
                await conn.close()
        finally:
            stop_all(processes.values())
    return {
        **figures, "rows": rows, "lost": figures["events_acknowledged"] - distinct, "duplicated": rows - distinct,
        **{f"{name}_rss_first_mib": values[0] for name, values in samples.items()},
        **{f"{name}_rss_last_mib": values[-1] for name, values in samples.items()},
        **{f"{name}_rss_max_mib": max(values) for name, values in samples.items()},
        "rss_samples": len(next(iter(samples.values()), [])),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=int, default=2000, help="audit events per second (written)")
    parser.add_argument("--batch", type=int, default=100, help="events per POST")
    parser.add_argument("--search-share", type=float, default=0.2, help="share of reads that are searches")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
