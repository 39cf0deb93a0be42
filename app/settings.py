"""Every setting of the service, read from `DATASTORAGE_*` environment variables."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The checkout's root: `schema/` lives here, and the embedded servers keep their data below it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DATASTORAGE_", extra="ignore")

    # Unset means: `datastorage run` starts an embedded one and the other commands refuse to guess.
    database_url: str | None = None
    redis_url: str | None = None

    http_port: int = Field(default=8080, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=1, le=65535)

    # Where `datastorage run` keeps the embedded Postgres and Redis data (git ignores it).
    data_dir: Path = PROJECT_ROOT / ".datastorage"
    # The embedded Redis listens here; 0 picks a free port.
    embedded_redis_port: int = Field(default=6380, ge=0, le=65535)

    schema_dir: Path = PROJECT_ROOT / "schema"
    # Monthly audit partitions kept ready ahead of the current month.
    partition_months_ahead: int = Field(default=3, ge=0, le=24)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable in a terminal, JSON otherwise (production, CI, pipes).
    log_format: Literal["auto", "json", "console"] = "auto"

