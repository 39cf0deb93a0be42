"""Each event's integrity status, for the timeline and the event page.

The page's correlations are verified as `datastorage audit verify --correlation-id` would
(app/audit/integrity/verify.py: the seal chain, each row against its seal's signed leaves, the
checkpoints published in Redis), and each row gets:

* `sealed`: its seal holds it unchanged and the chain verifies;
* `pending`: not sealed yet, younger than the sealing bound;
* `tampered`: a finding names it (changed, re-dated, inserted) or its seal;
* `unsealed`: stored without a seal (no signing key then);
* `unknown`: nothing to check against (no signing key configured, no correlation id, or the
  checkpoints could not be read).

The templates show whatever it returns and colour the first three.
"""

import uuid
from datetime import timedelta

import structlog

from app.api.resources import Resources
from app.audit.integrity.checkpoints import published_checkpoints
from app.audit.integrity.verify import Window, verify

log = structlog.get_logger(__name__)

UNKNOWN, SEALED, PENDING, TAMPERED, UNSEALED = "unknown", "sealed", "pending", "tampered", "unsealed"
# Findings about the checkpoints' coverage, not about rows or seals: no reason to doubt a row.
_COVERAGE_ONLY = {"no_checkpoint", "seal_not_checkpointed"}
# A page verifies at most this many correlations (a list page of unrelated events shows unknown).
MAX_CORRELATIONS = 5


async def integrity_statuses(found: Resources, rows: list[dict]) -> dict[uuid.UUID, str]:
    statuses = {row["event_id"]: UNKNOWN for row in rows}
    correlations = {row["correlation_id"] for row in rows if row.get("correlation_id")}
    if found.verifier is None or not correlations or len(correlations) > MAX_CORRELATIONS:
        return statuses
    try:
        checkpoints = await published_checkpoints(found.redis)
    except Exception as error:  # noqa: BLE001 - Redis away: the page shows, the status is unknown
        log.warning("viewer_integrity_unavailable", error=type(error).__name__)
        return statuses
    bound = timedelta(seconds=found.settings.audit_sealing_bound_s)
    async with found.pool.acquire() as conn:
        for correlation_id in sorted(correlations):
            report = await verify(conn, found.verifier, checkpoints, Window(correlation_id=correlation_id),
                                  sealing_bound=bound)  # fmt: skip
            named = {f.event_id: f.kind for f in report.findings if f.event_id}
            chain_broken = any(f.event_id is None and f.kind not in _COVERAGE_ONLY for f in report.findings)
            sealed = {
                str(record["event_id"])
                for record in await conn.fetch(
                    "SELECT event_id FROM audit_events_all WHERE correlation_id = $1 AND seal_id IS NOT NULL",
                    correlation_id,
                )
            }
            for row in rows:
                if row.get("correlation_id") == correlation_id:
                    statuses[row["event_id"]] = _status(str(row["event_id"]), named, sealed, chain_broken)
    return statuses


def _status(event_id: str, named: dict[str, str], sealed: set[str], chain_broken: bool) -> str:
    if event_id in named:
        return UNSEALED if named[event_id] == "row_unsealed" else TAMPERED
    if event_id not in sealed:
        return PENDING  # verify names an unsealed row older than the bound; this one is young
    # A broken chain (an altered or missing seal elsewhere) vouches for no row.
    return UNKNOWN if chain_broken else SEALED
