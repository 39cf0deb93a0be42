"""Every Prometheus metric of the service, in one place (names follow Prometheus conventions).

Each process exports what it knows of itself: the consumer its batches, the API its requests and
its write-throughs, both their Postgres connections. The metrics port also answers `/healthz` and
`/readyz` from the probes the process registered (`set_probe`): a consumer pod's readiness is the
consumer's, not any 200 of a metrics listener.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

AUDIT_WRITES = Counter(
    "datastorage_audit_writes_total",
    "Audit events by outcome: stored (new row), duplicate (row existed), dead_lettered; whether the "
    "consumer wrote them or the API wrote them through to Postgres while Redis was down.",
    ["outcome"],
)
AUDIT_WRITE_ERRORS = Counter(
    "datastorage_audit_write_errors_total", "Failed batch writes by kind (transient, permanent, ambiguous).", ["kind"]
)
AUDIT_RELEASE_ERRORS = Counter(
    "datastorage_audit_release_errors_total",
    "Failed batch writes the release is to blame for (SQLSTATE class 42: schema, SQL, grants); retried, alerted.",
)
AUDIT_BATCH_SIZE = Histogram(
    "datastorage_audit_batch_size",
    "Entries per batch read from the stream.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
AUDIT_WRITE_DURATION = Histogram(
    "datastorage_audit_write_duration_seconds",
    "Time to write one batch to Postgres (one statement, one transaction).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUDIT_END_TO_END_LATENCY = Histogram(
    "datastorage_audit_end_to_end_latency_seconds",
    "From the time Redis gave an entry its id to the commit of its row.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
DLQ_ENTRIES = Counter(
    "datastorage_dlq_entries_total", "Entries written to the dead-letter stream, by reason.", ["reason"]
)
DLQ_DEPTH = Gauge("datastorage_dlq_depth", "Entries in the dead-letter stream.")
STREAM_LAG = Gauge("datastorage_stream_lag", "Entries of the audit stream not yet delivered to the consumer group.")
STREAM_PENDING = Gauge(
    "datastorage_stream_pending", "Entries delivered to the consumer group but not yet acknowledged."
)
STREAM_OLDEST_PENDING_AGE = Gauge(
    "datastorage_stream_oldest_pending_age_seconds",
    "Age of the oldest entry still pending in the consumer group (0 when none).",
)
STREAM_LENGTH = Gauge("datastorage_stream_length", "Entries in the audit stream (XLEN).")
# With shards (DATASTORAGE_STREAM_SHARDS) the gauges above are totals over the plain stream and
# every shard (the oldest pending age: the largest), and these say which stream it is.
STREAM_SHARD_LAG = Gauge("datastorage_stream_shard_lag", "Entries of one stream (shard) not yet delivered.", ["stream"])
STREAM_SHARD_PENDING = Gauge(
    "datastorage_stream_shard_pending", "Entries of one stream (shard) delivered but not yet acknowledged.", ["stream"]
)
STREAM_SHARD_OLDEST_PENDING_AGE = Gauge(
    "datastorage_stream_shard_oldest_pending_age_seconds",
    "Age of the oldest entry still pending in one stream (shard); 0 when none.",
    ["stream"],
)
STREAM_SHARD_LENGTH = Gauge("datastorage_stream_shard_length", "Entries in one stream (shard).", ["stream"])
DLQ_SHARD_DEPTH = Gauge("datastorage_dlq_shard_depth", "Entries in one dead-letter stream (shard).", ["dlq"])
STREAM_ENTRIES_LOST = Counter(
    "datastorage_stream_entries_lost_total",
    "Entries trimmed from the audit stream (XTRIM, MAXLEN) before any consumer of the group read them.",
)
STREAM_GROUP_RECREATED = Counter(
    "datastorage_stream_group_recreated_total",
    "Times the consumer group was found deleted and created again from the start of the stream.",
)
STREAM_ENTRY_IDS_AHEAD = Gauge(
    "datastorage_stream_entry_ids_ahead_seconds",
    "How far the stream's newest entry id is ahead of this machine's clock (an explicit future id).",
)
CONSUMER_FATAL_ERRORS = Counter(
    "datastorage_consumer_fatal_errors_total", "Errors that stopped a consumer (it exits non-zero)."
)
AUDIT_SEALING_ENABLED = Gauge(
    "datastorage_audit_sealing_enabled",
    "1 when this process seals what it stores (it has the signing key), 0 when it stores rows unsealed.",
)
AUDIT_CHECKPOINTS = Counter("datastorage_audit_checkpoints_total", "Signed checkpoints of the seal chain written.")
AUDIT_UNSEALED_ROWS = Gauge(
    "datastorage_audit_unsealed_rows",
    "Audit rows not yet under a signed checkpoint (sealed since the last one, or stored without a seal).",
)
AUDIT_UNSEALED_OLDEST_AGE = Gauge(
    "datastorage_audit_unsealed_oldest_age_seconds", "Age of the oldest audit row not yet under a signed checkpoint."
)
DB_READS = Counter(
    "datastorage_db_reads_total",
    "Audit queries and playbook searches by where they ran: primary or replica (app/core/read_replicas.py).",
    ["target"],
)
READ_REPLICA_FALLBACKS = Counter(
    "datastorage_read_replica_fallbacks_total",
    "Reads that failed on a read replica and were answered by the primary, by replica.",
    ["replica"],
)
READ_REPLICA_LAG_BYTES = Gauge(
    "datastorage_read_replica_lag_bytes",
    "WAL bytes between the primary's current position and the replica's replay position (NaN: unknown).",
    ["replica"],
)
READ_REPLICA_USABLE = Gauge(
    "datastorage_read_replica_usable",
    "1 when the replica answers and its lag is within DATASTORAGE_READ_REPLICA_MAX_LAG_BYTES, else 0.",
    ["replica"],
)
DB_CONNECTIONS_IN_USE = Gauge("datastorage_db_connections_in_use", "Postgres connections of this process in use.")
# Every pool of the process (the consumer's, the API's asyncpg pool and SQLAlchemy engine): the
# gauge is their sum, so `run` (both in one process) counts both.
_CONNECTION_SOURCES: dict[str, Callable[[], int]] = {}
DB_CONNECTIONS_IN_USE.set_function(lambda: sum(count() for count in list(_CONNECTION_SOURCES.values())))


def count_connections(name: str, in_use: Callable[[], int] | None) -> None:
    """Adds (or with None removes) a pool to datastorage_db_connections_in_use."""
    if in_use is None:
        _CONNECTION_SOURCES.pop(name, None)
    else:
        _CONNECTION_SOURCES[name] = in_use


HTTP_REQUESTS = Counter(
    "datastorage_http_requests_total",
    "HTTP requests by method, route (the path template) and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "datastorage_http_request_duration_seconds",
    "HTTP request latency by method, route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_SHED = Counter(
    "datastorage_http_shed_total",
    "Connections closed or requests refused to protect the API, by reason: header_timeout (a request "
    "head too slow), max_connections (the longest-waiting idle connection closed), requests_in_flight (503).",
    ["reason"],
)

ACCESS_DENIED = Counter(
    "datastorage_access_denied_total",
    "Requests refused by authentication (401: no or unknown token) or authorisation (403: scope missing).",
    ["status"],
)
RATE_LIMITED = Counter(
    "datastorage_rate_limited_requests_total", "Requests refused with 429 by the per-identity rate limit."
)
KUBERNETES_REVIEWS = Counter(
    "datastorage_kubernetes_reviews_total",
    "TokenReviews and SubjectAccessReviews sent to the Kubernetes API server, by kind and outcome "
    "(allowed, denied, error).",
    ["kind", "outcome"],
)
KUBERNETES_REVIEW_CACHE_HITS = Counter(
    "datastorage_kubernetes_review_cache_hits_total", "Review answers reused from the cache, by kind.", ["kind"]
)
VIEWER_CHAIN_SEALS_CHECKED = Counter(
    "datastorage_viewer_chain_seals_checked_total",
    "Seals the viewer's integrity statuses checked in the chain (hash, signature, link): the whole chain "
    "once per process and again every ten minutes while pages are viewed, else each seal added "
    "(app/audit/integrity/checked_chain.py).",
)
# Read from audit_retention_runs by every API pod (the run may have been a CronJob's).
RETENTION_LAST_SUCCESS = Gauge(
    "datastorage_retention_last_success_timestamp_seconds",
    "Unix time of the newest successful retention run (0: none recorded).",
)
RETENTION_PARTITIONS_DROPPED = Gauge(
    "datastorage_retention_partitions_dropped", "Partitions dropped by retention runs and partition drops, in all."
)
RETENTION_ROWS_DROPPED = Gauge(
    "datastorage_retention_rows_dropped", "Audit rows dropped for good by retention runs and partition drops, in all."
)
SELF_AUDIT_WRITE_FAILURES = Counter(
    "datastorage_self_audit_write_failures_total",
    "Self-audit events (the service's own actions) that neither Redis nor Postgres took.",
)

PLAYBOOK_SEARCH_DURATION = Histogram(
    "datastorage_playbook_search_duration_seconds",
    "Playbook searches, from the query text to the ranked rows (embedding included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PLAYBOOK_SEARCHES = Counter(
    "datastorage_playbook_searches_total",
    "Playbook searches by mode (hybrid, labels) and whether they were answered without the model.",
    ["mode", "degraded"],
)
EMBEDDING_DURATION = Histogram(
    "datastorage_embedding_duration_seconds",
    "One call of the embedding model (a query, or a batch of playbooks).",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PLAYBOOKS_EMBEDDED = Counter(
    "datastorage_playbooks_embedded_total",
    "Playbook rows (re-)embedded, by where: worker (background), search (on the fly), import.",
    ["by"],
)
EMBEDDING_MODEL_STATE = Gauge(
    "datastorage_embedding_model_state",
    "1 for the embedding model's current state in this process (loading, ready, failed), 0 for the others.",
    ["state"],
)
DEPENDENCY_UP = Gauge(
    "datastorage_dependency_up",
    "1 when a dependency answered this API process's last check (postgres, redis; schema: migrated), else 0.",
    ["dependency"],
)
API_READY = Gauge(
    "datastorage_api_ready", "1 when this API process takes traffic (started, not draining, schema not behind)."
)
PLAYBOOK_STALE_EMBEDDINGS = Gauge(
    "datastorage_playbook_stale_embeddings",
    "Playbook rows whose embedding is missing or older than their text, as last counted.",
)


UPKEEP_LAST_SUCCESS = Gauge(
    "datastorage_upkeep_last_success_timestamp_seconds",
    "When a periodic upkeep task (partitions_ensure) last succeeded, as recorded in Postgres; 0: never.",
    ["task"],
)

# Probes the metrics port answers: name -> None (passing) or why not. Unregistered: 404.
_PROBES: dict[str, Callable[[], str | None]] = {"healthz": lambda: None}


def set_probe(name: str, check: Callable[[], str | None]) -> None:
    """`/<name>` on the metrics port answers 200 while `check()` is None, else 503 with its text."""
    _PROBES[name] = check


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].strip("/")
        if path == "metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in _PROBES:
            try:
                failing = _PROBES[path]()
            except Exception as error:  # noqa: BLE001 - a probe that fails is a failing probe
                failing = f"{type(error).__name__}: {error}"
            self._answer(503 if failing else 200, (failing or "ok").encode() + b"\n", "text/plain")
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


def start_metrics_server(port: int) -> None:
    """Serves /metrics and the probes on `port` in a thread (0: not at all, e.g. several
    consumers in one test)."""
    if port:
        server = ThreadingHTTPServer(("0.0.0.0", port), _MetricsHandler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


@dataclass(frozen=True)
class StreamFigures:
    """What one round of upkeep saw of one stream (the plain one or a shard) and its DLQ."""

    lag: int
    pending: int
    oldest_pending_age_s: float
    length: int
    dlq_depth: int


_stream_figures: dict[tuple[str, str], StreamFigures] = {}


def set_stream_figures(stream: str, dlq: str, figures: StreamFigures) -> None:
    """The stream's own gauges, and the totals over every stream this process reads."""
    _stream_figures[stream, dlq] = figures
    STREAM_SHARD_LAG.labels(stream).set(figures.lag)
    STREAM_SHARD_PENDING.labels(stream).set(figures.pending)
    STREAM_SHARD_OLDEST_PENDING_AGE.labels(stream).set(figures.oldest_pending_age_s)
    STREAM_SHARD_LENGTH.labels(stream).set(figures.length)
    DLQ_SHARD_DEPTH.labels(dlq).set(figures.dlq_depth)
    every = _stream_figures.values()
    STREAM_LAG.set(sum(f.lag for f in every))
    STREAM_PENDING.set(sum(f.pending for f in every))
    STREAM_OLDEST_PENDING_AGE.set(max(f.oldest_pending_age_s for f in every))
    STREAM_LENGTH.set(sum(f.length for f in every))
    DLQ_DEPTH.set(sum(f.dlq_depth for f in every))
