"""Every Prometheus metric of the service, in one place (names follow Prometheus conventions)."""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

AUDIT_WRITES = Counter(
    "datastorage_audit_writes_total",
    "Audit stream entries by outcome: stored (new row), duplicate (row existed), dead_lettered.",
    ["outcome"],
)
AUDIT_WRITE_ERRORS = Counter(
    "datastorage_audit_write_errors_total", "Failed batch writes by kind (transient, permanent, ambiguous).", ["kind"]
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
DB_CONNECTIONS_IN_USE = Gauge("datastorage_db_connections_in_use", "Postgres connections of this process in use.")

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
PLAYBOOK_STALE_EMBEDDINGS = Gauge(
    "datastorage_playbook_stale_embeddings",
    "Playbook rows whose embedding is missing or older than their text, as last counted.",
)


def start_metrics_server(port: int) -> None:
    """Serves /metrics on `port` in a thread (0: not at all, e.g. several consumers in one test)."""
    if port:
        start_http_server(port)
