"""Verifying the audit trail against its seals and checkpoints (docs/INTEGRITY.md).

`verify` checks, in order: every seal (its hash, its signature, its link to the previous one, the
chain's start), every checkpoint given (its signature, and that the database has the seal it
names, with that hash), and every row in the window (its leaf hash is the one its seal lists;
every leaf of the window has its row, unless retention dropped its month; no row is unsealed but
the ones younger than the sealing bound). Each finding names the event, seal or partition and
says what is wrong.
"""

import gc
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from app.audit.integrity import merkle
from app.audit.integrity.checkpoints import Checkpoint
from app.audit.integrity.encoding import ENCODED_COLUMNS, encode_row, leaf_hash
from app.audit.integrity.keys import Verifier
from app.audit.integrity.seals import GENESIS_HASH, HEADER_COLUMNS, Leaf, SealHeader, find_leaf, unpack_leaves
from app.audit.partitions import add_months, list_partitions, month_start

ROW_COLUMNS = ", ".join((*ENCODED_COLUMNS, "seal_id", "integrity_salt"))
_JSON_POSITIONS = [ENCODED_COLUMNS.index("event_data"), ENCODED_COLUMNS.index("metadata")]
_SEAL_ID, _SALT = len(ENCODED_COLUMNS), len(ENCODED_COLUMNS) + 1
# Rows fetched per round trip while streaming a partition.
FETCH_ROWS = 5000


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    event_id: str | None = None
    seal: int | None = None  # the seal's chain index
    partition: str | None = None
    column: str | None = None  # when the change can be told apart from the rest of the row


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    seals: int = 0
    checkpoints: int = 0
    rows: int = 0
    pending: int = 0
    dropped_by_retention: int = 0
    # Set when the check could not be made (a store unreachable): neither intact nor tampered.
    incomplete: str | None = None

    @property
    def intact(self) -> bool:
        return not self.findings and self.incomplete is None

    def as_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "findings": [{k: v for k, v in asdict(f).items() if v is not None} for f in self.findings],
            "seals": self.seals,
            "checkpoints": self.checkpoints,
            "rows": self.rows,
            "pending": self.pending,
            "dropped_by_retention": self.dropped_by_retention,
            "incomplete": self.incomplete,
        }


@dataclass(frozen=True)
class Window:
    """What to verify: a time window (whole UTC days), one correlation, or everything."""

    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None


Progress = Callable[[int], None]


async def verify(
    conn: asyncpg.Connection,
    verifier: Verifier,
    checkpoints: Iterable[Checkpoint],
    window: Window = Window(),
    *,
    sealing_bound: timedelta = timedelta(seconds=10),
    progress: Progress = lambda rows: None,
) -> Report:
    report = Report()
    now = datetime.now(UTC)
    # A month's leaves are hundreds of thousands of small objects that live until its rows are
    # checked: the cyclic GC would scan them again and again (it made verification 2x slower at
    # 200,000 rows). Nothing here makes reference cycles; collection resumes at the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        headers = await _check_chain(conn, verifier, report)
        _check_checkpoints(list(checkpoints), headers, verifier, report, now, sealing_bound)
        dropped = _months_dropped_by_retention(headers)
        if window.correlation_id is not None:
            await _check_correlation(
                conn, window.correlation_id, headers, dropped, report, now, sealing_bound, progress
            )
        else:
            await _check_window(conn, window, headers, dropped, report, now, sealing_bound, progress)
            if window.since is None and window.until is None:
                await _check_held_rows(conn, headers, report)
    finally:
        if collecting:
            gc.enable()
    _pair_redated_rows(report)
    return report


# What checking a seal reads: its header, the hash stored with it and its signature.
SEAL_COLUMNS = f"{HEADER_COLUMNS}, seal_hash, signature"
# Below every chain index, a forged one too (bigint's least value).
_BEFORE_ANY_INDEX = -(2**63)


async def _check_chain(conn: asyncpg.Connection, verifier: Verifier, report: Report) -> dict[int, SealHeader]:
    """Every seal's hash, signature and link; returns the headers by chain index."""
    return {header.chain_index: header async for header in chain_headers(conn, verifier, report)}


async def chain_headers(
    conn: asyncpg.Connection, verifier: Verifier, report: Report, *, after: SealHeader | None = None
) -> AsyncIterator[SealHeader]:
    """The seals in chain order, each checked as it is read (its hash, its signature, its link to
    the one before); from the chain's start, or from the seal after `after`, a seal checked
    before (whoever keeps a checked chain extends it with the seals added since)."""
    previous = after
    async with conn.transaction():
        async for record in conn.cursor(
            f"SELECT {SEAL_COLUMNS} FROM audit_seals WHERE chain_index > $1 ORDER BY chain_index",
            after.chain_index if after else _BEFORE_ANY_INDEX,
            prefetch=2000,
        ):
            header = check_seal(record, verifier, report)
            _check_link(previous, header, report)
            previous = header
            yield header


def check_seal(record: asyncpg.Record, verifier: Verifier, report: Report) -> SealHeader:
    """One seal on its own (a record of SEAL_COLUMNS): its fields make its stored hash, and its
    signature verifies. Returns its header."""
    header = SealHeader.from_record(record)
    report.seals += 1
    index = header.chain_index
    if header.hash != bytes(record["seal_hash"]):
        changed = "the seal's fields do not hash to its stored hash"
        report.findings.append(Finding("seal_changed", changed, seal=index))
    if not verifier.verify(bytes(record["signature"]), header.hash):
        report.findings.append(
            Finding(
                "seal_signature",
                f"the signature does not verify with key {verifier.key_id} "
                f"(the seal names key {header.key_id}): forged or re-sealed",
                seal=index,
            )
        )
    return header


def _check_link(previous: SealHeader | None, header: SealHeader, report: Report) -> None:
    """A seal's place in the chain: after `previous` (None: the chain's first seal)."""
    index = header.chain_index
    if previous is None:
        if index != 1 or header.prev_hash != GENESIS_HASH:
            report.findings.append(
                Finding(
                    "chain_start_missing",
                    f"the chain starts at seal {index}, not 1: the oldest seals are gone",
                    seal=index,
                )
            )
        return
    if index != previous.chain_index + 1:
        report.findings.append(
            Finding("seals_missing", f"seals {previous.chain_index + 1}..{index - 1} are missing", seal=index)
        )
    if header.prev_hash != previous.hash:
        report.findings.append(
            Finding("chain_broken", f"seal {index} does not link to seal {previous.chain_index}", seal=index)
        )
    if header.rows_total != previous.rows_total + header.row_count:
        report.findings.append(Finding("rows_total", "the running row total does not add up", seal=index))


def _check_checkpoints(
    checkpoints: list[Checkpoint],
    headers: dict[int, SealHeader],
    verifier: Verifier,
    report: Report,
    now: datetime,
    bound: timedelta,
) -> None:
    newest = max(headers) if headers else 0
    covered = check_checkpoints(checkpoints, headers, verifier, report, newest=newest)
    # Seals no checkpoint covers yet: pending while young, a finding once older than the bound.
    for index in range(covered + 1, newest + 1):
        header = headers.get(index)
        if header is None or header.kind != "rows":
            continue
        if now - header.sealed_at <= bound:
            report.pending += header.row_count
        elif checkpoints:
            report.findings.append(
                Finding(
                    "seal_not_checkpointed",
                    f"seal {index} ({header.row_count} rows, sealed {header.sealed_at:%Y-%m-%d %H:%M:%S}) "
                    "is under no checkpoint: is the checkpointer running?",
                    seal=index,
                )
            )
        else:
            # No checkpoint at all while seals are older than the bound: the copies outside the
            # database were deleted (or never made), and a cut-off chain head could not be seen.
            report.findings.append(
                Finding(
                    "no_checkpoint",
                    f"seal {index} is older than the sealing bound and no checkpoint was given or published: "
                    "the checkpoints outside the database are gone (give --checkpoint FILE)",
                    seal=index,
                )
            )
            break


def check_checkpoints(
    checkpoints: Iterable[Checkpoint],
    headers: Mapping[int, SealHeader],
    verifier: Verifier,
    report: Report,
    *,
    newest: int,
) -> int:
    """Each checkpoint's signature, and that the database holds the seal it names as it names it
    (`headers`: the seals by chain index, at least those the checkpoints name; `newest`: the
    chain's newest index). Returns the newest chain index the valid checkpoints cover."""
    covered = 0
    for checkpoint in checkpoints:
        report.checkpoints += 1
        label = f"checkpoint {checkpoint.checkpoint_index}"
        if not checkpoint.signature_valid(verifier):
            report.findings.append(
                Finding("checkpoint_signature", f"{label} does not verify with key {verifier.key_id}")
            )
            continue
        header = headers.get(checkpoint.chain_index)
        if header is None:
            report.findings.append(
                Finding(
                    "seals_cut_off",
                    f"{label} names seal {checkpoint.chain_index}, but the database's newest is "
                    f"{newest}: the newest seals were removed",
                    seal=checkpoint.chain_index,
                )
            )
        elif header.hash != checkpoint.seal_hash or header.rows_total != checkpoint.rows_total:
            report.findings.append(
                Finding(
                    "checkpoint_mismatch",
                    f"{label} names another seal {checkpoint.chain_index} than the database "
                    "holds: the chain was rewritten",
                    seal=checkpoint.chain_index,
                )
            )
        else:
            covered = max(covered, checkpoint.chain_index)
    return covered


def _months_dropped_by_retention(headers: dict[int, SealHeader]) -> set[date]:
    return {
        date.fromisoformat(str(h.details["month"]))
        for h in headers.values()
        if h.kind == "retention" and h.details.get("month")
    }


async def _check_window(
    conn: asyncpg.Connection,
    window: Window,
    headers: dict[int, SealHeader],
    dropped: set[date],
    report: Report,
    now: datetime,
    bound: timedelta,
    progress: Progress,
) -> None:
    """Partition by partition (month by month): rows against leaves."""
    first_day = window.since.astimezone(UTC).date() if window.since else None
    last_day = window.until.astimezone(UTC).date() if window.until else None
    months = {p.month: p.name for p in await list_partitions(conn)}
    sealed_months = {
        month_start(d)
        for h in headers.values()
        if h.kind == "rows" and h.first_date and h.last_date
        for d in _months_between(h.first_date, h.last_date)
    }
    for month in sorted(set(months) | sealed_months):
        month_end = add_months(month, 1) - timedelta(days=1)
        lo = max(month, first_day) if first_day else month
        hi = min(month_end, last_day) if last_day else month_end
        if lo > hi:
            continue
        leaves = await _leaves_between(conn, headers, lo, hi, report)
        partition = months.get(month)
        if partition is None and month not in dropped:
            if leaves:
                report.findings.append(
                    Finding(
                        "partition_missing",
                        f"the partition of {month:%Y-%m} is gone with {len(leaves)} sealed rows, "
                        "and no retention seal records its drop",
                        partition=f"audit_events_{month:%Y_%m}",
                    )
                )
            continue
        # The view: a dropped month's held rows were moved to the archive and are checked there
        # (retention, schema/008); its other rows are missing and counted as dropped below.
        rows = conn.cursor(
            f"SELECT {ROW_COLUMNS} FROM audit_events_all WHERE event_date BETWEEN $1 AND $2",
            lo,
            hi,
            prefetch=FETCH_ROWS,
        )
        async with conn.transaction():
            await _check_rows(rows, leaves, headers, report, now, bound, progress)
        _report_missing(leaves, month in dropped, report)


async def _check_correlation(
    conn: asyncpg.Connection,
    correlation_id: str,
    headers: dict[int, SealHeader],
    dropped: set[date],
    report: Report,
    now: datetime,
    bound: timedelta,
    progress: Progress,
) -> None:
    """The correlation's rows, and every leaf of the seals that cover it (which finds a deleted
    event of the correlation: its seal lists it)."""
    by_seal = {h.seal_id: h for h in headers.values()}
    leaves: dict[uuid.UUID, tuple[int, Leaf]] = {}
    for record in await conn.fetch(
        "SELECT seal_id, leaves FROM audit_seals WHERE correlation_ids @> ARRAY[$1::text]", correlation_id
    ):
        header = by_seal.get(record["seal_id"])
        if header is not None:
            for leaf in _signed_leaves(header, bytes(record["leaves"]), report):
                leaves[leaf.event_id] = (header.chain_index, leaf)
    rows = await conn.fetch(
        f"SELECT {ROW_COLUMNS} FROM audit_events_all WHERE correlation_id = $1 OR event_id = ANY($2::uuid[])",
        correlation_id,
        list(leaves),
    )
    await _check_rows(_aiter(rows), leaves, headers, report, now, bound, progress)
    _report_missing(leaves, False, report, dropped_months=dropped)


async def verify_rows(
    conn: asyncpg.Connection,
    verifier: Verifier,
    keys: Iterable[tuple[uuid.UUID, date]],
    report: Report,
    *,
    sealing_bound: timedelta = timedelta(seconds=10),
    passed: set[bytes] | None = None,
) -> dict[uuid.UUID, bool]:
    """Some rows (by event id and event date) as `verify` checks each row: against the leaf its
    seal lists. The seals they name are checked on their own (hash, signature, their leaves make
    the signed root), not their place in the chain: the caller has the chain checked (`verify`,
    or chain_headers and check_checkpoints, which do not depend on the rows). `passed`: digests
    of seals that passed those checks before, kept up to date (a seal stored exactly as then, and
    the same key, pass again: its signature and tree are not computed again). Returns, for
    each row found, whether it names a seal."""
    keys = list(keys)
    rows = await conn.fetch(
        f"SELECT {ROW_COLUMNS} FROM audit_events_all WHERE event_id = ANY($1::uuid[]) AND event_date = ANY($2::date[])",
        [event_id for event_id, _ in keys],
        list({event_date for _, event_date in keys}),
    )
    naming: dict[int, set[uuid.UUID]] = {}  # seal id: the rows that name it
    for row in rows:
        if row["seal_id"] is not None:
            naming.setdefault(row["seal_id"], set()).add(row["event_id"])
    headers: dict[int, SealHeader] = {}
    leaves: dict[uuid.UUID, tuple[int, Leaf]] = {}
    for record in await conn.fetch(
        f"SELECT {SEAL_COLUMNS}, leaves FROM audit_seals WHERE seal_id = ANY($1::bigint[])", list(naming)
    ):
        header, packed = SealHeader.from_record(record), bytes(record["leaves"])
        listed = naming[header.seal_id]
        # Everything the checks read: the same bytes pass the same checks.
        digest = _digest(
            verifier.key_id.encode(), header.canonical(), bytes(record["seal_hash"]), bytes(record["signature"]), packed
        )
        if passed is not None and digest in passed:
            report.seals += 1
            found = [leaf for event_id in listed if (leaf := find_leaf(packed, event_id))]
        else:
            before = len(report.findings)
            check_seal(record, verifier, report)
            found = [leaf for leaf in _signed_leaves(header, packed, report) if leaf.event_id in listed]
            if passed is not None and len(report.findings) == before:
                passed.add(digest)
        headers[header.chain_index] = header
        leaves.update((leaf.event_id, (header.chain_index, leaf)) for leaf in found)
    await _check_rows(_aiter(rows), leaves, headers, report, datetime.now(UTC), sealing_bound, lambda rows: None)
    return {row["event_id"]: row["seal_id"] is not None for row in rows}


def _digest(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).digest()


async def _aiter(items: list) -> Any:
    for item in items:
        yield item


async def _leaves_between(
    conn: asyncpg.Connection, headers: dict[int, SealHeader], lo: date, hi: date, report: Report
) -> dict[uuid.UUID, tuple[int, Leaf]]:
    by_seal = {h.seal_id: h for h in headers.values()}
    found: dict[uuid.UUID, tuple[int, Leaf]] = {}
    for record in await conn.fetch(
        "SELECT seal_id, leaves FROM audit_seals WHERE kind = 'rows' AND first_date <= $2 AND last_date >= $1", lo, hi
    ):
        header = by_seal.get(record["seal_id"])
        if header is None:
            continue
        for leaf in _signed_leaves(header, bytes(record["leaves"]), report):
            if lo <= leaf.event_date <= hi:
                found[leaf.event_id] = (header.chain_index, leaf)
    return found


def _signed_leaves(header: SealHeader, packed: bytes, report: Report) -> list[Leaf]:
    """A seal's leaf list, checked against what its header signs: the leaf hashes must make its
    Merkle root and the dates must lie within its dates (else a changed row with a rewritten leaf,
    or a deletion passed off as retention by a re-dated leaf, would go unseen)."""
    leaves = unpack_leaves(packed)
    wrong = []
    if len(leaves) != header.row_count or merkle.root([leaf.hash for leaf in leaves]) != header.merkle_root:
        wrong.append("its leaves do not make the signed Merkle root")
    first, last = header.first_date, header.last_date
    outside = [leaf for leaf in leaves if first and last and not first <= leaf.event_date <= last]
    if outside:
        wrong.append("a leaf's event date lies outside the seal's dates")
    if wrong and not any(f.kind == "seal_leaves" and f.seal == header.chain_index for f in report.findings):
        detail = "; ".join(wrong) + ": the seal's leaf list was rewritten"
        report.findings.append(Finding("seal_leaves", detail, seal=header.chain_index))
        for leaf in outside:  # each lost from every month's check: named here
            report.findings.append(
                Finding(
                    "seal_leaves",
                    f"the seal lists this event under {leaf.event_date}, outside its dates: re-dated to hide the row?",
                    event_id=str(leaf.event_id),
                    seal=header.chain_index,
                )
            )
    return leaves


async def _check_rows(
    rows: Any,
    leaves: dict[uuid.UUID, tuple[int, Leaf]],
    headers: dict[int, SealHeader],
    report: Report,
    now: datetime,
    bound: timedelta,
    progress: Progress,
) -> None:
    """Each row against its leaf; the leaves seen are removed from `leaves`."""
    seal_of = {h.seal_id: h.chain_index for h in headers.values()}
    checked = 0
    async for row in rows:
        checked += 1
        if checked % 10_000 == 0:
            progress(10_000)
        report.rows += 1
        # By position, not by name: this loop is the verifier's throughput (ROW_COLUMNS' order).
        values = list(row)
        event_id, seal_id, salt = values[0], values[_SEAL_ID], values[_SALT]
        del values[_SEAL_ID:]
        for position in _JSON_POSITIONS:
            if values[position] is not None:
                values[position] = orjson.loads(values[position])
        listed = leaves.pop(event_id, None)
        if seal_id is None or salt is None:
            # Pending only near now: a forged row dated in the future must not stay pending forever.
            if abs(now - row["event_timestamp"]) <= bound:
                report.pending += 1
            else:
                report.findings.append(
                    Finding(
                        "row_unsealed",
                        "a row no seal covers: inserted bypassing the service (or by a writer without the signing key)",
                        event_id=str(event_id),
                    )
                )
            continue
        chain_index = seal_of.get(seal_id)
        if listed is None:
            detail = (
                "a row its seal does not list: inserted bypassing the service"
                if chain_index is not None
                else f"a row naming seal id {seal_id}, which the chain lacks: inserted bypassing the service"
            )
            report.findings.append(Finding("row_inserted", detail, event_id=str(event_id), seal=chain_index))
            continue
        listed_in, leaf = listed
        if chain_index != listed_in:
            report.findings.append(
                Finding(
                    "row_moved",
                    f"the row names seal {chain_index}, but seal {listed_in} lists it",
                    event_id=str(event_id),
                    seal=listed_in,
                )
            )
        if leaf_hash(encode_row(values, bytes(salt))) != leaf.hash:
            # The leaf keeps event_date in clear; any other column is known only through the hash.
            redated = row["event_date"] != leaf.event_date
            report.findings.append(
                Finding(
                    "row_changed",
                    f"the row's event_date was changed (sealed as {leaf.event_date})"
                    if redated
                    else "the row's content is not what was sealed: a column (or its salt) was changed",
                    event_id=str(event_id),
                    seal=listed_in,
                    column="event_date" if redated else None,
                )
            )
    progress(checked % 10_000)


def _report_missing(
    leaves: dict[uuid.UUID, tuple[int, Leaf]],
    month_dropped: bool,
    report: Report,
    *,
    dropped_months: set[date] | None = None,
) -> None:
    for event_id, (chain_index, leaf) in leaves.items():
        if month_dropped or (dropped_months and month_start(leaf.event_date) in dropped_months):
            report.dropped_by_retention += 1
        else:
            report.findings.append(
                Finding(
                    "row_deleted",
                    f"the row sealed in seal {chain_index} (event date {leaf.event_date}) is gone",
                    event_id=str(event_id),
                    seal=chain_index,
                )
            )


def _months_between(first: date, last: date) -> list[date]:
    months, month = [], month_start(first)
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


async def _check_held_rows(conn: asyncpg.Connection, headers: dict[int, SealHeader], report: Report) -> None:
    """Rows retention moved to the archive (app/audit/retention.py): each dropped month keeps as
    many as its retention seals say (`rows_held`), less those a later retention seal dropped with
    a released hold's archive (`months`). Fewer means an archived row was deleted, which would
    otherwise read as dropped by retention."""
    expected: dict[date, int] = {}
    for header in headers.values():
        if header.kind != "retention":
            continue
        if header.details.get("month"):
            month = date.fromisoformat(str(header.details["month"]))
            expected[month] = expected.get(month, 0) + int(header.details.get("rows_held", 0))
        for name, rows in dict(header.details.get("months") or {}).items():
            month = date.fromisoformat(name)
            expected[month] = expected.get(month, 0) - int(rows)
    found = {
        r["month"]: r["n"]
        for r in await conn.fetch(
            "SELECT date_trunc('month', event_date)::date AS month, count(*) AS n FROM audit_events_held GROUP BY 1"
        )
    }
    for month, rows in sorted(expected.items()):
        if found.get(month, 0) < rows:
            report.findings.append(
                Finding(
                    "held_rows_missing",
                    f"the archive holds {found.get(month, 0)} held rows of {month:%Y-%m}; "
                    f"the retention seals kept {rows}: archived rows were deleted",
                    partition="audit_events_held",
                )
            )


def _pair_redated_rows(report: Report) -> None:
    """A row whose event_date was changed moves to another partition: it shows as a deleted leaf
    in its sealed month and an unlisted row in the new one. Said once, naming the column."""
    deleted = {f.event_id: f for f in report.findings if f.kind == "row_deleted"}
    inserted = {f.event_id: f for f in report.findings if f.kind == "row_inserted" and f.seal is not None}
    both = deleted.keys() & inserted.keys()
    if not both:
        return
    kept = [f for f in report.findings if f.event_id not in both or f.kind not in ("row_deleted", "row_inserted")]
    for event_id in sorted(both, key=str):
        detail = "the row's event_date was changed: it left the month its seal dates it in (moved partition)"
        kept.append(Finding("row_changed", detail, event_id=event_id, seal=deleted[event_id].seal, column="event_date"))
    report.findings = kept
