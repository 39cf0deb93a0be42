"""`datastorage audit keygen|verify|checkpoints|export|verify-export` as an operator runs them
(real processes, real Postgres and Redis): exit 0 intact, 1 tampered, 2 usage, 3 could not verify;
`--json` answers a machine; an export is checked offline with the public key alone."""

import gzip
import json
import stat
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from app.audit.integrity.keys import PUBLIC_KEY_FILE, public_key_path
from tests.helpers import event, run_datastorage, store_sealed, tamper

YESTERDAY = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture
async def sealed(settings, signer):
    batch = [
        event(n, event_timestamp=YESTERDAY + timedelta(seconds=n), correlation_id=f"rem-{n // 10}",
              event_data={"n": n, "recipient": f"user{n}@example.com", "reason": "CrashLoopBackOff"})
        for n in range(40)
    ]  # fmt: skip
    await store_sealed(settings, signer, batch)
    return batch


@pytest.fixture
def env(database_url, redis_url, signing_key) -> dict[str, str]:
    return {
        "DATASTORAGE_DATABASE_URL": database_url,
        "DATASTORAGE_REDIS_URL": redis_url,
        "DATASTORAGE_AUDIT_SIGNING_KEY_FILE": str(signing_key),
    }


def audit(env: dict, *args: str):
    return run_datastorage(env, "audit", *args, check=False)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    result = run_datastorage({}, "audit", "keygen", str(tmp_path / "keys"))
    private, public = tmp_path / "keys" / "audit-signing.key", tmp_path / "keys" / PUBLIC_KEY_FILE
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert str(public) in result.stdout
    before = private.read_bytes()

    again = run_datastorage({}, "audit", "keygen", str(tmp_path / "keys"), check=False)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert private.read_bytes() == before


async def test_verify_exits_0_on_an_intact_trail_and_prints_json(env, sealed):
    result = audit(env, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["intact"] is True and report["rows"] == 40 and report["findings"] == []
    assert report["checkpoints"] == 1 and report["seals"] == 2

    human = audit(env, "verify", "--since", "2d", "--until", datetime.now(UTC).isoformat())
    assert human.returncode == 0 and "intact" in human.stdout


async def test_verify_exits_1_and_names_the_changed_and_the_deleted_event(env, database_url, sealed):
    changed, deleted = sealed[3], sealed[25]
    await tamper(
        database_url,
        ("UPDATE audit_events SET event_data = event_data || '{\"n\": 1000}' WHERE event_id = $1", changed.event_id),
        ("DELETE FROM audit_events WHERE event_id = $1", deleted.event_id),
    )
    result = audit(env, "verify", "--json")
    assert result.returncode == 1, result.stderr
    findings = {(f["kind"], f["event_id"]) for f in json.loads(result.stdout)["findings"]}
    assert findings == {("row_changed", str(changed.event_id)), ("row_deleted", str(deleted.event_id))}

    human = audit(env, "verify")
    assert human.returncode == 1
    assert "row_deleted" in human.stdout and str(deleted.event_id) in human.stdout and "TAMPERED" in human.stdout

    # Only the deleted event's correlation: its seal still lists it.
    by_correlation = audit(env, "verify", "--correlation-id", deleted.correlation_id, "--json")
    assert by_correlation.returncode == 1
    assert [(f["kind"], f["event_id"]) for f in json.loads(by_correlation.stdout)["findings"]] == [
        ("row_deleted", str(deleted.event_id))
    ]


async def test_a_saved_checkpoint_finds_a_cut_off_head_after_redis_lost_its_copies(env, database_url, client, sealed,
                                                                                  tmp_path):  # fmt: skip
    saved = audit(env, "checkpoints", "--json")
    assert saved.returncode == 0
    (tmp_path / "checkpoints.json").write_text(saved.stdout)
    assert json.loads(saved.stdout)[0]["chain_index"] == 2

    await client.delete("audit_checkpoints")
    await tamper(
        database_url, ("DELETE FROM audit_events WHERE seal_id = (SELECT seal_id FROM audit_seals WHERE chain_index = 2)",),
        ("DELETE FROM audit_seals WHERE chain_index = 2",), ("DELETE FROM audit_checkpoints",),
    )  # fmt: skip
    result = audit(env, "verify", "--checkpoint", str(tmp_path / "checkpoints.json"), "--json")
    assert result.returncode == 1
    assert [f["kind"] for f in json.loads(result.stdout)["findings"]] == ["seals_cut_off"]


async def test_verify_with_another_public_key_exits_1(env, sealed, tmp_path):
    run_datastorage({}, "audit", "keygen", str(tmp_path))
    result = audit(env, "verify", "--public-key", str(tmp_path / PUBLIC_KEY_FILE), "--json")
    assert result.returncode == 1
    assert {f["kind"] for f in json.loads(result.stdout)["findings"]} == {"seal_signature", "checkpoint_signature"}


@pytest.mark.parametrize(
    "args",
    [["--since", "yesterday"], ["--since", "1h", "--until", "2h"], ["--checkpoint", "/nonexistent.json"],
     ["--public-key", "/nonexistent.pub"]],
    ids=["bad time", "empty window", "no checkpoint file", "no key file"],
)  # fmt: skip
def test_verify_usage_errors_exit_2(env, args):
    result = audit(env, "verify", *args)
    assert result.returncode == 2, result.stdout + result.stderr


def test_verify_without_any_key_is_a_usage_error(database_url, redis_url):
    result = run_datastorage({"DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": redis_url},
                             "audit", "verify", check=False)  # fmt: skip
    assert result.returncode == 2 and "--public-key" in result.stderr


def test_verify_exits_3_when_postgres_is_unreachable(env):
    result = audit({**env, "DATASTORAGE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "verify", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Postgres could not be reached" in json.loads(result.stdout)["incomplete"]


async def test_an_export_verifies_offline_with_the_public_key_and_a_changed_line_does_not(env, signing_key, sealed,
                                                                                          tmp_path):  # fmt: skip
    exported = tmp_path / "export.ndjson"
    result = audit(env, "export", "--output", str(exported), "--since", "2d")
    assert result.returncode == 0, result.stderr
    assert "exported 40 event(s)" in result.stdout
    public = str(public_key_path(signing_key))
    check = run_datastorage({}, "audit", "verify-export", str(exported), "--public-key", public, "--json", check=False)
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["events"] == 40

    lines = exported.read_bytes().splitlines()
    forged = [line.replace(b"CrashLoopBackOff", b"Completed", 1) if b'"type":"event"' in line else line
              for line in lines]  # fmt: skip
    (tmp_path / "forged.ndjson").write_bytes(b"\n".join(forged) + b"\n")
    bad = run_datastorage({}, "audit", "verify-export", str(tmp_path / "forged.ndjson"), "--public-key", public,
                          check=False)  # fmt: skip
    assert bad.returncode == 1 and "not in the seal's Merkle tree" in bad.stdout

    (tmp_path / "cut.ndjson").write_bytes(b"\n".join(lines[:-3]) + b"\n")
    cut = run_datastorage({}, "audit", "verify-export", str(tmp_path / "cut.ndjson"), "--public-key", public,
                          check=False)  # fmt: skip
    assert cut.returncode == 1 and "cut off" in cut.stdout


async def test_a_gzip_export_redacted_of_a_key_still_verifies_without_the_value(env, signing_key, sealed, tmp_path):
    exported = tmp_path / "export.ndjson.gz"
    result = audit(env, "export", "--output", str(exported), "--correlation-id", "rem-1", "--redact", "recipient")
    assert result.returncode == 0, result.stderr
    text = gzip.decompress(exported.read_bytes())
    assert b"@example.com" not in text
    events = [orjson.loads(line) for line in text.splitlines() if b'"type":"event"' in line]
    assert len(events) == 10 and all("recipient" in e["proof"]["commitments"] for e in events)
    check = run_datastorage({}, "audit", "verify-export", str(exported), "--public-key",
                            str(public_key_path(signing_key)), check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout


async def test_verify_exits_3_without_the_checkpoints_in_redis_unless_a_file_gives_them(env, sealed, tmp_path):
    saved = audit(env, "checkpoints", "--json").stdout
    (tmp_path / "checkpoints.json").write_text(saved)
    away = {**env, "DATASTORAGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = audit(away, "verify", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "checkpoints in Redis could not be read" in json.loads(result.stdout)["incomplete"]
    with_file = audit(away, "verify", "--checkpoint", str(tmp_path / "checkpoints.json"), "--json")
    assert with_file.returncode == 0, with_file.stdout + with_file.stderr
