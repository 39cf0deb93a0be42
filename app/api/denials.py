"""Denied requests in the audit trail, summarised: one event per identity and window.

Every 401 and 403 is counted against its identity (a token's NAME or Kubernetes user; the client
address when no token was recognised). At the end of each window (`DATASTORAGE_AUDIT_DENIED_WINDOW_S`,
60 s) each identity whose count reached `DATASTORAGE_AUDIT_DENIED_THRESHOLD` becomes one
`datastorage.access.denied` event carrying the count, statuses, missing scopes and paths. An
attacker can therefore add at most one event per identity and window to the trail, and the table
holds at most MAX_IDENTITIES identities (the rest are counted together).
"""

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from app.audit.identity import Submission
from app.audit.self_audit import Action, Actor, operator_event
from app.audit.writer import AuditWriter, StoresUnavailable
from app.core import metrics

log = structlog.get_logger(__name__)

MAX_IDENTITIES = 10_000
# Distinct paths and client addresses kept per identity and window (the rest are only counted).
MAX_DETAILS = 20
OTHERS = "(other identities)"


@dataclass
class Tally:
    actor: Actor
    first_at: datetime
    last_at: datetime
    count: int = 0
    statuses: Counter = field(default_factory=Counter)
    scopes: Counter = field(default_factory=Counter)
    paths: Counter = field(default_factory=Counter)
    clients: set[str] = field(default_factory=set)

    def add(self, status: int, path: str, scope: str | None, client: str, now: datetime) -> None:
        self.count += 1
        self.last_at = now
        self.statuses[str(status)] += 1
        if scope:
            self.scopes[scope] += 1
        if path in self.paths or len(self.paths) < MAX_DETAILS:
            self.paths[path] += 1
        if len(self.clients) < MAX_DETAILS:
            self.clients.add(client)

    def event_data(self, window_s: float) -> dict:
        return {
            "denied": self.count,
            "window_s": window_s,
            "statuses": dict(self.statuses),
            "missing_scopes": dict(self.scopes),
            "paths": dict(self.paths.most_common(MAX_DETAILS)),
            "clients": sorted(self.clients),
            "first_at": self.first_at.isoformat(),
            "last_at": self.last_at.isoformat(),
        }


class DeniedRequests:
    def __init__(self, threshold: int, window_s: float):
        self.threshold = threshold
        self.window_s = window_s
        self.tallies: dict[str, Tally] = {}

    def count(
        self, identity: str, authenticated: bool, status: int, path: str, client: str, scope: str | None = None
    ) -> None:
        metrics.ACCESS_DENIED.labels(str(status)).inc()
        now = datetime.now(UTC)
        key = identity if identity in self.tallies or len(self.tallies) < MAX_IDENTITIES else OTHERS
        tally = self.tallies.get(key)
        if tally is None:
            # A recognised token is an operator of ours; an unknown caller is only an address.
            actor = Actor(key, kind="operator" if authenticated and key != OTHERS else "user")
            tally = self.tallies[key] = Tally(actor, now, now)
        tally.add(status, path[:200], scope, client, now)

    async def flush(self, writer: AuditWriter) -> int:
        """Writes the events of the window that ends now; returns how many."""
        tallies, self.tallies = self.tallies, {}
        events = [
            operator_event(
                Action.ACCESS_DENIED,
                tally.actor,
                resource_type="http_api",
                resource_id="datastorage",
                outcome="failure",
                data=tally.event_data(self.window_s),
            )
            for tally in tallies.values()
            if tally.count >= self.threshold
        ]
        if not events:
            return 0
        try:
            await writer.write([Submission(event) for event in events])
        except StoresUnavailable:
            metrics.SELF_AUDIT_WRITE_FAILURES.inc(len(events))
            log.error("access_denied_events_lost", events=len(events))
            return 0
        log.warning("access_denied_recorded", identities=[e.actor_id for e in events])
        return len(events)

    async def run(self, writer: AuditWriter, stop: asyncio.Event) -> None:
        """Flushes at the end of every window, and once more when stopped."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.window_s)
            await self.flush(writer)
