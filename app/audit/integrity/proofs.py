"""Inclusion proofs: what a third party needs to check that one event is in a signed seal, with
the public key alone (docs/INTEGRITY.md). `verify_proof` is exported by the producer library.

A proof is a JSON object:

    {"encoding": 1,
     "event": {...the event as the API returns it; event_data holds the keys it reveals...},
     "openings": {"<event_data key>": "<hex>", ...},          # for each revealed key
     "commitments": {"<event_data key>": "<hex>", ...},       # for each key withheld (redacted)
     "leaf_index": 3, "leaf_count": 500, "audit_path": ["<hex>", ...],
     "seal": {...the seal header...}, "seal_hash": "<hex>", "signature": "<hex>"}
"""

import uuid
from collections.abc import Collection, Mapping
from datetime import date, datetime
from typing import Any

from app.audit.integrity import merkle
from app.audit.integrity.encoding import ENCODED_COLUMNS, VERSION, commitment, encode_row, leaf_hash, opening
from app.audit.integrity.keys import Verifier
from app.audit.integrity.seals import SealHeader

_UUID_COLUMNS = ("event_id", "parent_event_id")


class ProofError(ValueError):
    """The proof does not prove what it claims; the message says which step failed."""


def build_proof(
    row: Mapping[str, Any],
    salt: bytes,
    header: SealHeader,
    signature: bytes,
    leaf_hashes: list[bytes],
    leaf_index: int,
    *,
    redact: Collection[str] = (),
    path: list[bytes] | None = None,
) -> dict[str, Any]:
    """The proof of one stored row (Python values, as read from Postgres); `redact` names the
    event_data keys to withhold (their commitments are given instead); `path`, the leaf's audit
    path when the caller has it (merkle.audit_paths)."""
    event = {name: _as_json(row[name]) for name in ENCODED_COLUMNS}
    event_data = dict(row["event_data"] or {})
    withheld = {key for key in redact if key in event_data}
    event["event_data"] = {key: value for key, value in event_data.items() if key not in withheld}
    return {
        "encoding": VERSION,
        "event": event,
        "openings": {key: opening(salt, key).hex() for key in event["event_data"]},
        "commitments": {key: commitment(opening(salt, key), event_data[key]) for key in sorted(withheld)},
        "leaf_index": leaf_index,
        "leaf_count": len(leaf_hashes),
        "audit_path": [node.hex() for node in (path or merkle.audit_path(leaf_hashes, leaf_index))],
        "seal": header.as_json(),
        "seal_hash": header.hash.hex(),
        "signature": signature.hex(),
    }


def proof_leaf_hash(proof: Mapping[str, Any]) -> bytes:
    """The leaf hash the proof's event has (its revealed values and withheld commitments)."""
    if proof.get("encoding") != VERSION:
        raise ProofError(f"unknown encoding {proof.get('encoding')!r}")
    event = proof["event"]
    revealed = dict(event.get("event_data") or {})
    openings = proof.get("openings") or {}
    committed = dict(proof.get("commitments") or {})
    for key, value in revealed.items():
        if key not in openings:
            raise ProofError(f"event_data.{key}: no opening")
        committed[key] = commitment(bytes.fromhex(openings[key]), value)
    values = [_from_json(name, event.get(name)) for name in ENCODED_COLUMNS]
    return leaf_hash(encode_row(values, b"", committed=committed))


def check_proof(proof: Mapping[str, Any], verifier: Verifier, verified: set[bytes] | None = None) -> SealHeader:
    """Raises ProofError unless the event is a leaf of a seal signed with the verifier's key;
    returns the seal's header. `verified`: hashes of seal headers whose signature was checked
    already (an export's events share their seals' signatures), kept up to date."""
    try:
        leaf = proof_leaf_hash(proof)
        header = SealHeader.from_json(proof["seal"])
        root = merkle.root_from_path(
            leaf, int(proof["leaf_index"]), int(proof["leaf_count"]), [bytes.fromhex(n) for n in proof["audit_path"]]
        )
        signature = bytes.fromhex(proof["signature"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ProofError):
            raise
        raise ProofError(f"malformed proof ({type(error).__name__}: {error})") from None
    if root != header.merkle_root:
        raise ProofError("the event is not in the seal's Merkle tree (the event or the path was changed)")
    if header.hash.hex() != proof.get("seal_hash", header.hash.hex()):
        raise ProofError("the seal header does not hash to the seal hash given")
    seal_hash = header.hash
    if verified is not None and seal_hash in verified:
        return header
    if not verifier.verify(signature, seal_hash):
        raise ProofError("the seal's signature does not verify with this public key")
    if verified is not None:
        verified.add(seal_hash)
    return header


def verify_proof(proof: Mapping[str, Any], public_key_pem: bytes) -> bool:
    """Whether `proof` proves its event is in a seal signed with the key of `public_key_pem`."""
    try:
        check_proof(proof, Verifier.from_pem(public_key_pem))
    except ProofError:
        return False
    return True


def _as_json(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _from_json(name: str, value: Any) -> Any:
    """A JSON value of the API back to the Python value the encoding takes."""
    if value is None:
        return None
    if name in _UUID_COLUMNS:
        return uuid.UUID(str(value))
    if name == "event_timestamp":
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if name == "event_date":
        return date.fromisoformat(str(value))
    return value
