"""Every setting of the service, read from `DATASTORAGE_*` environment variables."""

import os
import socket
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.audit.event import ValidationLimits
from app.streams.keys import StreamKeys

# The checkout's root: `schema/` lives here, and the embedded servers keep their data below it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class MissingSetting(ValueError):
    """A setting the command needs is not set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATASTORAGE_", extra="ignore")

    # Unset means: `datastorage run` starts an embedded one and the other commands refuse to guess.
    database_url: str | None = None
    redis_url: str | None = None

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
    # One name per consumer process. A stable name (a StatefulSet pod's) lets a restarted consumer
    # take back its own pending entries at once; others are claimed after claim_idle_ms.
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    batch_max_records: int = Field(default=500, ge=1, le=10_000)
    # How long one read waits for entries; a batch is whatever arrived, up to batch_max_records.
    batch_wait_ms: int = Field(default=100, ge=1, le=10_000)
    max_deliveries: int = Field(default=5, ge=1)
    claim_idle_ms: int = Field(default=60_000, ge=1_000)
    claim_interval_s: float = Field(default=5.0, gt=0)
    hygiene_interval_s: float = Field(default=5.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    db_pool_size: int = Field(default=4, ge=1, le=100)

    # Event validation
    max_future_skew_s: float = Field(default=3600, ge=0)
    max_json_bytes: int = Field(default=256 * 1024, ge=1024)
    max_json_depth: int = Field(default=32, ge=2, le=1000)

    # HTTP API. Tokens: comma-separated, or one per line in a file; none configured = no auth.
    api_tokens: str | None = None
    api_tokens_file: Path | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    # The viewer (/ui/): live tails open at once per process, how often each looks for newly
    # committed rows, and how far back in event time it compares them (app/audit/arrivals.py).
    ui_tail_max_clients: int = Field(default=16, ge=0, le=1000)
    ui_tail_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    ui_tail_lookback_s: float = Field(default=3600, gt=0)

    # The playbook embedding model's runtime: onnx (exported once into model_cache_dir; same
    # vectors, twice as fast) or torch (sentence-transformers as published).
    embedding_backend: Literal["onnx", "torch"] = "onnx"
    model_cache_dir: Path = PROJECT_ROOT / ".datastorage" / "models"
    embedding_sweep_interval_s: float = Field(default=30.0, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable in a terminal, JSON otherwise (production, CI, pipes).
    log_format: Literal["auto", "json", "console"] = "auto"

    @cached_property
    def stream_keys(self) -> StreamKeys:
        return StreamKeys(stream=self.stream, dlq=self.dlq_stream, group=self.consumer_group)

    @cached_property
    def validation_limits(self) -> ValidationLimits:
        return ValidationLimits(
            max_future_skew=timedelta(seconds=self.max_future_skew_s),
            max_json_bytes=self.max_json_bytes,
            max_json_depth=self.max_json_depth,
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise MissingSetting(
                "DATASTORAGE_DATABASE_URL is not set (only `datastorage run` starts an embedded Postgres)"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise MissingSetting("DATASTORAGE_REDIS_URL is not set (only `datastorage run` starts an embedded Redis)")
        return self.redis_url

    def api_token_set(self) -> frozenset[str]:
        tokens = [t.strip() for t in (self.api_tokens or "").split(",")]
        if self.api_tokens_file is not None:
            tokens += [line.strip() for line in self.api_tokens_file.read_text().splitlines()]
        return frozenset(t for t in tokens if t)
