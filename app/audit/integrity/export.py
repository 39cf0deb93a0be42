"""Verified exports (docs/INTEGRITY.md): NDJSON lines that carry the events with their proofs, the
seals that cover them and the chain up to a signed checkpoint, so that a file can be checked
offline with the public key alone (`datastorage audit verify-export`).

    {"type": "header", "format": "datastorage-audit-export", "version": 1, ...}
    {"type": "seal", "seal": {...header...}, "seal_hash": "...", "signature": "..."}   # once each
    {"type": "event", "chain_index": 7, "proof": {...app/audit/integrity/proofs.py...}}
    {"type": "checkpoint", "checkpoint": {...}}                                         # the newest
    {"type": "end", "events": 1234, "seals": 5}

Seals are written before the first event they cover, and every seal header from the first one
exported up to the checkpoint's is included, so the links from each covering seal to the signed
checkpoint can be followed. An export proves that each event it holds is in the signed chain; it
does not prove that no event of the filter was left out (the seals' leaf counts say how many
rows each covers).
"""

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from app.audit.integrity import merkle
from app.audit.integrity.checkpoints import Checkpoint
from app.audit.integrity.encoding import ENCODED_COLUMNS
from app.audit.integrity.keys import Verifier
from app.audit.integrity.proofs import ProofError, build_proof, check_proof
from app.audit.integrity.seals import HEADER_COLUMNS, SealHeader, unpack_leaves

FORMAT = "datastorage-audit-export"
# Seals (with every leaf's audit path) kept while exporting: a few hundred kB each.
SEALS_KEPT = 64
VERSION = 1


def line(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document) + b"\n"


async def export_lines(
    conn: asyncpg.Connection,
    rows: AsyncIterator[asyncpg.Record],
    checkpoint: Checkpoint | None,
    *,
    filters: dict[str, Any],
    redact: Collection[str] = (),
    progress: Callable[[int], None] = lambda n: None,
) -> AsyncIterator[bytes]:
    """The export of `rows` (each with the event columns, seal_id and integrity_salt)."""
    yield line({"type": "header", "format": FORMAT, "version": VERSION, "created_at": _now(), "filters": filters,
                "redacted": sorted(redact), "key_id": checkpoint.key_id if checkpoint else None})  # fmt: skip
    # The seals of the rows lately exported (rows come in time order, so seals mostly in a run).
    seals: OrderedDict[int, tuple[SealHeader, bytes, list[bytes], dict[Any, int], list[list[bytes]]]] = OrderedDict()
    written_seals: set[int] = set()
    events = unsealed = 0
    first_chain_index: int | None = None
    async for row in rows:
        seal_id = row["seal_id"]
        if seal_id is None:
            unsealed += 1
            continue
        if seal_id not in seals:
            seals[seal_id] = await _load_seal(conn, seal_id)
            if len(seals) > SEALS_KEPT:
                seals.popitem(last=False)
        seals.move_to_end(seal_id)
        header, signature, leaf_hashes, index_of, paths = seals[seal_id]
        if header.chain_index not in written_seals:
            written_seals.add(header.chain_index)
            first_chain_index = min(first_chain_index or header.chain_index, header.chain_index)
            yield line({"type": "seal", "seal": header.as_json(), "seal_hash": header.hash.hex(),
                        "signature": signature.hex()})  # fmt: skip
        values = dict(zip(ENCODED_COLUMNS, (row[name] for name in ENCODED_COLUMNS), strict=True))
        for name in ("event_data", "metadata"):
            if isinstance(values[name], str):
                values[name] = orjson.loads(values[name])
        index = index_of[row["event_id"]]
        proof = build_proof(values, bytes(row["integrity_salt"]), header, signature, leaf_hashes, index,
                            redact=redact, path=paths[index])  # fmt: skip
        events += 1
        progress(1)
        yield line({"type": "event", "chain_index": header.chain_index, "proof": proof})
    if checkpoint is not None and first_chain_index is not None:
        # The chain from the first exported seal up to the checkpoint: the links verify-export follows.
        async for header, seal_hash in _headers(conn, first_chain_index, checkpoint.chain_index):
            if header.chain_index not in written_seals:
                yield line({"type": "link", "seal": header.as_json(), "seal_hash": seal_hash.hex()})
        yield line({"type": "checkpoint", "checkpoint": checkpoint.as_json()})
    yield line({"type": "end", "events": events, "seals": len(written_seals), "unsealed_rows_left_out": unsealed})


async def _load_seal(
    conn: asyncpg.Connection, seal_id: int
) -> tuple[SealHeader, bytes, list[bytes], dict[Any, int], list[list[bytes]]]:
    record = await conn.fetchrow(
        f"SELECT {HEADER_COLUMNS}, signature, leaves FROM audit_seals WHERE seal_id = $1", seal_id
    )
    header = SealHeader.from_record(record)
    leaves = unpack_leaves(bytes(record["leaves"]))
    hashes = [leaf.hash for leaf in leaves]
    return (
        header,
        bytes(record["signature"]),
        hashes,
        {leaf.event_id: n for n, leaf in enumerate(leaves)},
        merkle.audit_paths(hashes),
    )


async def _headers(conn: asyncpg.Connection, first: int, last: int) -> AsyncIterator[tuple[SealHeader, bytes]]:
    async with conn.transaction():
        async for record in conn.cursor(
            f"SELECT {HEADER_COLUMNS}, seal_hash FROM audit_seals WHERE chain_index BETWEEN $1 AND $2 "
            "ORDER BY chain_index",
            first,
            last,
        ):
            yield SealHeader.from_record(record), bytes(record["seal_hash"])


@dataclass
class ExportCheck:
    events: int = 0
    seals: int = 0
    problems: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"intact": self.intact, "events": self.events, "seals": self.seals, "problems": self.problems,
                "checkpoint": self.checkpoint}  # fmt: skip


def verify_export(
    lines: Iterable[bytes], verifier: Verifier, progress: Callable[[int], None] = lambda n: None
) -> ExportCheck:
    """Checks an export offline: every seal's signature, every event's proof against its seal,
    the chain links from every seal to the checkpoint, and the checkpoint's signature."""
    check = ExportCheck()
    seals: dict[int, SealHeader] = {}
    chain: dict[int, SealHeader] = {}
    verified: set[bytes] = set()  # seal hashes whose signature verified: checked once, not per event
    ended = False
    for number, raw in enumerate(_nonblank(lines), 1):
        try:
            document = orjson.loads(raw)
            kind = document["type"]
            if kind == "seal":
                header = SealHeader.from_json(document["seal"])
                if verifier.verify(bytes.fromhex(document["signature"]), header.hash):
                    verified.add(header.hash)
                else:
                    check.problems.append(f"line {number}: seal {header.chain_index} does not verify with the key")
                seals[header.chain_index] = chain[header.chain_index] = header
                check.seals += 1
            elif kind == "link":
                header = SealHeader.from_json(document["seal"])
                chain[header.chain_index] = header
            elif kind == "event":
                proved = check_proof(document["proof"], verifier, verified)
                listed = seals.get(int(document["chain_index"]))
                if listed is None or listed.hash != proved.hash:
                    check.problems.append(f"line {number}: the event's seal is not the one exported before it")
                check.events += 1
                progress(1)
            elif kind == "checkpoint":
                checkpoint = Checkpoint.from_json(document["checkpoint"])
                check.checkpoint = document["checkpoint"]
                _check_links(checkpoint, chain, seals, verifier, check)
            elif kind == "end":
                ended = True
                if int(document["events"]) != check.events:
                    check.problems.append(
                        f"the end line counts {document['events']} events; the file holds {check.events}"
                    )
        except ProofError as error:
            check.problems.append(f"line {number}: {error}")
        except (KeyError, TypeError, ValueError) as error:
            check.problems.append(f"line {number}: not an export line ({type(error).__name__}: {error})")
    if not ended:
        check.problems.append("the export has no end line: it was cut off")
    return check


def _check_links(
    checkpoint: Checkpoint, chain: dict[int, SealHeader], seals: dict[int, SealHeader], verifier: Verifier,
    check: ExportCheck,
) -> None:  # fmt: skip
    if not checkpoint.signature_valid(verifier):
        check.problems.append("the checkpoint does not verify with the key")
        return
    head = chain.get(checkpoint.chain_index)
    if head is None or head.hash != checkpoint.seal_hash:
        check.problems.append("the checkpoint names a seal the export does not carry")
        return
    for index in range(min(seals, default=checkpoint.chain_index), checkpoint.chain_index):
        current, following = chain.get(index), chain.get(index + 1)
        if current is None or following is None or following.prev_hash != current.hash:
            check.problems.append(f"the chain from seal {index} to the checkpoint is broken")
            return


def _nonblank(lines: Iterable[bytes]) -> Iterator[bytes]:
    return (raw for raw in lines if raw.strip())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
