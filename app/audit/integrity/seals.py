"""Seals (docs/INTEGRITY.md): one per storing transaction, hash-chained and signed.

`seal_rows` runs inside the transaction that inserts the rows, as its last statement before
COMMIT: it takes the chain lock (a transaction-level advisory lock, so it is held only until the
COMMIT a few milliseconds later), reads the chain head and appends the new seal.
"""

import hashlib
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import orjson

from app.audit.integrity import merkle
from app.audit.integrity.encoding import canonical_json
from app.audit.integrity.keys import Signer, Verifier

SEAL_VERSION = 1
GENESIS_HASH = bytes(32)
# Any fixed 64-bit number, unique to this purpose within the database.
CHAIN_LOCK_ID = 0x61756469_74636861  # "auditcha"
EPOCH = date(1970, 1, 1)
_LEAF = struct.Struct(">16si32s")


class Leaf(NamedTuple):
    # A named tuple, not a dataclass: verification unpacks one per stored row.
    event_id: uuid.UUID
    event_date: date
    hash: bytes


def pack_leaves(leaves: Iterable[Leaf]) -> bytes:
    return b"".join(_LEAF.pack(leaf.event_id.bytes, (leaf.event_date - EPOCH).days, leaf.hash) for leaf in leaves)


def unpack_leaves(packed: bytes) -> list[Leaf]:
    dates: dict[int, date] = {}  # a seal covers few days: each made once
    return [
        Leaf(
            uuid.UUID(bytes=event_id),
            dates.get(days) or dates.setdefault(days, EPOCH + timedelta(days=days)),
            leaf_hash,
        )
        for event_id, days, leaf_hash in _LEAF.iter_unpack(packed)
    ]


def find_leaf(packed: bytes, event_id: uuid.UUID) -> Leaf | None:
    """One event's leaf in a packed leaf list, without unpacking the others."""
    at = packed.find(event_id.bytes)
    while at != -1 and at % _LEAF.size:  # the id's bytes inside another leaf's hash: look on
        at = packed.find(event_id.bytes, at + 1)
    if at == -1:
        return None
    _, days, leaf_hash = _LEAF.unpack_from(packed, at)
    return Leaf(event_id, EPOCH + timedelta(days=days), leaf_hash)


@dataclass(frozen=True)
class SealHeader:
    """What a seal says; its hash is what is signed and what the next seal links to."""

    seal_id: int
    chain_index: int
    kind: str
    prev_hash: bytes
    merkle_root: bytes
    row_count: int
    rows_total: int
    first_date: date | None
    last_date: date | None
    sealed_at: datetime
    key_id: str
    details: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> bytes:
        return canonical_json({
            "v": SEAL_VERSION, "seal_id": self.seal_id, "chain_index": self.chain_index, "kind": self.kind,
            "prev": self.prev_hash.hex(), "root": self.merkle_root.hex(), "row_count": self.row_count,
            "rows_total": self.rows_total,
            "first_date": self.first_date.isoformat() if self.first_date else None,
            "last_date": self.last_date.isoformat() if self.last_date else None,
            "sealed_at": self.sealed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_id": self.key_id, "details": self.details,
        })  # fmt: skip

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()

    def as_json(self) -> dict[str, Any]:
        """The header as proofs and exports carry it (the same fields as the canonical form)."""
        return {
            "seal_id": self.seal_id, "chain_index": self.chain_index, "kind": self.kind,
            "prev": self.prev_hash.hex(), "root": self.merkle_root.hex(), "row_count": self.row_count,
            "rows_total": self.rows_total,
            "first_date": self.first_date.isoformat() if self.first_date else None,
            "last_date": self.last_date.isoformat() if self.last_date else None,
            "sealed_at": self.sealed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "key_id": self.key_id, "details": self.details,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SealHeader":
        return cls(
            seal_id=int(data["seal_id"]), chain_index=int(data["chain_index"]), kind=str(data["kind"]),
            prev_hash=bytes.fromhex(data["prev"]), merkle_root=bytes.fromhex(data["root"]),
            row_count=int(data["row_count"]), rows_total=int(data["rows_total"]),
            first_date=date.fromisoformat(data["first_date"]) if data["first_date"] else None,
            last_date=date.fromisoformat(data["last_date"]) if data["last_date"] else None,
            sealed_at=datetime.fromisoformat(data["sealed_at"].replace("Z", "+00:00")),
            key_id=str(data["key_id"]), details=dict(data.get("details") or {}),
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> "SealHeader":
        return cls(
            seal_id=record["seal_id"], chain_index=record["chain_index"], kind=record["kind"],
            prev_hash=bytes(record["prev_hash"]), merkle_root=bytes(record["merkle_root"]),
            row_count=record["row_count"], rows_total=record["rows_total"], first_date=record["first_date"],
            last_date=record["last_date"], sealed_at=record["sealed_at"], key_id=record["key_id"],
            details=_json_object(record["details"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Seal:
    header: SealHeader
    signature: bytes
    leaves: list[Leaf]

    def signature_valid(self, verifier: Verifier) -> bool:
        return verifier.verify(self.signature, self.header.hash)


def _json_object(value: Any) -> dict[str, Any]:
    return orjson.loads(value) if isinstance(value, str | bytes) else dict(value or {})


HEADER_COLUMNS = (
    "seal_id, chain_index, kind, prev_hash, merkle_root, row_count, rows_total, first_date, last_date, "
    "sealed_at, key_id, details"
)


async def next_seal_id(conn: asyncpg.Connection) -> int:
    seal_id: int = await conn.fetchval("SELECT nextval('audit_seal_ids')")
    return seal_id


async def seal_rows(
    conn: asyncpg.Connection,
    signer: Signer,
    seal_id: int,
    leaves: Sequence[Leaf],
    correlation_ids: Iterable[str],
    *,
    kind: str = "rows",
    details: dict[str, Any] | None = None,
) -> SealHeader:
    """Appends the seal of `leaves` to the chain; call inside the storing transaction, last."""
    dates = [leaf.event_date for leaf in leaves]
    root = merkle.root([leaf.hash for leaf in leaves])
    # The head is read by a statement of its own after the lock is granted: a statement's snapshot
    # is taken when it starts, and one taken before the wait would miss the seal committed meanwhile.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_ID)
    head = await conn.fetchrow(
        "SELECT chain_index, seal_hash, rows_total FROM audit_seals ORDER BY chain_index DESC LIMIT 1"
    )
    chain_index, prev_hash, rows_before = 0, GENESIS_HASH, 0
    if head is not None:
        chain_index, prev_hash, rows_before = head["chain_index"], bytes(head["seal_hash"]), head["rows_total"]
    header = SealHeader(
        seal_id=seal_id, chain_index=chain_index + 1, kind=kind, prev_hash=prev_hash, merkle_root=root,
        row_count=len(leaves), rows_total=rows_before + len(leaves),
        first_date=min(dates) if dates else None, last_date=max(dates) if dates else None,
        sealed_at=datetime.now(UTC), key_id=signer.key_id, details=details or {},
    )  # fmt: skip
    await conn.execute(
        f"INSERT INTO audit_seals ({HEADER_COLUMNS}, leaves, correlation_ids, seal_hash, signature) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14, $15, $16)",
        header.seal_id, header.chain_index, header.kind, header.prev_hash, header.merkle_root, header.row_count,
        header.rows_total, header.first_date, header.last_date, header.sealed_at, header.key_id,
        canonical_json(header.details).decode(), pack_leaves(leaves), sorted(set(correlation_ids)), header.hash,
        signer.sign(header.hash),
    )  # fmt: skip
    return header
