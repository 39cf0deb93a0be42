"""Checks at start (issue 13, item 6): PostgreSQL 16+ and pgvector 0.8+, named at `migrate` and at
start-up with what to do, not at the first search."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from app.core.requirements import RequirementError, check_server, check_versions
from tests.helpers import run_datastorage

DEBIAN_POSTGRES_15 = Path("/usr/lib/postgresql/15/bin")


@pytest.mark.parametrize(("args", "message"), [
    ((150008, "15.8", "0.8.0"), "PostgreSQL 15.8 is too old"),
    ((160004, "16.4", None), "the vector extension (pgvector 0.8 or later) is not available"),
    ((170000, "17.0", "0.7.4"), "pgvector 0.7.4 is the newest this server offers"),
])
def test_what_each_shortfall_says(args, message):
    with pytest.raises(RequirementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_versions(*args, installed=False)
    check_versions(160000, "16.0", "0.8.0", installed=True)  # enough
    check_versions(180001, "18.1", "0.10.1", installed=True)  # 0.10 > 0.8, not a text comparison


async def test_the_test_server_passes_the_check(db):
    await check_server(db)


@pytest.fixture
def postgres_15():
    """Debian's PostgreSQL 15 (no pgvector), started as the postgres user on a socket of its own."""
    if not (DEBIAN_POSTGRES_15 / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("needs Debian's postgresql-15 and runuser")
    home = Path(tempfile.mkdtemp(prefix="pg15-"))
    shutil.chown(home, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, str(DEBIAN_POSTGRES_15 / "initdb"), "-D", str(home / "data"), "-A", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, str(DEBIAN_POSTGRES_15 / "pg_ctl"), "-D", str(home / "data"), "-w", "-l",
                    str(home / "log"), "-o", f"-k {home} -c listen_addresses=''", "start"],
                   check=True, capture_output=True)
    yield f"postgresql://postgres@/postgres?host={home}"
    subprocess.run([*as_postgres, str(DEBIAN_POSTGRES_15 / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate",
                    "stop"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def test_migrate_and_start_up_refuse_postgres_15_saying_what_to_do(postgres_15, redis_url):
    result = run_datastorage({"DATASTORAGE_DATABASE_URL": postgres_15}, "migrate", check=False)
    assert result.returncode == 1
    assert "PostgreSQL 15" in result.stderr and "16 or later" in result.stderr
    assert "Traceback" not in result.stderr
    served = run_datastorage({"DATASTORAGE_DATABASE_URL": postgres_15, "DATASTORAGE_REDIS_URL": redis_url,
                              "DATASTORAGE_METRICS_PORT": "0"}, "consume", check=False)
    assert served.returncode == 2 and "16 or later" in served.stderr
