"""The tamper-evident trail over HTTP: an event's proof, checked by a third party with the public
key alone (`app.producer.verify_proof`); POST /api/v1/audit/verify; the verified NDJSON export."""

import copy
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.audit.integrity.export import verify_export
from app.audit.integrity.keys import Verifier, generate_key_pair, public_key_path
from app.producer import verify_proof
from tests.helpers import EVENTS, assert_problem, audit_row, client_for, event, insert_audit_row, store_sealed, tamper

YESTERDAY = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture
async def sealed(settings, signer):
    batch = [
        event(n, event_timestamp=YESTERDAY + timedelta(seconds=n), correlation_id=f"rem-{n // 10}",
              event_data={"n": n, "recipient": f"user{n}@example.com"})
        for n in range(30)
    ]  # fmt: skip
    await store_sealed(settings, signer, batch, per_seal=7)
    return batch


@pytest.fixture
async def sealing_api(settings, signer):
    async with client_for(settings, signer) as client:
        yield client


@pytest.fixture
def public_pem(signing_key) -> bytes:
    """All the third party has."""
    return public_key_path(signing_key).read_bytes()


async def test_a_proof_convinces_a_third_party_with_the_public_key_alone(sealing_api, sealed, public_pem):
    for chosen in (sealed[0], sealed[10], sealed[29]):
        response = await sealing_api.get(f"{EVENTS}/{chosen.event_id}/proof")
        assert response.status_code == 200, response.text
        proof = response.json()
        assert proof["event"]["event_id"] == str(chosen.event_id)
        assert proof["event"]["event_data"] == chosen.event_data
        assert verify_proof(proof, public_pem)


async def test_a_proof_altered_anywhere_fails(sealing_api, sealed, public_pem, tmp_path):
    proof = (await sealing_api.get(f"{EVENTS}/{sealed[4].event_id}/proof")).json()
    changes = {
        "event value": lambda p: p["event"]["event_data"].update(n=999),
        "event column": lambda p: p["event"].update(event_outcome="failure"),
        "leaf index": lambda p: p.update(leaf_index=(p["leaf_index"] + 1) % p["leaf_count"]),
        "audit path": lambda p: p["audit_path"].__setitem__(0, "00" * 32),
        "seal": lambda p: p["seal"].update(rows_total=p["seal"]["rows_total"] + 1),
        "signature": lambda p: p.update(signature="00" * 64),
        "opening": lambda p: p["openings"].update(n="00" * 32),
    }
    for name, change in changes.items():
        altered = copy.deepcopy(proof)
        change(altered)
        assert not verify_proof(altered, public_pem), name
    _, other_public = generate_key_pair(tmp_path)
    assert not verify_proof(proof, other_public.read_bytes())


async def test_proof_answers_404_for_an_unknown_or_unsealed_event_and_400_for_a_bad_id(sealing_api, db, sealed):
    assert_problem(await sealing_api.get(f"{EVENTS}/{uuid.uuid4()}/proof"), 404, "no audit event")
    assert_problem(await sealing_api.get(f"{EVENTS}/not-a-uuid/proof"), 400, "event_id")
    unsealed = audit_row(YESTERDAY, event_id=uuid.uuid4())
    await insert_audit_row(db, unsealed)
    assert_problem(await sealing_api.get(f"{EVENTS}/{unsealed['event_id']}/proof"), 404, "not sealed")


async def test_verify_answers_intact_then_names_what_was_tampered(sealing_api, database_url, sealed):
    window = {"since": (YESTERDAY - timedelta(hours=1)).isoformat(), "until": datetime.now(UTC).isoformat()}
    response = await sealing_api.post("/api/v1/audit/verify", json=window)
    assert response.status_code == 200
    assert response.json()["intact"] is True and response.json()["rows"] == 30

    deleted, changed = sealed[12], sealed[24]  # seals of 7: the changed one is not a seal of rem-1
    await tamper(
        database_url, ("DELETE FROM audit_events WHERE event_id = $1", deleted.event_id),
        ("UPDATE audit_events SET actor_id = 'mallory' WHERE event_id = $1", changed.event_id),
    )  # fmt: skip
    answer = (await sealing_api.post("/api/v1/audit/verify", json=window)).json()
    assert answer["intact"] is False
    assert {(f["kind"], f["event_id"]) for f in answer["findings"]} == {
        ("row_deleted", str(deleted.event_id)), ("row_changed", str(changed.event_id)),
    }  # fmt: skip
    by_correlation = (await sealing_api.post("/api/v1/audit/verify", json={"correlation_id": "rem-1"})).json()
    assert [(f["kind"], f["event_id"]) for f in by_correlation["findings"]] == [("row_deleted", str(deleted.event_id))]


@pytest.mark.parametrize(
    "body, detail",
    [({}, "since"), ({"since": "2d"}, "until"), ({"since": "40d", "until": "1m"}, "at most"),
     ({"since": "1h", "until": "2h"}, "earlier"), ({"correlation_id": "x", "since": "1h"}, "alone"),
     ({"correlation_id": ""}, "correlation_id"), ({"window": "all"}, "window")],
)  # fmt: skip
async def test_verify_refuses_unbounded_or_malformed_requests(sealing_api, body, detail):
    assert_problem(await sealing_api.post("/api/v1/audit/verify", json=body), 400, detail)


async def test_verify_without_a_key_is_incomplete_not_intact(api, sealed):
    answer = (await api.post("/api/v1/audit/verify", json={"correlation_id": "rem-0"})).json()
    assert answer["intact"] is False and "no signing key" in answer["incomplete"]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_the_export_streams_ndjson_that_verifies_offline(sealing_api, sealed, public_pem, gzipped):
    headers = {"Accept-Encoding": "gzip"} if gzipped else {"Accept-Encoding": "identity"}
    response = await sealing_api.get(f"{EVENTS}/export", params={"correlation_id": "rem-2"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = response.content  # httpx undoes Content-Encoding: gzip
    assert (response.headers.get("content-encoding") == "gzip") is gzipped
    check = verify_export(body.splitlines(), Verifier.from_pem(public_pem))
    assert check.intact, check.problems
    assert check.events == 10 and check.checkpoint is not None
    assert not verify_export(body.replace(b"user21@", b"user99@").splitlines(), Verifier.from_pem(public_pem)).intact
