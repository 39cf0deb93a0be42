"""Each event's integrity status, for the timeline and the event page.

As `datastorage audit verify --correlation-id` would find it, in two parts (app/audit/integrity/):
the seal chain and the checkpoints published in Redis, checked once per process and then only
what was added since (checked_chain.py: it does not depend on the page; the whole chain again
every ten minutes, in the background), and the page's own rows, each re-hashed with its salt
against the leaf its seal lists, on every view (verify.verify_rows: its cost is the page's, not
the chain's). Each row gets:

* `sealed`: its seal holds it unchanged and the chain verifies;
* `pending`: not sealed yet, younger than the sealing bound;
* `tampered`: a finding names it (changed, re-dated, inserted, or a leaf re-dated in its seal);
* `unsealed`: stored without a seal (no signing key then);
* `unknown`: nothing to check against (no signing key configured, no correlation id, or the
  checkpoints could not be read), or a seal or checkpoint was altered (a broken chain vouches
  for no row).

The templates show whatever it returns and colour the first three.
"""

import uuid
from datetime import timedelta

import structlog

from app.api.resources import Resources
from app.audit.integrity.checked_chain import CheckpointsUnavailable
from app.audit.integrity.verify import Report, verify_rows

log = structlog.get_logger(__name__)

UNKNOWN, SEALED, PENDING, TAMPERED, UNSEALED = "unknown", "sealed", "pending", "tampered", "unsealed"
# A page shows statuses for at most this many correlations (a list page of unrelated events shows unknown).
MAX_CORRELATIONS = 5


async def integrity_statuses(found: Resources, rows: list[dict]) -> dict[uuid.UUID, str]:
    statuses = {row["event_id"]: UNKNOWN for row in rows}
    checked = [row for row in rows if row.get("correlation_id")]
    if found.verifier is None or not checked or len({row["correlation_id"] for row in checked}) > MAX_CORRELATIONS:
        return statuses
    try:
        chain = await found.checked_chain.current(found.pool, found.redis, found.verifier)
    except CheckpointsUnavailable as error:  # Redis away: the page shows, the status is unknown
        log.warning("viewer_integrity_unavailable", error=str(error))
        return statuses
    report = Report()
    async with found.pool.acquire() as conn:
        sealed = await verify_rows(
            conn,
            found.verifier,
            [(row["event_id"], row["event_date"]) for row in checked],
            report,
            sealing_bound=timedelta(seconds=found.settings.audit_sealing_bound_s),
            passed=found.checked_chain.passed_seals,
        )
    named = {f.event_id: f.kind for f in report.findings if f.event_id}
    # A finding about one of the page's seals (altered, forged, leaves rewritten) names no row.
    broken = chain.broken or any(f.event_id is None for f in report.findings)
    for row in checked:
        if row["event_id"] in sealed:
            statuses[row["event_id"]] = _status(str(row["event_id"]), named, sealed[row["event_id"]], broken)
    return statuses


def _status(event_id: str, named: dict[str, str], sealed: bool, chain_broken: bool) -> str:
    if event_id in named:
        return UNSEALED if named[event_id] == "row_unsealed" else TAMPERED
    if not sealed:
        return PENDING  # verify names an unsealed row older than the bound; this one is young
    # A broken chain (an altered or missing seal elsewhere) vouches for no row.
    return UNKNOWN if chain_broken else SEALED
