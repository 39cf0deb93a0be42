"""`/ui/dlq`: the dead letters, by reason, with their errors and original fields. Read-only: replay
and purge stay with `datastorage dlq` (an operator's deliberate act, not a click)."""

from collections import Counter, deque
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.api.resources import resources
from app.streams.dlq import DLQ_FIELDS
from app.streams.ids import entry_id_time
from app.streams.operations import DeadLetterEntry, iterate_dlq
from app.ui.events import form_values
from app.ui.rendering import PageError, Viewer, page

# The DLQ is never trimmed; a page reads this many dead letters at most (oldest first) and says so.
SCANNED_AT_MOST = 10_000
SHOWN_PER_REASON = 100
# Fields shown in the summary of each dead letter, before the original fields.
SUMMARY_FIELDS = ("event_type", "service_name", "correlation_id", "event_id")


@dataclass(frozen=True)
class Letter:
    id: str
    fields: dict[str, str]

    @property
    def failed_at(self):
        return entry_id_time(self.id)

    @property
    def original(self) -> dict[str, str]:
        return {k: v for k, v in self.fields.items() if k not in DLQ_FIELDS}


@page
async def dlq_page(viewer: Viewer, request: Request) -> Response:
    values = form_values(request)
    reason = values.pop("reason", None)
    if values:
        raise PageError(400, f"{next(iter(values))}: unknown query parameter")
    client, stream = resources(request).redis, viewer.settings.dlq_stream
    depth = await client.xlen(stream)
    counts: Counter[str] = Counter()
    newest: dict[str, deque[DeadLetterEntry]] = {}
    read = 0
    async for entry in iterate_dlq(client, stream, reason=reason):
        counts[entry.reason] += 1
        newest.setdefault(entry.reason, deque(maxlen=SHOWN_PER_REASON)).append(entry)
        read += 1
        if read >= SCANNED_AT_MOST:
            break
    by_reason = [
        (name, count, [Letter(e.id, e.as_text()) for e in reversed(newest[name])])
        for name, count in counts.most_common()
    ]
    return viewer.render(
        request,
        "dlq.html",
        {
            "depth": depth,
            "reason": reason,
            "by_reason": by_reason,
            "read": read,
            "truncated": read >= SCANNED_AT_MOST,
            "shown_per_reason": SHOWN_PER_REASON,
            "summary_fields": SUMMARY_FIELDS,
            "title": "Dead letters",
        },
    )
