"""What the tests share: the one event factory, bodies and problem checks for the API, waiting,
real `datastorage` processes (consumers, `run`), what the stream and the table hold, and a
stand-in for the Kubernetes API server's access reviews.

Test modules import from here (and from fixtures in conftest.py), never from each other.
"""

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from app.api.app import create_app
from app.audit.identity import Submission
from app.audit.integrity.checkpoints import Checkpointer
from app.audit.record import COLUMNS, row_values
from app.audit.store import AuditStore
from app.audit.wire import decode_entry, encode_event
from app.catalog.store import create_pool
from app.core.db import connect
from app.core.settings import PROJECT_ROOT
from app.local.embedded import free_port
from app.producer import AuditEvent, AuditProducer, new_audit_event

SCHEMA_DIR = PROJECT_ROOT / "schema"
CATALOG = Path(__file__).parent / "data" / "catalog.yaml"
STREAM, DLQ, GROUP = "audit_events", "audit_dlq", "datastorage"
EVENTS = "/api/v1/audit-events"
# DATASTORAGE_FAULT_SCALE=5 makes every fault test five times longer and larger.
SCALE = float(os.environ.get("DATASTORAGE_FAULT_SCALE", "1"))


# --- events ----------------------------------------------------------------------------------


def event(n: int = 0, **fields: Any) -> AuditEvent:
    """The tests' one event factory: a notification event numbered `n`; `fields` override."""
    values: dict[str, Any] = dict(
        service_name="gateway",
        actor_type="service",
        resource_type="notification",
        resource_id=f"notif-{n}",
        event_data={"n": n},
    )
    values.update(fields)
    return new_audit_event(
        values.pop("event_type", "notification.sent"),
        values.pop("event_category", "notification"),
        values.pop("event_outcome", "success"),
        **values,
    )


def events(count: int, **fields: Any) -> list[AuditEvent]:
    """`count` events, a hundred per correlation (rem-0, rem-1, …)."""
    return [event(n, **{"correlation_id": f"rem-{n // 100}", **fields}) for n in range(count)]


def submitted(batch: list[AuditEvent]) -> list[Submission]:
    """Events as their producer submitted them, every field sent (what AuditStore.insert takes)."""
    return [Submission(e) for e in batch]


def body_of(e: AuditEvent) -> dict:
    """An event as a POST body carries it."""
    return orjson.loads(e.model_dump_json(exclude_none=True))


def audit_row(timestamp: datetime, **overrides: Any) -> dict:
    """An event as a row for plain-SQL inserts (JSON as text), at any `timestamp` (even one the
    event model would refuse)."""
    row = dict(zip(COLUMNS, row_values(event(1)), strict=True))
    row = {name: value for name, value in row.items() if value is not None}
    row.update(event_timestamp=timestamp, event_date=timestamp.astimezone(UTC).date())
    row.update(overrides)
    return row


async def insert_audit_row(db, row: dict) -> None:
    names = list(row)
    placeholders = ", ".join(f"${n}" for n in range(1, len(names) + 1))
    await db.execute(f"INSERT INTO audit_events ({', '.join(names)}) VALUES ({placeholders})", *row.values())


# --- the HTTP API -----------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, detail_part: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert detail_part in body["detail"], body["detail"]
    assert "Traceback" not in response.text and "SELECT" not in response.text
    return body


def client_for(settings, signer=None):
    app = create_app(settings, signer)

    class Client:
        async def __aenter__(self):
            self._lifespan = app.router.lifespan_context(app)
            await self._lifespan.__aenter__()
            self.client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api"
            )
            return self.client

        async def __aexit__(self, *exc):
            await self.client.aclose()
            await self._lifespan.__aexit__(*exc)

    return Client()


# --- waiting ---------------------------------------------------------------------------------


async def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Polls `condition` (a function, sync or async) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --- real processes --------------------------------------------------------------------------


DATASTORAGE = str(Path(sys.executable).parent / "datastorage")

# Fast clocks so that claiming, trimming and retries happen within a test's patience.
TEST_CONSUMER_SETTINGS = {
    "DATASTORAGE_BATCH_WAIT_MS": "50",
    "DATASTORAGE_CLAIM_IDLE_MS": "2000",
    "DATASTORAGE_CLAIM_INTERVAL_S": "0.5",
    "DATASTORAGE_HYGIENE_INTERVAL_S": "0.5",
    "DATASTORAGE_RETRY_INITIAL_S": "0.2",
    "DATASTORAGE_RETRY_MAX_S": "1",
    "DATASTORAGE_METRICS_PORT": "0",
    "DATASTORAGE_LOG_FORMAT": "json",
}


class ConsumerProcess:
    def __init__(self, database_url: str, redis_url: str, name: str, log_dir: Path, **settings: str):
        self.name = name
        self.log_path = log_dir / f"consumer-{name}-{time.monotonic_ns()}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")},
            **TEST_CONSUMER_SETTINGS,
            "DATASTORAGE_DATABASE_URL": database_url,
            "DATASTORAGE_REDIS_URL": redis_url,
            "DATASTORAGE_CONSUMER_NAME": name,
            **{f"DATASTORAGE_{key.upper()}": str(value) for key, value in settings.items() if key != "cluster_url"},
            # A Redis Cluster's node instead of the plain test Redis.
            **({"DATASTORAGE_REDIS_URL": settings["cluster_url"]} if "cluster_url" in settings else {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> "ConsumerProcess":
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [DATASTORAGE, "consume"], env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        return self

    async def wait_started(self, timeout: float = 30) -> None:
        await wait_for(
            lambda: "consumer_starting" in self.log() or self.process.poll() is not None,
            timeout,
            f"consumer {self.name} to start",
        )
        assert self.process.poll() is None, self.log()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 40) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def run_datastorage(settings: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`datastorage ARGS` as an operator runs it, with only these DATASTORAGE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({"DATASTORAGE_LOG_FORMAT": "json", **settings})
    result = subprocess.run(
        [DATASTORAGE, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


class ServedApi:
    """`datastorage serve` in a process of its own, on a free port (the real uvicorn and its
    connection protocol); `settings` are DATASTORAGE_* overrides (lower-case names)."""

    def __init__(self, database_url: str, redis_url: str, log_dir: Path, **settings: Any):

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{time.monotonic_ns()}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")},
            "DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": redis_url,
            "DATASTORAGE_HTTP_HOST": "127.0.0.1", "DATASTORAGE_HTTP_PORT": str(self.port),
            "DATASTORAGE_METRICS_PORT": "0", "DATASTORAGE_LOG_FORMAT": "json",
            **{f"DATASTORAGE_{key.upper()}": str(value) for key, value in settings.items() if key != "cluster_url"},
            # A Redis Cluster's node instead of the plain test Redis.
            **({"DATASTORAGE_REDIS_URL": settings["cluster_url"]} if "cluster_url" in settings else {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ServedApi":
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([DATASTORAGE, "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text()

    def log_events(self, name: str) -> list[dict]:
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=60)

    def __enter__(self) -> "ServedApi":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def raw_http(port: int, requests: list[bytes], timeout: float = 10) -> list[bytes]:
    """Sends `requests` one after the other on ONE connection; returns each response's head and
    body (b"" once the server closed the connection): a keep-alive check on the wire."""
    import socket

    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            try:
                sock.sendall(request)
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        break
                    head += line
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                answers.append(head + reader.read(length))
            except OSError:
                answers.append(b"")
    return answers


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# Opens N connections to a port, sends half a request head on each, says how many it holds, and
# holds them until its stdin closes: a slow-client attack. A process holds at most 9,000 (file
# descriptors), so larger numbers take several.
_HALF_OPEN = """
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


class hold_half_open_connections:
    """`with hold_half_open_connections(port, n) as held:` n half-open connections (held.opened
    of them made it) until the block ends."""

    PER_PROCESS = 9000

    def __init__(self, port: int, count: int):
        self.port, self.count, self.opened = port, count, 0
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "hold_half_open_connections":
        for start in range(0, self.count, self.PER_PROCESS):
            share = min(self.PER_PROCESS, self.count - start)
            self.processes.append(subprocess.Popen(
                [sys.executable, "-c", _HALF_OPEN, str(self.port), str(share)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        self.opened = sum(int(process.stdout.readline() or 0) for process in self.processes)
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.stdin.close()
            process.wait(timeout=60)


def start_run(env_overrides: dict, *args: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({"DATASTORAGE_LOG_FORMAT": "json", **env_overrides})
    return subprocess.Popen([DATASTORAGE, "run", *args], env=env, stdin=subprocess.DEVNULL, stderr=stderr, text=True)


def wait_for_event(process: subprocess.Popen, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.5)
        if not ready:
            continue
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            return record
    process.kill()
    pytest.fail(f"no {name!r} from datastorage run; it said:\n{''.join(seen)}")


def stop_with_ctrl_c(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    finally:
        process.stderr.close()


# --- what the stream and the table hold -------------------------------------------------------


async def publish(client, batch: list[AuditEvent]) -> list[str]:
    return await AuditProducer(client).publish_many(batch)


async def row_counts(db) -> tuple[int, int]:
    row = await db.fetchrow("SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids FROM audit_events")
    return row["n"], row["distinct_ids"]


async def pending(client) -> int:
    return (await client.xpending(STREAM, GROUP))["pending"]


async def dead_letters(client) -> list[dict[str, str]]:
    return [
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        for _, fields in await client.xrange(DLQ)
    ]


async def settled(db, client, rows: int, dlq: int = 0, timeout: float = 60) -> None:
    """Waits until `rows` rows are stored, `dlq` entries dead-lettered and nothing is pending."""

    async def done():
        return (await row_counts(db))[0] >= rows and await client.xlen(DLQ) >= dlq and await pending(client) == 0

    await wait_for(done, timeout, f"{rows} rows, {dlq} dead letters and nothing pending")
    assert await row_counts(db) == (rows, rows), "every event exactly once"
    assert await client.xlen(DLQ) == dlq


# --- under faults ----------------------------------------------------------------------------


@dataclass
class SteadyProducer:
    """XADDs `rate` events/s in small pipelines; keeps the event_id of every XADD Redis answered
    OK, and counts the ones that failed (those were never acknowledged to the producer)."""

    redis_url: str
    rate: int = 2000
    acknowledged: set = field(default_factory=set)
    failed: int = 0

    async def run_for(self, seconds: float) -> None:
        client = aioredis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=1)
        per_tick = max(1, self.rate // 50)  # 50 pipelines a second
        started = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - started < seconds:
                batch = [event(sent + i, service_name="fault-test") for i in range(per_tick)]
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for e in batch:
                            pipe.xadd(STREAM, encode_event(e))
                        await pipe.execute()
                    self.acknowledged.update(e.event_id for e in batch)
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    self.failed += len(batch)
                    await asyncio.sleep(0.1)
                sent += per_tick
                delay = started + sent / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await client.aclose()


async def stored_ids(db) -> tuple[set, int]:
    rows = await db.fetch("SELECT event_id FROM audit_events")
    return {r["event_id"] for r in rows}, len(rows)


async def settle(db, redis_url: str, expected: set, timeout: float = 120, require_idle: bool = True) -> dict:
    """Waits until every expected event is a row and (unless not `require_idle`) nothing is
    pending or unread; returns the figures."""
    client = aioredis.from_url(redis_url)
    started = time.monotonic()
    try:

        async def done() -> bool:
            ids, _ = await stored_ids(db)
            groups = await client.xinfo_groups(STREAM)
            idle = bool(groups) and groups[0]["pending"] == 0 and not groups[0]["lag"]
            return expected <= ids and (idle or not require_idle)

        await wait_for(done, timeout, "every acknowledged event stored and nothing pending", interval=0.5)
        ids, rows = await stored_ids(db)
        return {
            "sent_acknowledged": len(expected),
            "stored": len(ids & expected),
            "rows": rows,
            "duplicated": rows - len(ids),
            "lost": len(expected - ids),
            "dead_lettered": await client.xlen(DLQ),
            "pending": (await client.xinfo_groups(STREAM))[0]["pending"],
            "settle_seconds": round(time.monotonic() - started, 1),
        }
    finally:
        await client.aclose()


def report(capsys, name: str, figures: dict) -> None:
    with capsys.disabled():
        print(f"\n[fault] {name}: {json.dumps(figures)}")


# --- the service's own actions in the trail ----------------------------------------------------


async def self_audit_events(client, event_type: str | None = None) -> list[AuditEvent]:
    """The service's own events (service_name datastorage) in the audit stream, oldest first."""
    found = [decode_entry(STREAM, entry_id.decode(), fields) for entry_id, fields in await client.xrange(STREAM)]
    return [e for e in found if e.service_name == "datastorage" and event_type in (None, e.event_type)]


# --- a Kubernetes API server, as far as the service uses one -----------------------------------


class KubernetesStandIn:
    """The TokenReview and SubjectAccessReview endpoints of a Kubernetes API server, speaking their
    real JSON (authentication.k8s.io/v1, authorization.k8s.io/v1; 201 Created, a `status` beside
    the echoed `spec`, `authenticated` left out when false as the real server does), and checking
    that the caller presents the service account's token. `users`: token -> (username, groups);
    `grants`: (username or group, verb) pairs RBAC allows on `resource` (group, resource)."""

    def __init__(self, service_token: str, users: dict[str, tuple[str, list[str]]],
                 grants: set[tuple[str, str]], resource: tuple[str, str] = ("datastorage.dev", "datastorage")):
        self.service_token = service_token
        self.users = users
        self.grants = grants
        self.resource = resource
        self.reviews: list[dict] = []  # every review received, in order
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {stand_in.service_token}":
                    return self.reply(401, stand_in.status_object(401, "Unauthorized"))
                routes = {"/apis/authentication.k8s.io/v1/tokenreviews": ("authentication.k8s.io/v1", "TokenReview"),
                          "/apis/authorization.k8s.io/v1/subjectaccessreviews":
                              ("authorization.k8s.io/v1", "SubjectAccessReview")}
                expected = routes.get(self.path)
                if expected is None:
                    return self.reply(404, stand_in.status_object(404, "NotFound"))
                if (body.get("apiVersion"), body.get("kind")) != expected or not isinstance(body.get("spec"), dict):
                    return self.reply(400, stand_in.status_object(400, "BadRequest"))
                stand_in.reviews.append(body)
                status = stand_in.token_review(body["spec"]) if expected[1] == "TokenReview" \
                    else stand_in.access_review(body["spec"])
                self.reply(201, {"kind": expected[1], "apiVersion": expected[0],
                                 "metadata": {"creationTimestamp": None}, "spec": body["spec"], "status": status})

            def reply(self, code: int, document: dict):
                payload = json.dumps(document).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token_review(self, spec: dict) -> dict:
        if spec.get("token") not in self.users:
            return {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        username, groups = self.users[spec["token"]]
        return {"authenticated": True, "user": {"username": username, "uid": f"uid-{username}", "groups": groups},
                "audiences": ["https://kubernetes.default.svc.cluster.local"]}

    def access_review(self, spec: dict) -> dict:
        attributes = spec.get("resourceAttributes") or {}
        subjects = [spec.get("user"), *(spec.get("groups") or [])]
        on_resource = (attributes.get("group"), attributes.get("resource")) == self.resource
        if on_resource and any((subject, attributes.get("verb")) in self.grants for subject in subjects):
            return {"allowed": True, "reason": 'RBAC: allowed by ClusterRoleBinding "datastorage-clients"'}
        return {"allowed": False}

    @staticmethod
    def status_object(code: int, reason: str) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason,
                "reason": reason, "code": code}

    def kinds(self) -> list[str]:
        return [review["kind"] for review in self.reviews]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the sealed trail ------------------------------------------------------------------------------


async def store_sealed(settings, signer, batch: list[AuditEvent], per_seal: int = 20) -> None:
    """Stores `batch` as the service does with a signing key (a seal per `per_seal` events) and
    checkpoints the chain (the table, the Redis stream and the log line)."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    client = aioredis.from_url(settings.redis_url)
    try:
        store = AuditStore(pool, signer)
        for offset in range(0, len(batch), per_seal):
            await store.insert([Submission(e) for e in batch[offset : offset + per_seal]])
        await Checkpointer(pool, client, signer, settings).checkpoint_once()
    finally:
        await client.aclose()
        await pool.close()


async def tamper(database_url: str, *statements: tuple) -> None:
    """What an attacker with SQL does: the append-only triggers off for the session, then the change."""
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            for statement, *args in statements:
                await conn.execute(statement, *args)
    finally:
        await conn.close()
