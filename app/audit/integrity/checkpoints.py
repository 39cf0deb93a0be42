"""Checkpoints of the seal chain, kept outside the database (docs/INTEGRITY.md).

One process at a time checkpoints: whoever holds a Postgres session advisory lock (any consumer,
or `datastorage run`; when it dies its connection goes and another one takes over). Every
`audit_checkpoint_interval_s`, when the chain head moved, it signs the head's index, hash and row
total, stores the checkpoint, appends it to the Redis stream `audit_checkpoints` and logs it, so
log shipping keeps a copy too. A checkpoint stored but not yet in Redis (Redis was away) is
published the next round.
"""

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis
import redis.asyncio as aioredis
import structlog

from app.audit.integrity.encoding import canonical_json
from app.audit.integrity.keys import Signer, Verifier
from app.core import metrics
from app.core.db import connect
from app.core.settings import Settings
from app.streams.ids import as_text

log = structlog.get_logger(__name__)

CHECKPOINT_STREAM = "audit_checkpoints"
CHECKPOINT_VERSION = 1
# Any fixed 64-bit number, unique to this purpose within the database.
CHECKPOINTER_LOCK_ID = 0x61756469_74636B70  # "auditckp"
_FIELDS = ("checkpoint_index", "chain_index", "seal_hash", "rows_total", "created_at", "key_id", "signature")


@dataclass(frozen=True)
class Checkpoint:
    checkpoint_index: int
    chain_index: int
    seal_hash: bytes
    rows_total: int
    created_at: datetime
    key_id: str
    signature: bytes = b""

    def canonical(self) -> bytes:
        return canonical_json({
            "v": CHECKPOINT_VERSION, "checkpoint_index": self.checkpoint_index, "chain_index": self.chain_index,
            "seal_hash": self.seal_hash.hex(), "rows_total": self.rows_total,
            "created_at": self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "key_id": self.key_id,
        })  # fmt: skip

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def signature_valid(self, verifier: Verifier) -> bool:
        return verifier.verify(self.signature, self.hash)

    def as_json(self) -> dict[str, Any]:
        """What `datastorage audit checkpoints --json` prints, and `--checkpoint FILE` reads."""
        return {
            "checkpoint_index": self.checkpoint_index, "chain_index": self.chain_index,
            "seal_hash": self.seal_hash.hex(), "rows_total": self.rows_total,
            "created_at": self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_id": self.key_id, "signature": self.signature.hex(),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Checkpoint":
        return cls(
            checkpoint_index=int(data["checkpoint_index"]), chain_index=int(data["chain_index"]),
            seal_hash=bytes.fromhex(str(data["seal_hash"])), rows_total=int(data["rows_total"]),
            created_at=datetime.fromisoformat(str(data["created_at"]).replace("Z", "+00:00")),
            key_id=str(data["key_id"]), signature=bytes.fromhex(str(data["signature"])),
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> "Checkpoint":
        return cls(
            record["checkpoint_index"], record["chain_index"], bytes(record["seal_hash"]), record["rows_total"],
            record["created_at"], record["key_id"], bytes(record["signature"]),
        )  # fmt: skip


async def stored_checkpoints(conn: asyncpg.Connection, *, after: int = 0, limit: int | None = None) -> list[Checkpoint]:
    rows = await conn.fetch(
        f"SELECT {', '.join(_FIELDS)} FROM audit_checkpoints WHERE checkpoint_index > $1 "
        "ORDER BY checkpoint_index LIMIT $2",
        after,
        limit,
    )
    return [Checkpoint.from_record(row) for row in rows]


async def published_checkpoints(client: aioredis.Redis, *, count: int | None = None) -> list[Checkpoint]:
    """The checkpoints in the Redis stream, oldest first (the newest `count` when given)."""
    if count is None:
        entries = await client.xrange(CHECKPOINT_STREAM)
    else:
        entries = list(reversed(await client.xrevrange(CHECKPOINT_STREAM, count=count)))
    return [Checkpoint.from_json({as_text(k): as_text(v) for k, v in fields.items()}) for _, fields in entries]


class Checkpointer:
    def __init__(self, pool: asyncpg.Pool, client: aioredis.Redis, signer: Signer, settings: Settings):
        self.pool, self.client, self.signer = pool, client, signer
        self.database_url = settings.require_database_url()
        self.interval_s = settings.audit_checkpoint_interval_s
        self.keep = settings.audit_checkpoints_keep
        self._lock_conn: asyncpg.Connection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if await self._leading():
                        await self.checkpoint_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, redis.RedisError) as error:
                    log.warning("audit_checkpoint_failed", error=f"{type(error).__name__}: {error}")
                    await self._resign()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await self._resign()

    async def _leading(self) -> bool:
        """Holds the checkpointer lock on a connection of its own; another process gets it when
        this one's connection goes."""
        if self._lock_conn is not None and not self._lock_conn.is_closed():
            return True
        conn = await connect(self.database_url)
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHECKPOINTER_LOCK_ID):
            self._lock_conn = conn
            log.info("audit_checkpointer_leading")
            return True
        await conn.close()
        return False

    async def _resign(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def checkpoint_once(self) -> Checkpoint | None:
        """Checkpoints the chain head if it moved; publishes what Redis lacks; updates the gauges."""
        async with self.pool.acquire() as conn:
            head = await conn.fetchrow(
                "SELECT chain_index, seal_hash, rows_total FROM audit_seals ORDER BY chain_index DESC LIMIT 1"
            )
            last = await conn.fetchrow(
                f"SELECT {', '.join(_FIELDS)} FROM audit_checkpoints ORDER BY checkpoint_index DESC LIMIT 1"
            )
            created = None
            if head is not None and (last is None or last["chain_index"] < head["chain_index"]):
                unsigned = Checkpoint(
                    (last["checkpoint_index"] if last else 0) + 1, head["chain_index"], bytes(head["seal_hash"]),
                    head["rows_total"], datetime.now(UTC), self.signer.key_id,
                )  # fmt: skip
                created = Checkpoint(**{**unsigned.__dict__, "signature": self.signer.sign(unsigned.hash)})
                await conn.execute(
                    f"INSERT INTO audit_checkpoints ({', '.join(_FIELDS)}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    created.checkpoint_index, created.chain_index, created.seal_hash, created.rows_total,
                    created.created_at, created.key_id, created.signature,
                )  # fmt: skip
                metrics.AUDIT_CHECKPOINTS.inc()
                log.info("audit_checkpoint", **created.as_json())
            await self._publish_missing(conn)
            await update_unsealed_gauges(conn)
        return created

    async def _publish_missing(self, conn: asyncpg.Connection) -> None:
        newest = await published_checkpoints(self.client, count=1)
        after = newest[-1].checkpoint_index if newest else 0
        for checkpoint in await stored_checkpoints(conn, after=after, limit=1000):
            fields = {name: str(value) for name, value in checkpoint.as_json().items()}
            await self.client.xadd(CHECKPOINT_STREAM, fields, maxlen=self.keep, approximate=True)


async def update_unsealed_gauges(conn: asyncpg.Connection) -> None:
    """Rows not yet under a checkpoint (sealed after the last one, or not sealed at all), and the
    age of the oldest of them."""
    row = await conn.fetchrow(
        """
        WITH last AS (SELECT coalesce(max(chain_index), 0) AS chain_index FROM audit_checkpoints)
        SELECT coalesce(sum(s.row_count), 0) AS awaiting, min(s.sealed_at) AS oldest_seal,
               (SELECT count(*) FROM audit_events WHERE seal_id IS NULL) AS unsealed,
               (SELECT min(event_timestamp) FROM audit_events WHERE seal_id IS NULL) AS oldest_unsealed
        FROM audit_seals s, last WHERE s.chain_index > last.chain_index AND s.kind = 'rows'
        """
    )
    now = datetime.now(UTC)
    oldest = [t for t in (row["oldest_seal"], row["oldest_unsealed"]) if t is not None]
    metrics.AUDIT_UNSEALED_ROWS.set(row["awaiting"] + row["unsealed"])
    metrics.AUDIT_UNSEALED_OLDEST_AGE.set((now - min(oldest)).total_seconds() if oldest else 0)
