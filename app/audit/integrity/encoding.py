"""The canonical encoding of a stored audit row, version 1 (docs/INTEGRITY.md), and its leaf hash.

A row is encoded as the JSON array `[1, <value of each column in ENCODED_COLUMNS order>]`.
`event_data` is encoded as the object of its top-level keys, each mapped to a salted commitment of
its value, so that an export can withhold a value and still prove the row. Test vectors in
tests/test_integrity_encoding.py pin the bytes: changing this module means a new version.
"""

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

VERSION = 1
# The columns of a row as version 1 encodes them, in order. Never reorder or extend in place.
ENCODED_COLUMNS: tuple[str, ...] = (
    "event_id", "event_type", "event_category", "event_outcome", "event_timestamp", "event_date",
    "service_name", "service_version", "actor_type", "actor_id", "actor_name", "resource_type",
    "resource_id", "resource_name", "event_data", "correlation_id", "parent_event_id", "trace_id",
    "span_id", "metadata",
)  # fmt: skip
SALT_BYTES = 16
LEAF_PREFIX = b"\x00"
_EVENT_DATA = ENCODED_COLUMNS.index("event_data")
_EVENT_TIMESTAMP = ENCODED_COLUMNS.index("event_timestamp")
_UUIDS = (ENCODED_COLUMNS.index("event_id"), ENCODED_COLUMNS.index("parent_event_id"))


def canonical_json(value: Any) -> bytes:
    """No whitespace, keys sorted, UTF-8, shortest round-trip floats (orjson's rules); -0.0 is 0.0."""
    encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if b"-0.0" in encoded:  # rare: look closer only then (the bytes may be inside a string)
        encoded = orjson.dumps(_without_negative_zero(value), option=orjson.OPT_SORT_KEYS)
    return encoded


def _without_negative_zero(value: Any) -> Any:
    """jsonb has no negative zero (it stores -0.0 as 0.0): encode what Postgres keeps, or a row
    holding -0.0 would not verify."""
    if isinstance(value, float):
        return 0.0 if value == 0 else value
    if isinstance(value, dict):
        return {key: _without_negative_zero(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_negative_zero(item) for item in value]
    return value


def opening(salt: bytes, key: str) -> bytes:
    """What reveals one event_data key's commitment: H(row salt || key)."""
    return hashlib.sha256(salt + key.encode()).digest()


def commitment(key_opening: bytes, value: Any) -> str:
    return hashlib.sha256(key_opening + canonical_json(value)).hexdigest()


def event_data_commitments(event_data: Mapping[str, Any], salt: bytes) -> dict[str, str]:
    # opening() and commitment() inlined: verification runs this for every key of every row.
    sha256, dumps, commitments = hashlib.sha256, orjson.dumps, {}
    for key, value in event_data.items():
        encoded = dumps(value, option=orjson.OPT_SORT_KEYS)
        if b"-0.0" in encoded:
            encoded = canonical_json(value)
        commitments[key] = sha256(sha256(salt + key.encode()).digest() + encoded).hexdigest()
    return commitments


def timestamp_text(value: datetime) -> str:
    """UTC, always six fraction digits: `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def encode_row(values: Sequence[Any], salt: bytes, *, committed: Mapping[str, str] | None = None) -> bytes:
    """The encoding of a row given its values in ENCODED_COLUMNS order (event_data as an object,
    metadata as an object or None). `committed` replaces the event_data commitments (a redacted
    export carries commitments, not values)."""
    # Only some columns need a conversion: orjson writes dates (YYYY-MM-DD) as the encoding wants
    # them, but not asyncpg's UUID type, and a datetime without a fraction when it has none.
    items: list[Any] = [VERSION, *values]
    for position in _UUIDS:
        if values[position] is not None:
            items[position + 1] = str(values[position])
    if isinstance(timestamp := values[_EVENT_TIMESTAMP], datetime):
        items[_EVENT_TIMESTAMP + 1] = timestamp_text(timestamp)
    event_data = values[_EVENT_DATA]
    items[_EVENT_DATA + 1] = committed if committed is not None else event_data_commitments(event_data, salt)
    return canonical_json(items)


def leaf_hash(encoded_row: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + encoded_row).digest()
