"""Every setting of the service, read from `DATASTORAGE_*` environment variables."""

import contextlib
import os
import socket
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.audit.event import ValidationLimits
from app.catalog.playbook import MAX_CONTENT_BYTES
from app.streams.keys import StreamKeys

# The checkout's root: `schema/` lives here, and the embedded servers keep their data below it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# XDG's cache folder (~/.cache unless XDG_CACHE_HOME says otherwise).
USER_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
# Where Kubernetes mounts a pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def parse_category_days(text: str) -> dict[str, int]:
    """`security=3650,notification=90` → {"security": 3650, "notification": 90}."""
    days: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        category, _, value = item.partition("=")
        if not category.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{item!r}: expected CATEGORY=DAYS (days a whole number, 1 or more)")
        days[category.strip()] = int(value)
    return days


class MissingSetting(ValueError):
    """A setting the command needs is not set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATASTORAGE_", extra="ignore")

    # Unset means: `datastorage run` starts an embedded one and the other commands refuse to guess.
    database_url: str | None = None
    redis_url: str | None = None
    # The URL is that of any node of a Redis Cluster (app/core/redis_client.py).
    redis_cluster: bool = False

    # Read replicas of database_url (one URL, or several separated by whitespace): audit queries
    # and playbook search read from one whose replay is at most read_replica_max_lag_bytes of WAL
    # behind the primary (measured every read_replica_check_interval_s), else from the primary.
    database_read_url: str | None = None
    # 16 MiB: one WAL segment, about 13,000 stored events (1.3 KB of WAL each), 6.5 s of writes at
    # 2,000 events/s (ops/bench/wal_per_event.py, docs/SCALING.md).
    read_replica_max_lag_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    read_replica_check_interval_s: float = Field(default=1.0, gt=0)

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=1, le=65535)
    # 0 turns the /metrics listener off (several consumers on one machine, in tests).
    metrics_port: int = Field(default=9090, ge=0, le=65535)

    # Where `datastorage run` keeps the embedded Postgres and Redis data (git ignores it).
    data_dir: Path = PROJECT_ROOT / ".datastorage"
    # The embedded Redis listens here; 0 picks a free port.
    embedded_redis_port: int = Field(default=6380, ge=0, le=65535)

    schema_dir: Path = PROJECT_ROOT / "schema"
    # Monthly audit partitions kept ready ahead of the current month.
    partition_months_ahead: int = Field(default=3, ge=0, le=24)

    # The audit stream (fixed names other services write to, docs/ARCHITECTURE.md).
    stream: str = "audit_events"
    dlq_stream: str = "audit_dlq"
    consumer_group: str = "datastorage"
    # N > 1: the stream is sharded into audit_events:{0} … audit_events:{N-1} (app/streams/keys.py).
    stream_shards: int = Field(default=1, ge=1, le=1024)
    # The HTTP write path's WAIT after its XADDs: 0 answers once the Redis master has the events
    # (asynchronous replication: a fail-over can lose the last ones); n answers 202 only once n
    # replicas have them too, and writes them to Postgres instead when they do not within the timeout.
    stream_wait_replicas: int = Field(default=0, ge=0, le=16)
    stream_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    # One name per consumer process. A stable name (a StatefulSet pod's) lets a restarted consumer
    # take back its own pending entries at once; others are claimed after claim_idle_ms.
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    # 2,000: fewer round trips and seals per event than 500 (ops/bench/ingest.py: one consumer
    # 0.27 -> 0.33 of raw COPY); bytes are bounded by batch_max_bytes whatever the count.
    batch_max_records: int = Field(default=2000, ge=1, le=10_000)
    # The longest pause between reads of an empty stream (pauses start at 1 ms and double while it
    # stays empty); a batch is whatever arrived, up to batch_max_records.
    batch_wait_ms: int = Field(default=100, ge=1, le=10_000)
    max_deliveries: int = Field(default=5, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=1_000)
    claim_interval_s: float = Field(default=5.0, gt=0)
    hygiene_interval_s: float = Field(default=5.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    db_pool_size: int = Field(default=4, ge=1, le=100)
    # A batch read from the stream holds at most about this many bytes of entries.
    batch_max_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # The API's longest wait for a Postgres connection (a busy pool, a Postgres that does not
    # answer): then the request is a 503 with Retry-After.
    db_pool_timeout_s: float = Field(default=5.0, gt=0)

    # Event validation
    max_future_skew_s: float = Field(default=3600, ge=0)
    max_json_bytes: int = Field(default=256 * 1024, ge=1024)
    max_json_depth: int = Field(default=32, ge=2, le=1000)

    # Tamper evidence (docs/INTEGRITY.md). The Ed25519 key (PEM) of the processes that write and
    # seal; without it rows are stored unsealed (with a warning at start).
    audit_signing_key_file: Path | None = None
    # Every committed event is under a signed checkpoint within this bound.
    audit_sealing_bound_s: float = Field(default=10.0, gt=0)
    audit_checkpoint_interval_s: float = Field(default=5.0, gt=0)
    # The Redis stream audit_checkpoints is never trimmed below this many entries.
    audit_checkpoints_keep: int = Field(default=100_000, ge=100)
    # Top-level event_data keys an export replaces by their commitments (comma-separated).
    audit_export_redact: str = ""

    # Retention (app/audit/retention.py): days an event is kept, per-category days that replace it
    # for their category (`security=3650,notification=90`), and the floor below which a retention
    # is refused without --allow-shorter.
    retention_days: int = Field(default=2555, ge=1)
    retention_category_days: str = ""
    retention_floor_days: int = Field(default=365, ge=0)

    # HTTP API. Tokens: comma-separated (every right), or `TOKEN [SCOPES] [NAME]` lines in a file
    # (app/api/tokens.py); none configured = no auth. `kubernetes`: TokenReview + SubjectAccessReview.
    auth: Literal["tokens", "kubernetes"] = "tokens"
    api_tokens: str | None = None
    api_tokens_file: Path | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # A page of GET /api/v1/audit-events ends early once its events reach this many bytes of JSON
    # (the cursor continues after its last row): a response's memory is bounded by bytes, not rows.
    max_page_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # Slow clients (app/api/connections.py): a connection spends at most http_header_timeout_s
    # without a request in progress (opening, sending a head, idle); an idle keep-alive connection
    # is closed after http_keep_alive_s; at most http_max_connections are held (beyond, the
    # longest-waiting one is closed) and http_max_requests_in_flight handled at once (beyond: 503).
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    http_keep_alive_s: float = Field(default=5.0, gt=0)
    http_max_connections: int = Field(default=10_000, ge=16)
    http_max_requests_in_flight: int = Field(default=1_000, ge=1)
    # SIGTERM: /readyz answers 503 for http_drain_s while requests are still served (the Service
    # stops routing here), then in-flight requests get up to http_shutdown_timeout_s to finish.
    http_drain_s: float = Field(default=5.0, ge=0)
    http_shutdown_timeout_s: float = Field(default=25.0, gt=0)

    # DATASTORAGE_AUTH=kubernetes (app/api/kubernetes.py). The API server: this URL, or the pod's
    # in-cluster one (KUBERNETES_SERVICE_HOST/PORT) with the service account's token and CA.
    kubernetes_api_url: str | None = None
    kubernetes_token_file: Path = SERVICE_ACCOUNT_DIR / "token"
    kubernetes_ca_file: Path = SERVICE_ACCOUNT_DIR / "ca.crt"
    # The resource each request is reviewed on (verbs: get to read, create to write, update to
    # administer). A resource of our own group, not a real object: granting `update` on it changes
    # nothing in the cluster. Namespace: unset is the pod's own (else `default`).
    kubernetes_resource_group: str = "datastorage.dev"
    kubernetes_resource: str = "datastorage"
    kubernetes_resource_name: str = ""
    kubernetes_namespace: str | None = None
    # How long a TokenReview or SubjectAccessReview answer is reused (0: ask every time).
    kubernetes_cache_s: float = Field(default=10.0, ge=0)
    kubernetes_timeout_s: float = Field(default=5.0, gt=0)

    # Requests per second and burst per identity (token NAME, Kubernetes user, or client IP without
    # auth), per pod; unset = no limit.
    rate_limit_per_s: float | None = Field(default=None, gt=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)

    # Denied requests (401, 403) become one self-audit event per identity and window once they
    # reach the threshold in it: the trail sees an attack without being flooded by it.
    audit_denied_threshold: int = Field(default=5, ge=1)
    audit_denied_window_s: float = Field(default=60.0, gt=0)

    # The viewer (/ui/): live tails open at once per process, how often each looks for newly
    # committed rows, and how far back in event time it compares them (app/audit/arrivals.py).
    ui_tail_max_clients: int = Field(default=16, ge=0, le=1000)
    ui_tail_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    ui_tail_lookback_s: float = Field(default=3600, gt=0)

    # The playbook embedding model's runtime: onnx (exported once into model_cache_dir; same
    # vectors, twice as fast) or torch (sentence-transformers as published).
    embedding_backend: Literal["onnx", "torch"] = "onnx"
    # The user's cache by default: one export per machine, shared by every checkout, and not in
    # data_dir (which a fresh `datastorage run` may start from scratch).
    model_cache_dir: Path = USER_CACHE_DIR / "datastorage" / "models"
    embedding_sweep_interval_s: float = Field(default=30.0, gt=0)
    # A playbook version's content is refused beyond this many bytes (UTF-8).
    playbook_max_content_bytes: int = Field(default=MAX_CONTENT_BYTES, ge=1024)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable in a terminal, JSON otherwise (production, CI, pipes).
    log_format: Literal["auto", "json", "console"] = "auto"

    @cached_property
    def stream_keys(self) -> StreamKeys:
        return StreamKeys(stream=self.stream, dlq=self.dlq_stream, group=self.consumer_group, shards=self.stream_shards)

    @property
    def max_entry_bytes(self) -> int:
        """The largest stream entry that can be a storable event: two JSON objects at their limit
        and room for the other fields. A larger one is dead-lettered as too_large unread."""
        return 2 * self.max_json_bytes + 16 * 1024

    @field_validator("retention_category_days")
    @classmethod
    def _category_days(cls, value: str) -> str:
        parse_category_days(value)  # a typo fails at start, not at the first retention run
        return value

    @cached_property
    def validation_limits(self) -> ValidationLimits:
        return ValidationLimits(
            max_future_skew=timedelta(seconds=self.max_future_skew_s),
            max_json_bytes=self.max_json_bytes,
            max_json_depth=self.max_json_depth,
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise MissingSetting(self._missing("DATASTORAGE_DATABASE_URL", "Postgres"))
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise MissingSetting(self._missing("DATASTORAGE_REDIS_URL", "Redis"))
        return self.redis_url

    def _missing(self, variable: str, server: str) -> str:
        return (
            f"{variable} is not set and no `datastorage run` is up on {self.data_dir}. Start one "
            f"(`.venv/bin/datastorage run` in another terminal, from the same folder or with the same "
            f"DATASTORAGE_DATA_DIR) and this command uses its embedded {server}; or set "
            "DATASTORAGE_DATABASE_URL and DATASTORAGE_REDIS_URL to your own servers."
        )

    def secret_values(self) -> list[str]:
        """The passwords in the configured URLs and the API tokens: never logged (app/core/logs.py)."""
        urls = (self.database_url, self.redis_url, *self.database_read_urls())
        values = [urlsplit(url).password for url in urls if url]
        values += [token.strip() for token in (self.api_tokens or "").split(",")]
        if self.api_tokens_file is not None and self.api_tokens_file.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in self.api_tokens_file.read_text().splitlines():
                    values += line.split("#", 1)[0].split()[:1]
        return [value for value in values if value]

    def database_read_urls(self) -> list[str]:
        return (self.database_read_url or "").split()

    def kubernetes_pod_namespace(self) -> str:
        if self.kubernetes_namespace:
            return self.kubernetes_namespace
        own = self.kubernetes_token_file.parent / "namespace"
        return own.read_text().strip() if own.is_file() else "default"
