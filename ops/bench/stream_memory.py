"""Redis memory per buffered audit event: what the stream costs while Postgres is away.

    .venv/bin/python ops/bench/stream_memory.py [--events 100000]

On a fresh private redis-server (AOF on, as in production), for three kinds of event: XADD
`--events` of them through the producer library's encoding, then read `MEMORY USAGE` of the stream
(exact: SAMPLES 0), the growth of `used_memory` and of the AOF file; then read them all into one
consumer's pending list (XREADGROUP), the worst case of a consumer holding what it cannot store,
and read the growth again. Prints progress, then one JSON line with bytes per event.
"""

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import Progress

from app.audit.wire import encode_event
from app.local.embedded import LocalRedis
from app.producer import new_audit_event

console = Console(stderr=True)


def typical(n: int):
    """The ingest benchmark's event (ops/bench/ingest.py): a notification with five data fields."""
    return new_audit_event(
        "notification.sent", "notification", "success",
        service_name="notification-controller", actor_type="controller",
        resource_type="notification", resource_id=f"notif-{n}", correlation_id=f"rem-{n // 20}",
        event_data={"channel": "email", "recipient": f"user{n % 5000}@example.com", "attempt": 1,
                    "namespace": f"ns-{n % 50}", "reason": "CrashLoopBackOff"},
    )


def minimal(n: int):
    """Only the required fields (the service derives the id and time from the entry)."""
    return {"event_type": "workflow.started", "event_category": "workflow", "event_outcome": "success",
            "service_name": "workflow-controller", "actor_type": "controller", "resource_type": "workflow",
            "resource_id": f"wf-{n}"}


def large(n: int):
    """An AI analysis with about 2 KiB of event_data (its reasoning text)."""
    return new_audit_event(
        "ai.analysis.completed", "ai", "success", service_name="ai-service", actor_type="service",
        resource_type="analysis", resource_id=f"an-{n}", correlation_id=f"rem-{n // 20}",
        trace_id=f"{n:032x}", span_id=f"{n:016x}",
        event_data={"model": "llm-large", "confidence": 0.87, "playbook_id": "oom-restart",
                    "reasoning": ("The pod was OOM-killed three times in ten minutes; memory grows "
                                  "linearly after each deploy. " * 24)[:2000]},
    )


KINDS = {"typical": typical, "minimal": minimal, "large_2kib": large}


async def measure(client: aioredis.Redis, aof_dir: Path, kind: str, count: int, progress: Progress) -> dict:
    await client.flushall()
    await client.execute_command("BGREWRITEAOF")
    await asyncio.sleep(1)
    make = KINDS[kind]
    before = (await client.info("memory"))["used_memory"]
    aof_before = _aof_bytes(aof_dir)
    task = progress.add_task(f"XADD {kind}", total=count)
    wire_bytes = 0
    for offset in range(0, count, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for n in range(offset, min(offset + 1000, count)):
                made = make(n)
                fields = made if isinstance(made, dict) else encode_event(made)
                wire_bytes += sum(len(k) + len(str(v).encode()) for k, v in fields.items())
                pipe.xadd("audit_events", fields)
            await pipe.execute()
        progress.update(task, completed=min(offset + 1000, count))
    await asyncio.sleep(1.5)  # appendfsync everysec
    stream_bytes = await client.memory_usage("audit_events", samples=0)
    after_xadd = (await client.info("memory"))["used_memory"]
    aof_after = _aof_bytes(aof_dir)
    await client.xgroup_create("audit_events", "datastorage", id="0")
    await client.xreadgroup("datastorage", "holding-all", {"audit_events": ">"}, count=count)
    after_pending = (await client.info("memory"))["used_memory"]
    return {
        "field_bytes_per_event": round(wire_bytes / count),
        "stream_bytes_per_event": round(stream_bytes / count),
        "used_memory_per_event": round((after_xadd - before) / count),
        "pending_extra_per_event": round((after_pending - after_xadd) / count),
        "aof_bytes_per_event": round((aof_after - aof_before) / count),
    }


def _aof_bytes(aof_dir: Path) -> int:
    return sum(p.stat().st_size for p in aof_dir.rglob("*.aof*") if p.is_file())


async def main(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="stream-memory-") as tmp:
        server = LocalRedis(Path(tmp) / "redis", appendonly=True, appendfsync="everysec")
        server.start()
        client = aioredis.from_url(server.url)
        try:
            version = (await client.info("server"))["redis_version"]
            with Progress(console=console) as progress:
                figures = {kind: await measure(client, Path(tmp) / "redis", kind, args.events, progress)
                           for kind in KINDS}
        finally:
            await client.aclose()
            server.stop()
    return {"events": args.events, "redis_version": version, **figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
