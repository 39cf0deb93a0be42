"""The API's HTTP server under load, slow clients and large pages (issue 12, items 5 and 10).

    .venv/bin/python ops/bench/http_server.py rps [--seconds 10] [--connections 50] [--rounds 3]
    .venv/bin/python ops/bench/http_server.py slow-clients [--count 20000]
    .venv/bin/python ops/bench/http_server.py page [--events 1000] [--event-kb 250]

* rps: GET /healthz requests per second over keep-alive connections (one client process on
  uvloop), served by the API with uvicorn's stock httptools protocol and with the service's own
  (`app/api/connections.py`): what the slow-client bounds cost.
* slow-clients: `count` connections that send half a request head and hold it, then 20 GETs of
  /healthz on new connections: failures and the slowest answer, for both protocols.
* page: `events` events of `event-kb` KB stored, then one GET ?limit=1000 through
  `datastorage serve`: the response's size and the API process's peak RSS (VmRSS, sampled every
  20 ms) above its RSS before the request, the model loaded. Run it with PYTHONPATH naming
  another checkout to measure that checkout's code.

Each mode starts its own private Postgres and Redis. Prints one JSON line per measurement.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from service import fresh_database, private_servers, service_env

from app.local.embedded import free_port

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")

# The API as `datastorage serve` runs it, but with the HTTP protocol named on the command line.
SERVER = """
import sys, uvicorn
from app.api.server import uvicorn_config
from app.core.settings import Settings
config = uvicorn_config(Settings())
if sys.argv[1] == "uvicorn":
    config.http = "httptools"
uvicorn.Server(config).run()
"""

CLIENT = """
import asyncio, sys, time, uvloop
port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
REQUEST = b"GET /healthz HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n"
done = 0
async def one(deadline):
    global done
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        writer.write(REQUEST)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\\r\\n")[0])
        await reader.readexactly(length)
        done += 1
    writer.close()
async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(one(deadline) for _ in range(connections)))
uvloop.run(main())
print(done)
"""

HALF_OPEN = """
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: a")
        held.append(sock)
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
"""


def start_server(protocol: str, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**env, "DATASTORAGE_HTTP_HOST": "127.0.0.1", "DATASTORAGE_HTTP_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-c", SERVER, protocol], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}")
    return process, port


def wait_healthy(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{base_url} did not answer")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=60)


def rps(env: dict, args) -> None:
    for protocol in args.protocols.split(",") * args.rounds:
        process, port = start_server(protocol, env)
        try:
            out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(args.connections), str(args.seconds)],
                                 capture_output=True, text=True, check=True).stdout
            print(json.dumps({"mode": "rps", "protocol": protocol, "connections": args.connections,
                              "requests_per_s": round(int(out) / args.seconds)}), flush=True)
        finally:
            stop(process)


def slow_clients(env: dict, args) -> None:
    for protocol in ("uvicorn", "bounded"):
        process, port = start_server(protocol, env)
        holders = [subprocess.Popen([sys.executable, "-c", HALF_OPEN, str(port), str(min(9000, args.count - start))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                   for start in range(0, args.count, 9000)]
        try:
            opened = sum(int(holder.stdout.readline() or 0) for holder in holders)
            failures, slowest = 0, 0.0
            for _ in range(20):
                started = time.monotonic()
                try:
                    ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    ok = False
                failures += not ok
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.25)
            print(json.dumps({"mode": "slow-clients", "protocol": protocol, "half_open": opened,
                              "healthz_failures_of_20": failures, "healthz_slowest_s": round(slowest, 3)}),
                  flush=True)
        finally:
            for holder in holders:
                holder.stdin.close()
                holder.wait(timeout=60)
            stop(process)


async def store_large_events(url: str, count: int, size_kb: int) -> None:
    from app.audit.store import AuditStore
    from app.catalog.store import create_pool
    from app.producer import new_audit_event

    pool = await create_pool(url, min_size=1, max_size=2)
    store = AuditStore(pool)
    blob = "x" * (size_kb * 1024 - 200)
    now = datetime.now(UTC)
    for start in range(0, count, 20):
        await store.insert([
            new_audit_event("bench.large", "bench", "success", service_name="bench", actor_type="service",
                            resource_type="blob", resource_id=str(uuid.uuid4()), event_timestamp=now,
                            event_data={"blob": blob, "n": n})
            for n in range(start, min(count, start + 20))])
    await pool.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def page(database_url: str, redis_url: str, args, tmp: Path) -> None:
    asyncio.run(store_large_events(database_url, args.events, args.event_kb))
    port = free_port()
    env = service_env(database_url, redis_url, http_host="127.0.0.1", http_port=port)
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    with open(tmp / "serve.log", "w") as log:
        process = subprocess.Popen([DATASTORAGE, "serve"], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url)
        deadline = time.monotonic() + 120
        while httpx.get(f"{base_url}/readyz").json().get("checks", {}).get("embedding_model") != "ok":
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.5)
        before = peak = rss(process.pid)
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.02):
                peak = max(peak, rss(process.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        response = httpx.get(f"{base_url}/api/v1/audit-events", params={"limit": 1000}, timeout=300)
        seconds = time.monotonic() - started
        sampling.set()
        sampler.join()
        body = response.json()
        print(json.dumps({"mode": "page", "events": args.events, "event_kb": args.event_kb,
                          "status": response.status_code, "rows": len(body.get("data", [])),
                          "has_more": body.get("pagination", {}).get("has_more"),
                          "body_mb": round(len(response.content) / 2**20, 1), "seconds": round(seconds, 2),
                          "rss_before_mb": round(before / 2**20), "rss_peak_mb": round(peak / 2**20),
                          "rss_growth_mb": round((peak - before) / 2**20)}), flush=True)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["rps", "slow-clients", "page"])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--protocols", default="uvicorn,bounded", help="rps: uvicorn, bounded or both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-kb", type=int, default=250)
    args = parser.parse_args()
    with private_servers("ds-http-bench-") as (tmp, postgres, redis_server):
        database_url = asyncio.run(fresh_database(postgres, "bench"))
        env = service_env(database_url, redis_server.url)
        if args.mode == "rps":
            rps(env, args)
        elif args.mode == "slow-clients":
            slow_clients(env, args)
        else:
            page(database_url, redis_server.url, args, tmp)


if __name__ == "__main__":
    main()
