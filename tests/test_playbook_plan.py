"""Plan compatibility of the catalog for catalogs managed in SQL (issue 13, item 7): content_hash
in INSERTs, one row per semantic version whatever its spelling, the latest version whatever its
status, a bounded content."""

import hashlib

import asyncpg
import pytest
import yaml

from app.catalog.importer import read_catalog
from app.catalog.playbook import CatalogError, PlaybookEntry, canonical_version
from app.catalog.store import upsert_entries, versions
from tests.helpers import run_datastorage

INSERT = (
    "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, content_hash, labels) "
    "VALUES ($1, $2, 'n', 'd', $3, $4, '{}')"
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_an_insert_may_carry_the_content_hash_the_plan_way(db):
    await db.execute(INSERT, "pb-1", "1.0.0", "kubectl rollout undo ✓", sha("kubectl rollout undo ✓"))
    await db.execute(INSERT, "pb-2", "1.0.0", "steps", sha("steps").upper())  # stored lower-case
    await db.execute(INSERT, "pb-3", "1.0.0", "steps", None)  # left out: computed
    assert {r["content_hash"] for r in await db.fetch("SELECT content_hash FROM playbook_catalog")} == {
        sha("kubectl rollout undo ✓"), sha("steps")}
    with pytest.raises(asyncpg.CheckViolationError, match="content_hash does not match"):
        await db.execute(INSERT, "pb-4", "1.0.0", "steps", sha("other steps"))

    # An UPDATE of the content alone brings the hash along; one with a wrong hash is refused.
    await db.execute("UPDATE playbook_catalog SET content = 'new steps' WHERE playbook_id = 'pb-1'")
    assert await db.fetchval("SELECT content_hash FROM playbook_catalog WHERE playbook_id = 'pb-1'") == sha("new steps")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE playbook_catalog SET content_hash = $1 WHERE playbook_id = 'pb-2'", sha("x"))


async def test_one_row_per_version_whatever_its_spelling(db):
    assert canonical_version("v1.0.0") == canonical_version("1.0.0+build.7") == "1.0.0"
    await db.execute(INSERT, "pb-1", "v1.0.0", "steps", None)
    for spelling in ("1.0.0", "V1.0.0", "1.0.0+build.7"):
        with pytest.raises(asyncpg.UniqueViolationError):
            await db.execute(INSERT, "pb-1", spelling, "steps", None)
    await db.execute(INSERT, "pb-1", "1.0.1", "steps", None)  # another version is another row

    entry = PlaybookEntry(playbook_id="pb-1", version="1.0.0+ci.3", name="n", description="d", content="steps")
    assert await upsert_entries(db, [entry]) == 0  # the same version, the same content: nothing to write
    changed = entry.model_copy(update={"content": "changed steps"})
    with pytest.raises(CatalogError, match="content differs from the stored version v1.0.0"):
        await upsert_entries(db, [changed])
    with pytest.raises(CatalogError, match="appears twice"):
        await upsert_entries(db, [entry, entry.model_copy(update={"version": "v1.0.0"})])
    assert await upsert_entries(db, [changed], force=True) == 1
    rows = await versions(db, "pb-1")
    assert [(r["version"], r["content"]) for r in rows] == [("1.0.1", "steps"), ("v1.0.0", "changed steps")]


async def test_the_api_finds_a_version_under_any_spelling_and_the_latest_whatever_its_status(api, db):
    for version, status in (("v1.0.0", "active"), ("v1.1.0", "disabled")):
        await upsert_entries(db, [PlaybookEntry(playbook_id="pb-1", version=version, name="n", description="d",
                                                content=version, status=status)])
    for spelling in ("v1.0.0", "1.0.0", "1.0.0+build.7"):
        response = await api.get(f"/api/v1/playbooks/pb-1/versions/{spelling}")
        assert response.status_code == 200 and response.json()["version"] == "v1.0.0"
    latest = (await api.get("/api/v1/playbooks/pb-1")).json()
    assert (latest["version"], latest["status"], latest["is_latest_version"]) == ("v1.1.0", "disabled", True)


def test_playbook_content_is_bounded_by_a_setting(tmp_path, database_url):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump([{"playbook_id": "big", "version": "v1.0.0", "name": "n", "description": "d",
                                     "content": "x" * 4000}]))
    assert read_catalog(path)[0].playbook_id == "big"  # 1 MiB by default
    with pytest.raises(CatalogError, match="content: 4000 bytes"):
        read_catalog(path, max_content_bytes=2048)
    result = run_datastorage({"DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_REDIS_URL": "redis://127.0.0.1:1/0",
                              "DATASTORAGE_PLAYBOOK_MAX_CONTENT_BYTES": "2048"}, "playbooks", "import", str(path),
                             check=False)
    assert result.returncode == 1
    assert "DATASTORAGE_PLAYBOOK_MAX_CONTENT_BYTES" in result.stderr and "Traceback" not in result.stderr
