"""The canonical encoding of a stored row, version 1 (docs/INTEGRITY.md), pinned by test vectors:
a change of these bytes is a new encoding version, never an edit. And values that Postgres's
jsonb could read back differently (floats, negative zero, Unicode, key order) verify after a
real round trip through Postgres.
"""

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from app.audit.integrity import merkle
from app.audit.integrity.encoding import encode_row, leaf_hash, opening
from app.audit.integrity.verify import Window, verify
from app.audit.store import AuditStore
from app.catalog.store import create_pool
from tests.helpers import event, submitted

ROW = [
    uuid.UUID("0190f3a2-7c4e-7d2a-9b1e-3f5a6c7d8e9f"), "notification.sent", "notification", "success",
    datetime(2026, 11, 26, 9, 30, 0, 5, tzinfo=timezone(timedelta(hours=1))), date(2026, 11, 26), "gateway", None,
    "service", "svc-1", None, "notification", "notif-1", None,
    {"n": 1, "reason": "CrashLoopBackOff", "nested": {"é": [1, 2.5, None, True]}}, "rem-1", None, None, None,
    {"z": 1, "a": -0.0},
]  # fmt: skip
SALT = bytes(range(16))
ENCODING_V1 = (
    '[1,"0190f3a2-7c4e-7d2a-9b1e-3f5a6c7d8e9f","notification.sent","notification","success",'
    '"2026-11-26T08:30:00.000005Z","2026-11-26","gateway",null,"service","svc-1",null,"notification","notif-1",null,'
    '{"n":"4a53aa53f0b850d0540bb212e7289b80c4205d06e7a9d0a2c34b2037bd1580a5",'
    '"nested":"ef995e7cf6c2d36d3cbcc95bcf1eb18813688ee9acf7e97feafebda76da95979",'
    '"reason":"d4892a4738d85af0ef672996f62f2960de38476ff9f7f25b84d3e1aa44453889"},'
    '"rem-1",null,null,null,{"a":0.0,"z":1}]'
)
LEAF_V1 = "00d8d642948b6332394798a89db93d71eadb4c928dff2abbf9e259d2a1c1d751"


def test_version_1_encodes_a_row_to_these_bytes_and_leaf_hash():
    encoded = encode_row(ROW, SALT)
    assert encoded.decode() == ENCODING_V1
    assert leaf_hash(encoded).hex() == LEAF_V1


def test_an_event_data_commitment_is_sha256_of_the_opening_and_the_canonical_value():
    key_opening = hashlib.sha256(SALT + b"reason").digest()
    assert opening(SALT, "reason") == key_opening
    assert hashlib.sha256(key_opening + b'"CrashLoopBackOff"').hexdigest() in ENCODING_V1
    nested = hashlib.sha256(opening(SALT, "nested") + '{"é":[1,2.5,null,true]}'.encode()).hexdigest()
    assert nested in ENCODING_V1


def test_every_column_counts():
    base = leaf_hash(encode_row(ROW, SALT))
    for position, value in enumerate(ROW):
        changed = list(ROW)
        changed[position] = {"x": 1} if isinstance(value, dict) else "x" if value is None else None
        assert leaf_hash(encode_row(changed, SALT)) != base, position
    assert leaf_hash(encode_row(ROW, bytes(16))) != base


# RFC 6962's Merkle tree test vectors (the leaves of the Certificate Transparency reference tests).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]  # fmt: skip


def test_merkle_roots_are_rfc_6962s():
    hashes = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in CT_LEAVES]
    assert merkle.root(hashes[:1]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert merkle.root(hashes).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 16, 17, 33])
def test_every_audit_path_leads_to_the_root_and_no_other_leaf_does(size):
    hashes = [hashlib.sha256(n.to_bytes(4, "big")).digest() for n in range(size)]
    root = merkle.root(hashes)
    for index in range(size):
        path = merkle.audit_path(hashes, index)
        assert merkle.root_from_path(hashes[index], index, size, path) == root
        assert merkle.root_from_path(b"\x00" * 32, index, size, path) != root
    assert merkle.audit_paths(hashes) == [merkle.audit_path(hashes, index) for index in range(size)]
    with pytest.raises(ValueError):
        merkle.root_from_path(hashes[0], size, size, [])


ROUND_TRIPS = {
    "floats": {"big": 1e20, "one": 1.0, "tiny": 1.5e-7, "third": 1 / 3, "max": 1.7976931348623157e308, "sub": 5e-324},
    "negative zero": {"z": -0.0, "in list": [-0.0, 0.0]},
    "integers at 64 bits": {"max": 2**63 - 1, "min": -(2**63)},
    "unicode and escapes": {"text": "é\u2028😀 a\"b\\c\n\t\x01", "é": 1, "e": 2, "Z": 3},
    "empty and nested": {"empty": {}, "list": [], "nested": {"b": 1, "a": [True, False, None]}},
}


@pytest.mark.parametrize("event_data", ROUND_TRIPS.values(), ids=list(ROUND_TRIPS))
async def test_values_read_back_from_postgres_verify(database_url, db, signer, event_data):
    stored = event(1, event_data=event_data, metadata=event_data, event_timestamp=datetime.now(UTC) - timedelta(1))
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await AuditStore(pool, signer).insert(submitted([stored]))
    finally:
        await pool.close()
    report = await verify(db, signer.verifier, [], Window())
    assert report.intact and report.rows == 1, report.findings
