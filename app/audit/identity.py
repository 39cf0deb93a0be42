"""What makes two submissions the same event (issue 12): one event_id is one event.

An event whose event_id is stored already is the same event when every field its producer sent
matches; the fields the service derived (a missing event_id or event_timestamp) do not count, so a
redelivered entry or a retried POST without a timestamp is a no-op whatever time was derived then.
A different event under a stored id is refused (`duplicate_event_id`).
"""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

import orjson

from app.audit.event import AuditEvent

# Fields the service may derive when a producer leaves them out.
DERIVABLE = frozenset({"event_id", "event_timestamp"})
_COMPARED = tuple(name for name in AuditEvent.model_fields if name not in DERIVABLE)
_compared_values = attrgetter(*_COMPARED)


@dataclass(frozen=True)
class Submission:
    """An event as a producer submitted it: `derived` names the fields the service filled in."""

    event: AuditEvent
    derived: frozenset[str] = field(default_factory=frozenset)

    @property
    def sent_timestamp(self) -> datetime | None:
        return None if "event_timestamp" in self.derived else self.event.event_timestamp

    def fingerprint(self) -> bytes:
        """SHA-256 of the fields that must match, event_id and event_timestamp aside (the
        timestamp is compared on its own: only when both submissions sent one)."""
        return hashlib.sha256(orjson.dumps(_compared_values(self.event), option=orjson.OPT_SORT_KEYS)).digest()


def same_event(submission: Submission, fingerprint: bytes, sent_timestamp: datetime | None) -> bool:
    """Whether `submission` is the event stored with `fingerprint` and `sent_timestamp`."""
    if fingerprint == b"":  # stored before fingerprints existed: the id is all we know
        return True
    if fingerprint != submission.fingerprint():
        return False
    mine = submission.sent_timestamp
    return mine is None or sent_timestamp is None or mine == sent_timestamp
