"""Redis stream entry ids (`<milliseconds>-<sequence>`) and replies, as every stream user needs them."""

from datetime import UTC, datetime


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py gives bytes unless told otherwise)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """Stream order of an entry id."""
    millis, sequence = entry_id.split("-")
    return int(millis), int(sequence)


def entry_id_seconds(entry_id: str) -> float:
    """The time Redis gave the entry, in seconds since the epoch: the milliseconds part of its id."""
    return int(entry_id.split("-", 1)[0]) / 1000


def entry_id_time(entry_id: str) -> datetime:
    """The time Redis gave the entry: the milliseconds part of its id."""
    return datetime.fromtimestamp(entry_id_seconds(entry_id), tz=UTC)
