"""How the templates show values: times (UTC in the page, the viewer's zone by script), durations,
JSON, and path segments. Every value still goes through Jinja's autoescaping: these only shape text."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import orjson

# What a page shows of one JSON document before it says "truncated" (a stored one may be 256 KiB).
PREVIEW_CHARS = 120
EXPANDED_CHARS = 8_000
OUTCOMES = ("success", "failure", "pending", "skipped")


def utc_text(moment: datetime) -> str:
    """`2026-11-25 14:03:07.123 UTC`: what a page shows without its script, and on hover."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def iso_utc(moment: datetime) -> str:
    """The `datetime` attribute the page's script reads (milliseconds, `Z`)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration_text(span: timedelta | None) -> str:
    if span is None:
        return ""
    seconds = span.total_seconds()
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 1:
        text = f"{seconds * 1000:.0f} ms"
    elif seconds < 60:
        text = f"{seconds:.1f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min {int(seconds % 60)} s"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    else:
        text = f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
    return sign + text


def truncated(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


# event_data and metadata come from app/audit/query.py as JSON text (Postgres's jsonb output, numbers
# exact); other values (a playbook's labels) as Python objects.


def json_compact(value: Any, limit: int = PREVIEW_CHARS) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return truncated(text, limit)


def json_pretty(value: Any, limit: int | None = EXPANDED_CHARS) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        # The standard library's parser keeps integers of any size exact (orjson's would refuse
        # those beyond 64 bits); the page only re-indents the document.
        text = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    else:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return text if limit is None else truncated(text, limit)


def outcome_class(outcome: str | None) -> str:
    """A CSS class for an outcome; the class list is the service's, never the value's own text."""
    return f"outcome-{outcome}" if outcome in OUTCOMES else "outcome-other"


def segment(value: Any) -> str:
    """One path segment: `/` and everything else reserved percent-encoded (the value stays a
    segment of our own path, never a URL of its own)."""
    return quote(str(value), safe="")


def query_string(values: dict[str, Any], **changes: Any) -> str:
    merged = {**values, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


FILTERS = {
    "utc": utc_text,
    "iso_utc": iso_utc,
    "duration": duration_text,
    "json_compact": json_compact,
    "json_pretty": json_pretty,
    "outcome_class": outcome_class,
    "segment": segment,
    "truncated": truncated,
}
