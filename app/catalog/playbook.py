"""The playbook record (DD-STORAGE-008, docs/PLAN.md): one model owns its fields, types and limits.

`PlaybookEntry` is what a catalog file (and the import) writes; `PlaybookRecord` is a stored row as
the API returns it: the entry plus the columns the database and the service maintain. The upsert,
the SELECT lists and the API's JSON Schema are derived from these two models.
"""

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, get_args

import asyncpg
import semver
from pydantic import BaseModel, ConfigDict, Field, field_validator

PlaybookStatus = Literal["active", "disabled", "deprecated", "archived"]
PLAYBOOK_STATUSES: tuple[str, ...] = get_args(PlaybookStatus)


# A playbook's content is a runbook, not a data store: 1 MiB by default
# (DATASTORAGE_PLAYBOOK_MAX_CONTENT_BYTES).
MAX_CONTENT_BYTES = 1024 * 1024


class CatalogError(ValueError):
    pass


def parse_version(version: str) -> semver.Version:
    return semver.Version.parse(version.removeprefix("v"))


def canonical_version(version: str) -> str:
    """The version as semantic versioning compares it: no leading v, no build metadata, so that
    v1.0.0, 1.0.0 and 1.0.0+build.7 are one version (as schema/007's playbook_version_canonical)."""
    return version.removeprefix("v").removeprefix("V").split("+", 1)[0]


def content_bytes(entry: "PlaybookEntry") -> int:
    return len(entry.content.encode())


def version_key(version: str) -> tuple:
    """Semantic-version order; a version that is not one sorts below every one that is."""
    try:
        return (1, parse_version(version))
    except ValueError:
        return (0, version)


class PlaybookEntry(BaseModel):
    """One version of a playbook, as the catalog file (and the import) carries it."""

    model_config = ConfigDict(extra="ignore")

    playbook_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=50)
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1)
    content: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    owner: str | None = Field(default=None, max_length=255)
    maintainer: str | None = Field(default=None, max_length=255)
    status: PlaybookStatus = "active"
    disabled_reason: str | None = None
    disabled_by: str | None = Field(default=None, max_length=255)
    deprecation_notice: str | None = None
    version_notes: str | None = None
    change_summary: str | None = None
    approved_by: str | None = Field(default=None, max_length=255)
    expected_success_rate: float | None = Field(default=None, ge=0, le=1)
    expected_duration_seconds: int | None = Field(default=None, ge=0)

    @field_validator("version")
    @classmethod
    def _semantic_version(cls, value: str) -> str:
        try:
            parse_version(value)
        except ValueError:
            raise ValueError("must be a semantic version such as v1.2.0") from None
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _label_values_as_text(cls, value: Any) -> Any:
        # YAML reads `priority: 1` as a number; label filters compare text.
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value


class PlaybookRecord(PlaybookEntry):
    """A stored version, as the API returns it."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    content_hash: str
    disabled_at: datetime | None = None
    is_latest_version: bool
    previous_version: str | None = None
    approved_at: datetime | None = None
    actual_success_rate: float | None = None
    total_executions: int | None = None
    successful_executions: int | None = None
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    updated_by: str | None = None


ENTRY_COLUMNS: tuple[str, ...] = tuple(PlaybookEntry.model_fields)
RECORD_COLUMNS: tuple[str, ...] = tuple(PlaybookRecord.model_fields)
SELECT_RECORD = ", ".join(RECORD_COLUMNS)


def record_json(row: asyncpg.Record) -> dict[str, Any]:
    """A stored row as the API returns it."""
    out = {}
    for name, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = float(value)
        elif name == "labels":
            value = json.loads(value)
        out[name] = value
    return out


# A version search may offer: active, and the latest of its playbook.
SEARCHABLE_VERSION = "status = 'active' AND is_latest_version"
