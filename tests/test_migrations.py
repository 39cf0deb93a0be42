"""`datastorage migrate`: idempotent, recorded, safe to run from several processes at once."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.db import connect
from app.core.migrations import MigrationError, apply_migrations, discover, migrate_database
from tests.helpers import SCHEMA_DIR


async def schema_snapshot(conn) -> list:
    """Every relation, column, index, function and trigger of the public schema."""
    return await conn.fetch(
        """
        SELECT 'relation', c.relname, c.relkind::text FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'column', table_name || '.' || column_name, data_type FROM information_schema.columns
            WHERE table_schema = 'public'
        UNION ALL
        SELECT 'function', p.proname, md5(p.prosrc) FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'trigger', tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal
        ORDER BY 1, 2, 3
        """
    )


async def test_first_run_applies_every_file_and_records_it(empty_database_url):
    applied = await migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=3)
    assert [m.version for m in applied] == [m.version for m in discover(SCHEMA_DIR)]
    conn = await connect(empty_database_url)
    try:
        recorded = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in recorded] == [
            (m.version, m.checksum) for m in discover(SCHEMA_DIR)
        ]
    finally:
        await conn.close()


async def test_second_run_changes_nothing(empty_database_url):
    await migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=3)
    conn = await connect(empty_database_url)
    try:
        before = await schema_snapshot(conn)
        assert await migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=3) == []
        assert await schema_snapshot(conn) == before
    finally:
        await conn.close()


async def test_a_changed_applied_migration_is_refused(empty_database_url, tmp_path):
    for migration in discover(SCHEMA_DIR):
        (tmp_path / f"{migration.version:03d}_{migration.name}.sql").write_text(migration.sql)
    await migrate_database(empty_database_url, tmp_path, months_ahead=0)
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    conn = await connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, tmp_path)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(empty_database_url, tmp_path):
    (tmp_path / "001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    conn = await connect(empty_database_url)
    try:
        with pytest.raises(Exception, match="no_such_function"):
            await apply_migrations(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('good') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
        assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
    finally:
        await conn.close()


async def test_concurrent_migrations_in_one_process_take_turns(empty_database_url):
    results = await asyncio.gather(
        *(migrate_database(empty_database_url, SCHEMA_DIR, months_ahead=3) for _ in range(4))
    )
    # Exactly one run applied everything; the others found it done.
    assert sorted(len(applied) for applied in results) == [0, 0, 0, len(discover(SCHEMA_DIR))]


def test_two_migrate_processes_started_at_once_both_succeed(empty_database_url):
    env = {**os.environ, "DATASTORAGE_DATABASE_URL": empty_database_url, "DATASTORAGE_LOG_FORMAT": "json"}
    command = [str(Path(sys.executable).parent / "datastorage"), "migrate"]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(stdout.strip() for stdout, _ in outputs) == [
        f"applied {len(discover(SCHEMA_DIR))} migration(s)",
        "schema is up to date",
    ]


def test_migration_files_are_numbered_without_gaps():
    assert [m.version for m in discover(SCHEMA_DIR)] == list(range(1, len(discover(SCHEMA_DIR)) + 1))
