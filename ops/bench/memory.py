"""Resident memory of the API and the consumer under a short workload, for the Kubernetes limits.

    .venv/bin/python ops/bench/memory.py [--events 50000] [--searches 200]

Starts `datastorage serve` and `datastorage consume` on fresh private servers, imports the
project's test catalog, sends events and searches, and samples each process's RSS (VmRSS) every
second; prints the peak of each as one JSON line.
"""

import argparse
import asyncio
import json
import subprocess
import threading
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from service import DATASTORAGE, fresh_database, import_catalog_file, private_servers, service_env, start_api, stop_all

from app.audit.wire import encode_event
from app.producer import new_audit_event


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakSampler(threading.Thread):
    def __init__(self, processes: dict[str, subprocess.Popen]):
        super().__init__(daemon=True)
        self.processes = processes
        self.peaks = {name: 0.0 for name in processes}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for name, process in self.processes.items():
                if process.poll() is None:
                    self.peaks[name] = max(self.peaks[name], rss_mib(process.pid))


async def main(args) -> dict:
    with private_servers("memory-bench-") as (tmp, postgres, redis_server):
        processes: dict[str, subprocess.Popen] = {}
        try:
            url = await fresh_database(postgres, "bench_memory")
            await import_catalog_file(url)
            processes["api"], base_url = start_api(url, redis_server.url, tmp / "api.log")
            processes["consumer"] = subprocess.Popen(
                [DATASTORAGE, "consume"], env=service_env(url, redis_server.url),
                stdout=open(tmp / "consumer.log", "w"), stderr=subprocess.STDOUT)
            sampler = PeakSampler(processes)
            sampler.start()
            client = aioredis.from_url(redis_server.url)
            for offset in range(0, args.events, 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for n in range(offset, offset + 1000):
                        pipe.xadd("audit_events", encode_event(new_audit_event(
                            "workflow.started", "workflow", "success", service_name="bench",
                            actor_type="controller", resource_type="workflow", resource_id=f"wf-{n}",
                            event_data={"payload": "x" * 200, "n": n})))
                    await pipe.execute()
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                for n in range(args.searches):
                    await http.get("/api/v1/playbooks/search", params={"query": f"pod out of memory {n}"})
                    await http.get("/api/v1/audit-events", params={"limit": 1000})
            while True:  # until the consumer has read everything (its group exists once it started)
                groups = await client.xinfo_groups("audit_events")
                if groups and not groups[0]["lag"] and not groups[0]["pending"]:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            await client.aclose()
            sampler.stop.set()
            sampler.join()
        finally:
            stop_all(processes.values())
    return {"events": args.events, "searches": args.searches,
            **{f"{name}_peak_rss_mib": round(peak, 1) for name, peak in sampler.peaks.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--searches", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
