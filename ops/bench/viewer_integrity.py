"""Viewer integrity benchmark: a timeline page's time when every event on it is sealed, as the
chain of seals grows, on fresh private servers.

    .venv/bin/python ops/bench/viewer_integrity.py [--events 5000] [--batch 10] [--samples 30]

Stores `--events` events sealed as a consumer stores them (one seal per batch of `--batch`), in
correlations of 20, plus one remediation of 200 events spread one per batch (its timeline names
200 seals: the viewer's worst case, a remediation interleaved with everything else), then
checkpoints the chain and starts `datastorage serve` with the signing key. Measures:
  * the first view of the remediation's timeline after the start (`cold`: a process verifies the
    chain once),
  * later views of it and of one event's page (p50/p99), each event shown `sealed` (checked),
  * the same timeline right after a new seal and a new checkpoint (`after_new_seal`);
  * the timeline from a service without the signing key (every status `unknown`, nothing
    checked): the page's cost without integrity.
Prints progress, then one JSON line. Target (the viewer issue): pages under 200 ms.
"""

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import redis.asyncio as aioredis
from read_api import percentiles
from rich.console import Console
from rich.progress import Progress
from service import fresh_database, private_servers, start_api, stop_all

from app.audit.identity import Submission
from app.audit.integrity.checkpoints import Checkpointer
from app.audit.integrity.keys import Signer, generate_key_pair
from app.audit.store import AuditStore
from app.catalog.store import create_pool
from app.core.settings import Settings
from app.producer import new_audit_event

console = Console(stderr=True)
REMEDIATION, REMEDIATION_EVENTS = "rem-integrity-bench", 200


def background(n: int, at: datetime):
    return new_audit_event(
        "notification.sent", "notification", "success", service_name="notification-controller",
        actor_type="controller", resource_type="notification", resource_id=f"notif-{n}",
        correlation_id=f"rem-{n // 20}", event_timestamp=at,
        event_data={"channel": "email", "recipient": f"user{n % 500}@example.com", "attempt": 1},
    )  # fmt: skip


def step(n: int, at: datetime):
    return new_audit_event(
        "workflow.step", "workflow", "success", service_name=f"service-{n % 7}", actor_type="controller",
        resource_type="deployment", resource_id=f"app-{n % 13}", correlation_id=REMEDIATION, event_timestamp=at,
        event_data={"step": n, "phase": "apply", "detail": "x" * 200},
    )  # fmt: skip


def batches(events: int, batch: int) -> list[list]:
    """Background events in batches, one remediation step in each of the first 200 batches."""
    start = datetime.now(UTC) - timedelta(hours=2)
    out, n, steps = [], 0, 0
    while n < events:
        chunk = []
        if steps < REMEDIATION_EVENTS:
            chunk.append(step(steps, start + timedelta(seconds=steps)))
            steps += 1
        while len(chunk) < batch and n < events:
            chunk.append(background(n, start + timedelta(milliseconds=n)))
            n += 1
        out.append(chunk)
    for extra in range(steps, REMEDIATION_EVENTS):  # fewer batches than steps: the rest together
        out[-1].append(step(extra, start + timedelta(seconds=extra)))
    return out


def ms(samples: list[float]) -> dict:
    p50, p99 = percentiles(samples)
    return {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}


async def view(client: httpx.AsyncClient, path: str, sealed: int) -> float:
    started = time.perf_counter()
    response = await client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text[:500]
    shown = response.text.count("integrity integrity-sealed")
    assert shown == sealed, f"{path}: {shown} events shown sealed, not {sealed}"
    return elapsed


async def main(args) -> dict:
    with private_servers("viewer-integrity-bench-") as (tmp, postgres, redis_server):
        key_file = generate_key_pair(tmp / "keys")[0]
        signer = Signer.from_file(key_file)
        url = await fresh_database(postgres, "bench_viewer_integrity")
        settings = Settings(database_url=url, redis_url=redis_server.url)
        pool = await create_pool(url, min_size=1, max_size=2)
        client = aioredis.from_url(redis_server.url)
        api = None
        try:
            store = AuditStore(pool, signer)
            planned = batches(args.events, args.batch)
            with Progress(console=console) as progress:
                task = progress.add_task("storing sealed", total=len(planned))
                for chunk in planned:
                    await store.insert([Submission(e) for e in chunk])
                    progress.advance(task)
            checkpointer = Checkpointer(pool, client, signer, settings)
            await checkpointer.checkpoint_once()
            seals = await pool.fetchval("SELECT count(*) FROM audit_seals")
            first_step = await pool.fetchval(
                "SELECT event_id FROM audit_events WHERE correlation_id = $1 ORDER BY event_timestamp LIMIT 1",
                REMEDIATION,
            )
            api, base_url = start_api(url, redis_server.url, tmp / "api.log", audit_signing_key_file=str(key_file))
            timeline = f"/ui/correlations/{REMEDIATION}"
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                cold = await view(http, timeline, REMEDIATION_EVENTS)
                warm = [await view(http, timeline, REMEDIATION_EVENTS) for _ in range(args.samples)]
                event = [await view(http, f"/ui/events/{first_step}", 1) for _ in range(args.samples)]
                after_new_seal = []
                for n in range(5):
                    await store.insert([Submission(background(args.events + n, datetime.now(UTC)))])
                    await checkpointer.checkpoint_once()
                    after_new_seal.append(await view(http, timeline, REMEDIATION_EVENTS))
            stop_all([api])
            api, base_url = start_api(url, redis_server.url, tmp / "api-keyless.log")
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                await view(http, timeline, 0)
                keyless = [await view(http, timeline, 0) for _ in range(args.samples)]
        finally:
            stop_all([api] if api else [])
            await client.aclose()
            await pool.close()
    return {
        "events": args.events + REMEDIATION_EVENTS,
        "seals": seals,
        "timeline_events": REMEDIATION_EVENTS,
        "timeline_cold_ms": round(cold, 2),
        "timeline": ms(warm),
        "event_page": ms(event),
        "timeline_after_new_seal": ms(after_new_seal),
        "timeline_without_integrity": ms(keyless),
        "under_200ms": ms(warm)["p99_ms"] < 200,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10, help="events per seal")
    parser.add_argument("--samples", type=int, default=30)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
