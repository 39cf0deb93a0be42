"""Each event's integrity status, for the timeline and the event page.

The seam for the tamper-evidence work (issue #14): today nothing seals events, so every status is
`unknown`. Once sealing has landed this answers, for a whole page of rows in one go, `sealed`
(covered by a verified checkpoint), `pending` (younger than the sealing bound) or `tampered`;
the templates already show whatever it returns (and colour those three).
"""

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

UNKNOWN = "unknown"


async def integrity_statuses(conn: AsyncConnection, rows: list[dict]) -> dict[uuid.UUID, str]:
    return {row["event_id"]: UNKNOWN for row in rows}
