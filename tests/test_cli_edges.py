"""The command line at its edges (issue 13, item 10): no raw traceback, exit codes that mean
something, exact row counts where rows are dropped."""

import os
import subprocess
from datetime import UTC, datetime

import pytest

from app.audit.partitions import add_months, ensure_partitions, month_start
from tests.helpers import (
    DATASTORAGE,
    EVENTS,
    assert_problem,
    audit_row,
    body_of,
    event,
    insert_audit_row,
    run_datastorage,
)


@pytest.fixture
def servers(database_url, redis_url) -> dict[str, str]:
    return {"DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": redis_url}


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


@pytest.mark.parametrize("args", [
    ["partitions", "drop", "--older-than", "999999999999999999mo", "--dry-run"],
    ["partitions", "drop", "--older-than", "0mo"],
    ["dlq", "show", "foo"],
    ["dlq", "show", "1:2:3"],
    ["dlq", "replay", "foo"],
])
def test_bad_arguments_are_usage_errors_without_a_traceback(servers, args):
    result = run_datastorage(servers, *args, check=False)
    no_traceback(result)
    assert result.returncode == 2, result.stderr


def test_replaying_an_unknown_dead_letter_exits_non_zero(servers):
    result = run_datastorage(servers, "dlq", "replay", "1-1", check=False)
    no_traceback(result)
    assert result.returncode == 1
    assert "1-1" in result.stderr


def test_purge_with_stdin_closed_refuses_without_a_traceback(servers):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({"DATASTORAGE_LOG_FORMAT": "json", **servers})
    for stdin in (subprocess.DEVNULL, None):
        # None with close_fds and a closed descriptor 0: `datastorage dlq purge <&-` in a shell.
        command = [DATASTORAGE, "dlq", "purge"] if stdin is not None else ["bash", "-c", f"{DATASTORAGE} dlq purge <&-"]
        result = subprocess.run(command, env=env, stdin=stdin, capture_output=True, text=True, timeout=60)
        no_traceback(result)
        assert result.returncode == 1
        assert "--yes" in result.stderr


async def test_partitions_drop_shows_exact_row_counts(servers, db):
    old = add_months(month_start(datetime.now(UTC).date()), -20)
    await ensure_partitions(db, [old])
    moment = datetime(old.year, old.month, 3, tzinfo=UTC)
    for n in range(7):
        await insert_audit_row(db, audit_row(moment, resource_id=f"r-{n}"))
    # No ANALYZE: the planner's estimate of the fresh partition is 0 (or -1), the truth is 7.
    result = run_datastorage(servers, "partitions", "drop", "--older-than", "13mo", "--dry-run")
    assert f"audit_events_{old:%Y_%m}  {old:%Y-%m}  7 rows" in result.stdout
    result = run_datastorage(servers, "partitions", "drop", "--older-than", "13mo", "--yes")
    assert "dropped 1 partition(s): 7 row(s) gone" in result.stdout


# --- 400 problem documents name their field ------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({**body_of(event()), "event_timestamp": "2099-01-01T00:00:00Z"}, "event_timestamp"),  # a model-level check
    ({**body_of(event()), "event_timestamp": "1999-12-31T00:00:00Z"}, "event_timestamp"),
    ({**body_of(event()), "resource_id": "a\u0000b"}, "resource_id"),
    ({**body_of(event()), "event_outcome": "maybe"}, "event_outcome"),
    ([], "body"),
    ("text", "body"),
    ([1], "body"),
])
async def test_every_400_of_an_event_write_names_its_field(api, body, field):
    problem = assert_problem(await api.post(EVENTS, json=body), 400)
    assert problem["field"] == field, problem


async def test_a_400_for_a_body_that_is_not_json_names_the_body(api):
    response = await api.post(EVENTS, content=b"{nope", headers={"content-type": "application/json"})
    assert assert_problem(response, 400)["field"] == "body"
