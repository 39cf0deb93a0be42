"""The seal chain and its published checkpoints, checked once per process and kept: what the
viewer's integrity statuses need beyond the page's own rows (app/ui/integrity.py).

The check is the part of `verify` that depends on no row: every seal's hash, signature and link
(`chain_headers`), and each published checkpoint against the seal it names (`check_checkpoints`).
Doing it on every page view cost as much as the chain is long. The chain only grows (a seal per
storing transaction), and so does the checkpoint stream (one every few seconds while events
arrive): what was added since the last check is checked from the newest seal checked before,
which a new seal must link to. The whole chain is checked again only when what was checked is not
there as it was: the newest seal checked changed or went, the checkpoint stream lost or changed
the newest checkpoint checked, or another key verifies; and, in the background while pages keep
the check they have, every WHOLE_CHECK_EVERY_S.

What this sees later than `datastorage audit verify` would: a seal older than the newest one
checked, rewritten after the process checked it, is seen by the next whole check. A page's own
seals are checked on every view (`verify_rows`).
"""

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import structlog

from app.audit.integrity.checkpoints import Checkpoint, published_checkpoints
from app.audit.integrity.keys import Verifier
from app.audit.integrity.seals import HEADER_COLUMNS, SealHeader
from app.audit.integrity.verify import Finding, Report, chain_headers, check_checkpoints
from app.core import metrics
from app.core.redis_client import RedisClient

log = structlog.get_logger(__name__)

# Seal digests kept (32 bytes each): forgotten all at once beyond this many.
PASSED_SEALS_KEPT = 100_000
# How stale the check of the seals older than the newest one may grow: a whole chain of millions
# of events takes seconds, so it is checked again this often, in the background.
WHOLE_CHECK_EVERY_S = 600.0
# Seals checked between two yields to the event loop during a check (pages are served meanwhile).
SEALS_PER_YIELD = 200


class CheckpointsUnavailable(Exception):
    """The published checkpoints could not be read (Redis away, or an entry not a checkpoint)."""


@dataclass(frozen=True)
class ChainCheck:
    key_id: str
    head: SealHeader | None  # the newest seal checked (None: the chain was empty)
    checkpoint: Checkpoint | None  # the newest published checkpoint checked
    # About seals and checkpoints (none names a row). The checkpoints' coverage (a seal under no
    # checkpoint yet) is not checked: it casts no doubt on a row.
    findings: tuple[Finding, ...]
    whole_at: float  # when (time.monotonic()) the whole check this one extends started

    @property
    def broken(self) -> bool:
        """Whether the chain vouches for no row: a seal or checkpoint was altered, forged or cut off."""
        return bool(self.findings)


class CheckedChain:
    """The newest ChainCheck of one database; concurrent page views share one update."""

    def __init__(self, whole_every_s: float = WHOLE_CHECK_EVERY_S) -> None:
        self._check: ChainCheck | None = None
        self._lock = asyncio.Lock()
        self._whole_every_s = whole_every_s
        self._rechecking: asyncio.Task[None] | None = None
        # Digests of the seals whose rows a page showed and which passed their own checks (verify_rows):
        # a page shown again checks its rows, not the seals' signatures and trees again.
        self.passed_seals: set[bytes] = set()

    async def current(self, pool: asyncpg.Pool, client: RedisClient, verifier: Verifier) -> ChainCheck:
        """The check of the chain as it is now: the kept one when no seal or checkpoint was added
        since (two small reads), else brought up to date; starts a whole check in the background
        when the last one is older than `whole_every_s`. Raises CheckpointsUnavailable."""
        async with pool.acquire() as conn:
            check = await self._brought_up(conn, client, verifier)
        if time.monotonic() - check.whole_at >= self._whole_every_s and not self.rechecking:
            self._rechecking = asyncio.create_task(self._recheck_whole(pool, client, verifier))
        return check

    @property
    def rechecking(self) -> bool:
        return self._rechecking is not None and not self._rechecking.done()

    async def rechecked(self) -> None:
        """Returns once the whole check running in the background (if any) has ended."""
        if self._rechecking is not None:
            await self._rechecking

    async def close(self) -> None:
        """Stops a whole check running in the background (before its pool closes)."""
        if self._rechecking is not None:
            self._rechecking.cancel()
            await asyncio.gather(self._rechecking, return_exceptions=True)

    async def _recheck_whole(self, pool: asyncpg.Pool, client: RedisClient, verifier: Verifier) -> None:
        try:
            async with pool.acquire() as conn:
                whole = await _brought_up_to_date(conn, client, verifier, None, None)
                async with self._lock:
                    # What was added while it ran is checked from it, as from any kept check.
                    published = await _published(client, count=1)
                    self._check = await _brought_up_to_date(
                        conn, client, verifier, whole, published[-1] if published else None
                    )
        except Exception as error:  # noqa: BLE001 - nothing awaits it: pages keep the check they have
            log.warning("viewer_chain_recheck_failed", error=f"{type(error).__name__}: {error}")

    async def _brought_up(self, conn: asyncpg.Connection, client: RedisClient, verifier: Verifier) -> ChainCheck:
        check = self._check
        published = await _published(client, count=1)
        newest = published[-1] if published else None
        head = await conn.fetchrow("SELECT chain_index, seal_hash FROM audit_seals ORDER BY chain_index DESC LIMIT 1")
        if check is not None and _unchanged(check, verifier, head, newest):
            return check
        async with self._lock:
            if self._check is check:  # else another view brought it up to date meanwhile
                self._check = await _brought_up_to_date(conn, client, verifier, check, newest)
                if len(self.passed_seals) > PASSED_SEALS_KEPT:
                    self.passed_seals.clear()
            assert self._check is not None
            return self._check


def _unchanged(check: ChainCheck, verifier: Verifier, head: asyncpg.Record | None, newest: Checkpoint | None) -> bool:
    same_head = (
        check.head is None
        if head is None
        else check.head is not None
        and check.head.chain_index == head["chain_index"]
        and check.head.hash == bytes(head["seal_hash"])
    )
    return check.key_id == verifier.key_id and same_head and check.checkpoint == newest


async def _brought_up_to_date(
    conn: asyncpg.Connection,
    client: RedisClient,
    verifier: Verifier,
    check: ChainCheck | None,
    newest: Checkpoint | None,
) -> ChainCheck:
    # The checkpoints first: each names a seal committed before it, which the seals read next include.
    added = await _checkpoints_added(client, check, newest)
    if check is not None and check.key_id == verifier.key_id and added is not None and await _head_kept(conn, check):
        head, findings, whole, whole_at = check.head, list(check.findings), False, check.whole_at
    else:
        head, findings, whole, whole_at = None, [], True, time.monotonic()
        added = await _published(client)
    report = Report()
    async for header in chain_headers(conn, verifier, report, after=head):
        head = header
        if report.seals % SEALS_PER_YIELD == 0:
            await asyncio.sleep(0)
    named = {
        record["chain_index"]: SealHeader.from_record(record)
        for record in await conn.fetch(
            f"SELECT {HEADER_COLUMNS} FROM audit_seals WHERE chain_index = ANY($1::bigint[])",
            list({checkpoint.chain_index for checkpoint in added}),
        )
    }
    check_checkpoints(added, named, verifier, report, newest=head.chain_index if head else 0)
    metrics.VIEWER_CHAIN_SEALS_CHECKED.inc(report.seals)
    if whole or report.findings:
        log.info("viewer_chain_checked", whole=whole, seals=report.seals, checkpoints=report.checkpoints,
                 findings=[f.kind for f in report.findings])  # fmt: skip
    newest = added[-1] if added else (check.checkpoint if check is not None and not whole else None)
    return ChainCheck(verifier.key_id, head, newest, (*findings, *report.findings), whole_at)


async def _checkpoints_added(
    client: RedisClient, check: ChainCheck | None, newest: Checkpoint | None
) -> list[Checkpoint] | None:
    """The checkpoints published after the newest one `check` checked (`newest`: the stream's
    newest, read before); None when that one is no longer in the stream as it was (the stream was
    cut or rewritten: everything is checked again)."""
    if check is None:
        return None
    if check.checkpoint is None:
        return await _published(client) if newest else []
    if newest is None or newest.checkpoint_index < check.checkpoint.checkpoint_index:
        return None
    # The checkpointer publishes in index order without gaps: the newest n + 1 entries hold the
    # one checked and the n after it (one more, in case another was published since `newest`).
    since = await _published(client, count=newest.checkpoint_index - check.checkpoint.checkpoint_index + 2)
    if check.checkpoint not in since:
        return None
    return since[since.index(check.checkpoint) + 1 :]


async def _head_kept(conn: asyncpg.Connection, check: ChainCheck) -> bool:
    """Whether the newest seal checked is still stored as it was (new seals are checked against it)."""
    if check.head is None:
        return True
    stored = await conn.fetchrow(
        f"SELECT {HEADER_COLUMNS}, seal_hash FROM audit_seals WHERE chain_index = $1", check.head.chain_index
    )
    if stored is None:
        return False
    return SealHeader.from_record(stored) == check.head and bytes(stored["seal_hash"]) == check.head.hash


async def _published(client: RedisClient, count: int | None = None) -> list[Checkpoint]:
    try:
        return await published_checkpoints(client, count=count)
    # Redis away, or a stream entry that is no checkpoint: nothing to check against either way.
    except Exception as error:
        raise CheckpointsUnavailable(type(error).__name__) from error
