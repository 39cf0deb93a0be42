"""Events older than 12 months (the plan's edge case): accepted like any other, into the month
they belong to (its partition is created first), and logged, so that an operator sees a producer
replaying old history or running with a wrong clock."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog

from app.audit.identity import Submission

OLD_EVENT_AGE = timedelta(days=365)

log = structlog.get_logger(__name__)


def log_old_events(submissions: Iterable[Submission], *, path: str) -> int:
    """Logs each stored event older than OLD_EVENT_AGE (with its correlation and trace ids
    bound); returns how many."""
    now = datetime.now(UTC)
    count = 0
    for submission in submissions:
        event = submission.event
        age = now - event.event_timestamp
        if age <= OLD_EVENT_AGE:
            continue
        count += 1
        with structlog.contextvars.bound_contextvars(correlation_id=event.correlation_id, trace_id=event.trace_id):
            log.info(
                "old_event_accepted",
                event_id=str(event.event_id),
                event_timestamp=event.event_timestamp.isoformat(),
                age_days=age.days,
                path=path,
            )
    return count
