"""A newcomer's first run (issue 13): the commands find `datastorage run`'s embedded servers, the
sample catalog is there to search, and no secret reaches a log."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from app.core.db import connect
from app.core.logs import mask_url
from app.core.settings import PROJECT_ROOT
from app.local.embedded import LocalRedis, free_port
from app.local.state import process_start_time, read_state
from tests.helpers import run_datastorage, start_run, stop_with_ctrl_c, wait_for_event

README = (PROJECT_ROOT / "README.md").read_text()


def embedded_env(data_dir: Path) -> dict[str, str]:
    """Embedded defaults, on ports of this test's own."""
    return {
        "DATASTORAGE_DATA_DIR": str(data_dir),
        "DATASTORAGE_EMBEDDED_REDIS_PORT": "0",
        "DATASTORAGE_HTTP_PORT": str(free_port()),
        "DATASTORAGE_METRICS_PORT": "0",
    }


async def test_commands_use_the_running_service_and_say_what_to_do_when_none_runs(tmp_path):
    env = embedded_env(tmp_path)
    process = start_run(env)
    wait_for_event(process, "service_running")
    try:
        state_file = tmp_path / "run.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = read_state(tmp_path)
        assert state is not None and state.pid == process.pid and state.alive()

        # Only the data folder, as a second terminal in the same checkout has.
        only_data_dir = {"DATASTORAGE_DATA_DIR": str(tmp_path)}
        status = run_datastorage(only_data_dir, "stream", "status", "--json")
        assert json.loads(status.stdout)
        assert run_datastorage(only_data_dir, "dlq", "list").returncode == 0
        assert run_datastorage(only_data_dir, "partitions", "list").returncode == 0

        # The sample catalog was imported into the empty catalog: the first search finds something.
        found = run_datastorage(only_data_dir, "playbooks", "search", "pod killed out of memory, exit code 137", "--json")
        assert json.loads(found.stdout)["playbooks"][0]["playbook_id"] == "pod-oom-killed"

        # A second run on the same folder refuses, naming the first.
        second = run_datastorage(env, "run", check=False)
        assert second.returncode == 1
        assert f"pid {process.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        assert stop_with_ctrl_c(process) == 0
    assert not state_file.exists()

    refused = run_datastorage({"DATASTORAGE_DATA_DIR": str(tmp_path)}, "stream", "status", check=False)
    assert refused.returncode != 0
    assert "datastorage run" in refused.stderr and "DATASTORAGE_REDIS_URL" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_state_file_left_by_a_killed_run_is_recognised(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = {
        "pid": dead.pid, "started": None, "database_url": "postgresql://postgres@/gone?host=/nowhere",
        "redis_url": "redis://127.0.0.1:1/0", "http_port": 8080, "metrics_port": 9090,
    }
    (tmp_path / "run.json").write_text(json.dumps(left))
    result = run_datastorage({"DATASTORAGE_DATA_DIR": str(tmp_path)}, "dlq", "list", check=False)
    assert result.returncode != 0
    assert "stale_run_state_ignored" in result.stderr
    assert "no `datastorage run` is up" in result.stderr

    # A live pid that is another process (a reused pid) is not the run either.
    left.update(pid=os.getpid(), started=process_start_time(os.getpid()) + 1)
    (tmp_path / "run.json").write_text(json.dumps(left))
    result = run_datastorage({"DATASTORAGE_DATA_DIR": str(tmp_path)}, "dlq", "list", check=False)
    assert "stale_run_state_ignored" in result.stderr


async def test_no_sample_catalog_when_turned_off_or_on_given_servers(tmp_path, database_url, redis_url):
    off = start_run(embedded_env(tmp_path / "off"), "--no-sample-catalog")
    wait_for_event(off, "service_running")
    state = read_state(tmp_path / "off")
    conn = await connect(state.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM playbook_catalog") == 0
    finally:
        await conn.close()
    assert stop_with_ctrl_c(off) == 0

    given = start_run({**embedded_env(tmp_path / "given"), "DATASTORAGE_DATABASE_URL": database_url,
                       "DATASTORAGE_REDIS_URL": redis_url})
    wait_for_event(given, "service_running")
    assert not (tmp_path / "given" / "run.json").exists()  # nothing embedded: nothing to find
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM playbook_catalog") == 0
    finally:
        await conn.close()
    assert stop_with_ctrl_c(given) == 0


def test_mask_url_hides_every_credential():
    assert mask_url("redis://:hunter22@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("postgresql://app:p%40ss@db:5432/x?sslmode=require") == "postgresql://app:***@db:5432/x?sslmode=require"
    assert mask_url("error at postgres://u:pw@h/db, retrying") == "error at postgres://u:***@h/db, retrying"
    assert mask_url("host=db password=s3cret user=app") == "host=db password=*** user=app"
    assert mask_url("postgresql://db/x?password=s3cret&sslmode=require") == "postgresql://db/x?password=***&sslmode=require"
    assert mask_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"


async def test_no_password_or_token_in_the_logs_of_a_run(tmp_path, database_url):
    password, tokens = "Pg-Secret-4711", ("tok-admin-5150", "tok-reader-8086")
    # A Redis that requires a password, and the test Postgres reached with one (it trusts its
    # socket, so any password is accepted: what matters is where the password goes).
    local = LocalRedis(tmp_path / "redis")
    local.start()
    try:
        redis.Redis(port=local.port).config_set("requirepass", password)
        redis_url = f"redis://:{password}@127.0.0.1:{local.port}/0"
        with_password = database_url.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)
        assert password in with_password
        token_file = tmp_path / "tokens"
        token_file.write_text(f"{tokens[1]} audit:read reader\n")
        port = free_port()
        log_path = tmp_path / "run.log"
        with open(log_path, "w") as log_file:
            process = start_run({
                "DATASTORAGE_DATA_DIR": str(tmp_path / "data"),
                "DATASTORAGE_DATABASE_URL": with_password,
                "DATASTORAGE_REDIS_URL": redis_url,
                "DATASTORAGE_DATABASE_READ_URL": f"postgresql://reader:{password}@127.0.0.1:1/nothing",
                "DATASTORAGE_API_TOKENS": tokens[0],
                "DATASTORAGE_API_TOKENS_FILE": str(token_file),
                "DATASTORAGE_HTTP_PORT": str(port),
                "DATASTORAGE_METRICS_PORT": "0",
                "DATASTORAGE_LOG_LEVEL": "debug",
            }, stderr=log_file)
        try:
            deadline = time.monotonic() + 60
            while "service_running" not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            base = f"http://127.0.0.1:{port}"
            while True:  # service_running is logged a moment before the port listens
                try:
                    httpx.get(f"{base}/healthz", timeout=5)
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            for token in (*tokens, "tok-wrong-0000"):
                httpx.get(f"{base}/api/v1/audit-events", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            # A token where a cursor belongs: the 400 names the parameter, never echoes the value in a log.
            httpx.get(f"{base}/api/v1/audit-events", params={"cursor": tokens[0]},
                      headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=10)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        log = log_path.read_text()
        assert "service_stopped" in log
        assert "redis://:***@127.0.0.1" in log  # the URLs are still logged, masked
        for secret in (password, *tokens):
            assert secret not in log
    finally:
        local.stop()


async def test_the_first_five_minutes_of_the_readme_work_as_written(tmp_path):
    block = re.search(r"<!-- first-five-minutes -->\n```sh\n(.*?)```\n<!-- /first-five-minutes -->", README, re.S)
    assert block, "the README has no first-five-minutes block"
    commands = [line for line in block[1].splitlines() if line.strip() and not line.startswith("#")]
    env = embedded_env(tmp_path)
    process = start_run(env)
    wait_for_event(process, "service_running")
    try:
        redis_port = str(urlsplit(read_state(tmp_path).redis_url).port)
        wait_for_http(int(env["DATASTORAGE_HTTP_PORT"]))
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
        shell_env["DATASTORAGE_DATA_DIR"] = str(tmp_path)  # as the checkout's .datastorage/ is found
        for command in commands:
            # The README's ports are the defaults; this run has ports of its own.
            command = command.replace("-p 6380", f"-p {redis_port}").replace(
                "localhost:8080", f"localhost:{env['DATASTORAGE_HTTP_PORT']}")
            deadline = time.monotonic() + 30
            while True:  # the consumer stores an XADDed event within a second or so
                result = subprocess.run(["bash", "-c", command], cwd=PROJECT_ROOT, env=shell_env,
                                        capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, (command, result.stderr)
                if expected_in(command, result.stdout) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert expected_in(command, result.stdout), (command, result.stdout)
    finally:
        assert stop_with_ctrl_c(process) == 0


def wait_for_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not answer"
        time.sleep(0.1)


def expected_in(command: str, output: str) -> bool:
    """What each step of the first five minutes shows."""
    if "XADD" in command:
        return re.fullmatch(r"\d+-\d+\n", output) is not None
    if "curl" in command:
        return '"correlation_id":"rem-42"' in output
    if "playbooks search" in command:
        return "pod-oom-killed" in output.splitlines()[0]
    if "dlq list" in command:
        return "validation" in output
    if "stream status" in command:
        return "audit_events" in output
    raise AssertionError(f"no expectation for {command}")


def test_every_redis_cli_line_of_the_readme_names_its_server():
    for line in README.splitlines():
        if "redis-cli" in line and ("XADD" in line or "XLEN" in line):
            assert "-p 6380" in line or "-h " in line, line
