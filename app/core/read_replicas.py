"""Reads from Postgres read replicas that keep up with the primary, else from the primary.

`DATASTORAGE_DATABASE_READ_URL` names one or more streaming replicas. Every
`read_replica_check_interval_s` the router measures each one's lag as WAL bytes: the primary's
current WAL position (`pg_current_wal_lsn()`) minus the replica's replay position
(`pg_last_wal_replay_lsn()`). Not as replay time (`now() - pg_last_xact_replay_timestamp()`), which
grows while the primary is idle although the replica has everything. A replica at most
`read_replica_max_lag_bytes` behind serves reads (several: in turn); otherwise, and whenever a
read on a replica fails (stopped, cut off, a query cancelled by recovery), the read runs on the
primary. Only reads come here: writes, integrity verification and legal holds use the primary's
engine and pool directly.
"""

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How long a lag query may take before the replica counts as unreachable.
MEASURE_TIMEOUT_S = 2.0


def lsn_bytes(lsn: str) -> int:
    """A WAL position (`16/B374D848`) as a byte offset."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(eq=False)
class ReadSource:
    """A database reads can run on: its SQLAlchemy engine (audit queries) and asyncpg pool (the
    catalog)."""

    name: str
    engine: AsyncEngine
    pool: asyncpg.Pool
    is_primary: bool = False
    # Replicas only: the last measurement, and whether it was within the bound.
    lag_bytes: int | None = None
    usable: bool = False


class ReadRouter:
    def __init__(self, primary: ReadSource, replicas: Sequence[ReadSource] = (), *, max_lag_bytes: int = 0):
        self.primary = primary
        self.replicas = list(replicas)
        self.max_lag_bytes = max_lag_bytes
        self._turn = itertools.count()

    def choose(self) -> ReadSource:
        """A usable replica (in turn), else the primary."""
        usable = [replica for replica in self.replicas if replica.usable]
        if not usable:
            return self.primary
        return usable[next(self._turn) % len(usable)]

    async def run(self, read: Callable[[ReadSource], Awaitable[T]]) -> T:
        """Runs `read` on the chosen source; on the primary again if it fails on a replica (reads
        are safe to repeat)."""
        source = self.choose()
        if source.is_primary:
            metrics.DB_READS.labels("primary").inc()
            return await read(source)
        try:
            result = await read(source)
        except Exception as error:  # noqa: BLE001 - whatever went wrong there, the primary answers
            source.usable = False  # until the next measurement says otherwise
            metrics.READ_REPLICA_FALLBACKS.labels(source.name).inc()
            log.warning("read_replica_failed", replica=source.name, error=f"{type(error).__name__}: {error}")
            metrics.DB_READS.labels("primary").inc()
            return await read(self.primary)
        metrics.DB_READS.labels("replica").inc()
        return result

    async def measure(self) -> None:
        """Measures every replica's lag once and decides which may serve reads. The replicas are
        asked before the primary, so a lag is never under-estimated."""
        if not self.replicas:
            return
        replays = await asyncio.gather(*(self._replay_position(replica) for replica in self.replicas))
        try:
            async with self.primary.pool.acquire(timeout=MEASURE_TIMEOUT_S) as conn:
                current = lsn_bytes(await conn.fetchval("SELECT pg_current_wal_lsn()::text", timeout=MEASURE_TIMEOUT_S))
        except Exception as error:  # noqa: BLE001 - no primary, no measure: keep the last verdicts
            log.warning("read_replica_lag_unknown", error=f"{type(error).__name__}: {error}")
            return
        for replica, replay in zip(self.replicas, replays, strict=True):
            replica.lag_bytes = None if replay is None else max(0, current - replay)
            usable = replica.lag_bytes is not None and replica.lag_bytes <= self.max_lag_bytes
            if usable != replica.usable:
                log.info(
                    "read_replica_" + ("usable" if usable else "unusable"),
                    replica=replica.name,
                    lag_bytes=replica.lag_bytes,
                    max_lag_bytes=self.max_lag_bytes,
                )
            replica.usable = usable
            metrics.READ_REPLICA_LAG_BYTES.labels(replica.name).set(
                float("nan") if replica.lag_bytes is None else replica.lag_bytes
            )
            metrics.READ_REPLICA_USABLE.labels(replica.name).set(1 if usable else 0)

    async def _replay_position(self, replica: ReadSource) -> int | None:
        """The replica's replay position; None when it cannot say (down, or not a standby)."""
        try:
            async with replica.pool.acquire(timeout=MEASURE_TIMEOUT_S) as conn:
                position = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text", timeout=MEASURE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - an unreachable replica is simply not used
            if replica.usable:
                log.warning("read_replica_unreachable", replica=replica.name, error=f"{type(error).__name__}: {error}")
            return None
        return None if position is None else lsn_bytes(position)

    async def keep_measuring(self, stop: asyncio.Event, interval_s: float) -> None:
        """Measures every `interval_s` until `stop` is set (a task of the API's lifespan)."""
        while not stop.is_set():
            await self.measure()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
