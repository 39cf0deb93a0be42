"""`datastorage run` as a user starts it: a real process tree, stopped with Ctrl-C (SIGINT)."""

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis

from app.core.db import connect
from tests.helpers import DATASTORAGE, start_run, stop_with_ctrl_c, wait_for_event


async def test_run_starts_embedded_servers_migrates_and_stops_them_on_ctrl_c(tmp_path):
    process = start_run({"DATASTORAGE_DATA_DIR": str(tmp_path), "DATASTORAGE_EMBEDDED_REDIS_PORT": "0"})
    ready = wait_for_event(process, "service_ready")

    conn = await connect(ready["database_url"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 2
        assert await conn.fetchval("SELECT count(*) FROM pg_inherits "
                                   "WHERE inhparent = 'audit_events'::regclass") == 4
    finally:
        await conn.close()
    client = redis.Redis.from_url(ready["redis_url"])
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()

    assert stop_with_ctrl_c(process) == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await connect(ready["database_url"], timeout=5)


async def test_run_keeps_its_data_across_restarts(tmp_path):
    env = {"DATASTORAGE_DATA_DIR": str(tmp_path), "DATASTORAGE_EMBEDDED_REDIS_PORT": "0"}
    first = start_run(env)
    ready = wait_for_event(first, "service_ready")
    assert len(ready["migrations_applied"]) >= 2
    assert stop_with_ctrl_c(first) == 0

    second = start_run(env)
    ready = wait_for_event(second, "service_ready")
    assert ready["migrations_applied"] == []
    assert stop_with_ctrl_c(second) == 0


def test_run_uses_the_given_servers_and_starts_none(tmp_path, database_url, redis_url):
    process = start_run({
        "DATASTORAGE_DATA_DIR": str(tmp_path),
        "DATASTORAGE_DATABASE_URL": database_url,
        "DATASTORAGE_REDIS_URL": redis_url,
    })
    ready = wait_for_event(process, "service_ready")
    assert (ready["database_url"], ready["redis_url"]) == (database_url, redis_url)
    assert list(tmp_path.iterdir()) == []
    assert stop_with_ctrl_c(process) == 0
    assert redis.Redis.from_url(redis_url).ping()


def test_run_names_the_package_when_redis_server_is_missing(tmp_path, database_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")}
    env.update({
        "DATASTORAGE_DATA_DIR": str(tmp_path),
        "DATASTORAGE_DATABASE_URL": database_url,
        "PATH": str(Path(sys.executable).parent),  # the venv's commands, but no redis-server
    })
    result = subprocess.run([DATASTORAGE, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "apt-get install redis-server" in result.stderr
