"""The playbook catalog on the real Postgres with the real model: import, versions, freshness of
embeddings, and search."""

import asyncio
import json

import numpy as np
import pytest

from app.catalog.embedding import DIMENSIONS, playbook_text
from app.catalog.freshness import count_stale, keep_embeddings_fresh
from app.catalog.importer import import_catalog, read_catalog
from app.catalog.playbook import CatalogError, PlaybookEntry, version_key
from app.catalog.search import rank, search
from app.catalog.store import latest_active, upsert_entries, versions
from tests.helpers import CATALOG, wait_for

ACTIVE_LATEST = {"oom-recovery", "disk-pressure", "cert-expiry", "crashloop-config", "unicode-runbook"}


def test_semantic_versions_order_numerically():
    assert sorted(["v1.9.0", "v1.10.0", "v1.0.0", "v2.0.0-rc.1", "v2.0.0"], key=version_key) == [
        "v1.0.0", "v1.9.0", "v1.10.0", "v2.0.0-rc.1", "v2.0.0"]
    assert version_key("not-semver") < version_key("v0.0.1")


def test_the_embedded_text_puts_identity_before_content():
    text = playbook_text("Name", "Description", {"b": "2", "a": "1"}, "x" * 100_000)
    assert text.startswith("Name\nDescription\na: 1, b: 2\nxxx")
    assert playbook_text("Name", "Description", {}, "") == "Name\nDescription"


async def test_import_marks_the_highest_version_latest(catalog, pool):
    async with pool.acquire() as conn:
        rows = await versions(conn, "oom-recovery")
        assert [r["version"] for r in rows] == ["v1.10.0", "v1.9.0", "v1.0.0"]
        assert [r["is_latest_version"] for r in rows] == [True, False, False]
        assert (await latest_active(conn, "oom-recovery"))["version"] == "v1.10.0"
        assert await latest_active(conn, "dns-failure") is None  # disabled
        disabled = (await versions(conn, "dns-failure"))[0]
        assert disabled["disabled_at"] is not None
        assert await count_stale(conn) == 0


async def test_importing_the_same_catalog_again_changes_nothing(catalog, database_url, embedder):
    assert catalog.embedded == 9
    again = await import_catalog(database_url, CATALOG, embedder=lambda: embedder)
    assert (again.changed, again.embedded) == (0, 0)


async def test_a_changed_content_under_a_published_version_is_refused(catalog, pool, embedder):
    entry = PlaybookEntry(playbook_id="cert-expiry", version="v1.0.0", name="TLS certificate renewal",
                          description="changed", content="something else", labels={})
    async with pool.acquire() as conn:
        with pytest.raises(CatalogError, match="content differs"):
            await upsert_entries(conn, [entry])
        assert await upsert_entries(conn, [entry], force=True) == 1
        assert (await latest_active(conn, "cert-expiry"))["content"] == "something else"


async def test_a_new_version_becomes_the_latest(catalog, pool):
    entry = PlaybookEntry(playbook_id="disk-pressure", version="v2.1.0", name="Node DiskPressure cleanup",
                          description="new", content="new steps", labels={"signal_type": "DiskPressure"})
    async with pool.acquire() as conn:
        await upsert_entries(conn, [entry])
        assert [(r["version"], r["is_latest_version"], r["previous_version"])
                for r in await versions(conn, "disk-pressure")] == [("v2.1.0", True, "v2.0.0"),
                                                                    ("v2.0.0", False, None)]


def test_a_catalog_with_a_bad_version_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {playbook_id: x, version: latest, name: n, description: d}\n")
    with pytest.raises(CatalogError, match="entry 0 .x.: version: .*semantic version"):
        read_catalog(bad)


@pytest.mark.parametrize("query,expected", [
    ("container was OOMKilled with exit code 137, memory limit too low", "oom-recovery"),
    ("node is running out of disk space and kubelet evicts pods", "disk-pressure"),
    ("https certificate expired on the ingress", "cert-expiry"),
    ("pod in CrashLoopBackOff after a configmap change", "crashloop-config"),
    ("message queue backlog growing, consumers too slow", "unicode-runbook"),
])
async def test_the_best_match_comes_first(catalog, pool, embedder, query, expected):
    hits = await search(pool, embedder, query)
    assert hits[0].playbook_id == expected, [(h.playbook_id, h.confidence) for h in hits]
    assert hits == sorted(hits, key=lambda h: (-h.confidence, h.playbook_id))


async def test_only_active_latest_versions_are_offered(catalog, pool, embedder):
    hits = await search(pool, embedder, "anything at all", min_confidence=0.0, max_results=100)
    assert {h.playbook_id for h in hits} == ACTIVE_LATEST
    assert {h.version for h in hits if h.playbook_id == "oom-recovery"} == {"v1.10.0"}
    # A disabled or deprecated playbook is not found even by its own words.
    dns = await search(pool, embedder, "CoreDNS resolution failures", min_confidence=0.0, max_results=100)
    assert "dns-failure" not in {h.playbook_id for h in dns}


async def test_thresholds_zero_returns_all_one_returns_only_exact(catalog, pool, embedder):
    assert len(await search(pool, embedder, "unrelated words", min_confidence=0.0, max_results=100)) == 5
    exact = playbook_text("TLS certificate renewal",
                          "An ingress or service serves an expired or soon-to-expire TLS certificate; "
                          "renew it with cert-manager and reload.",
                          {"signal_type": "CertificateExpiring", "environment": "production",
                           "severity": "critical", "component": "ingress"},
                          "1. Check the certificate's notAfter date with openssl s_client.\n"
                          "2. kubectl cert-manager renew the Certificate resource.\n")
    hits = await search(pool, embedder, exact, min_confidence=1.0)
    assert [(h.playbook_id, h.confidence) for h in hits] == [("cert-expiry", 1.0)]
    assert await search(pool, embedder, "TLS certificate renewal", min_confidence=1.0) == []


async def test_label_filters_are_exact_matches(catalog, pool, embedder):
    hits = await search(pool, embedder, "something broke", labels={"environment": "staging"},
                        min_confidence=0.0)
    assert [h.playbook_id for h in hits] == ["crashloop-config"]
    both = await search(pool, embedder, "something broke", min_confidence=0.0,
                        labels={"environment": "production", "component": "node"})
    assert [h.playbook_id for h in both] == ["disk-pressure"]
    assert await search(pool, embedder, "x", labels={"environment": "prod"}, min_confidence=0.0) == []


async def test_max_results_limits_the_ranking(catalog, pool, embedder):
    assert len(await search(pool, embedder, "pod problem", min_confidence=0.0, max_results=2)) == 2


async def test_a_row_inserted_with_sql_is_found_by_the_next_search(catalog, pool, embedder):
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
            "is_latest_version) VALUES ('etcd-defrag', 'v1.0.0', 'etcd database defragmentation', "
            "'The etcd database size alarm fired; defragment the members and compact history.', '', "
            "'{\"component\": \"etcd\"}', true)")
    hits = await search(pool, embedder, "etcd mvcc database space exceeded alarm")
    assert hits[0].playbook_id == "etcd-defrag"


async def test_the_worker_embeds_inserted_and_edited_rows_within_seconds(catalog, database_url, pool,
                                                                          embedder_loader):
    stop = asyncio.Event()
    worker = asyncio.create_task(keep_embeddings_fresh(database_url, pool, embedder_loader, stop,
                                                       sweep_interval_s=60))
    try:
        await asyncio.sleep(0.5)  # listening
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels) "
                "VALUES ('fresh', 'v1.0.0', 'Fresh playbook', 'Inserted by hand', '', '{}')")

            async def embedded(playbook_id):
                return await conn.fetchval(
                    "SELECT embedding IS NOT NULL AND embedded_input_hash = embedding_input_hash "
                    "FROM playbook_catalog WHERE playbook_id = $1", playbook_id)

            await wait_for(lambda: embedded("fresh"), 10, "the inserted row to be embedded")
            before = await conn.fetchval("SELECT embedding FROM playbook_catalog WHERE playbook_id = 'cert-expiry'")
            await conn.execute("UPDATE playbook_catalog SET description = 'Rotate the database password' "
                               "WHERE playbook_id = 'cert-expiry'")
            assert not await embedded("cert-expiry")
            await wait_for(lambda: embedded("cert-expiry"), 10, "the edited row to be re-embedded")
            after = await conn.fetchval("SELECT embedding FROM playbook_catalog WHERE playbook_id = 'cert-expiry'")
            assert not np.allclose(before.to_numpy(), after.to_numpy())
    finally:
        stop.set()
        await worker


async def test_unicode_and_long_content_are_embedded(catalog, pool, embedder):
    long_content = "## Steps\n" + "\n".join(f"{n}. kubectl rollout restart deployment/api-{n} 🚀" for n in range(400))
    assert len(long_content.encode()) > 10_000
    entry = PlaybookEntry(playbook_id="long-one", version="v1.0.0", name="Rolling restart of every API 🔁",
                          description="Restarts each API deployment in turn — 重新启动", content=long_content,
                          labels={"component": "api"})
    async with pool.acquire() as conn:
        await upsert_entries(conn, [entry])
    hits = await search(pool, embedder, "restart all API deployments one by one", max_results=3)
    assert hits[0].playbook_id == "long-one"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT vector_dims(embedding) FROM playbook_catalog WHERE playbook_id = 'long-one'") == DIMENSIONS
    assert (await search(pool, embedder, "消息队列积压", max_results=1))[0].playbook_id == "unicode-runbook"


async def test_a_filter_keeping_1_percent_of_10000_rows_still_finds_the_true_top(pool):
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(10_000, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
            "is_latest_version, embedding) VALUES ($1, 'v1.0.0', $1, 'synthetic', '', $2, true, $3)",
            [(f"pb-{n:05d}", json.dumps({"team": "rare" if n % 100 == 7 else "common"}), vectors[n])
             for n in range(10_000)])
        await conn.execute("UPDATE playbook_catalog SET embedded_input_hash = embedding_input_hash")
        await conn.execute("ANALYZE playbook_catalog")
        query = vectors[1234] + 0.5 * vectors[4507]
        query /= np.linalg.norm(query)
        rare = [n for n in range(10_000) if n % 100 == 7]
        similarity = vectors[rare] @ query
        truth = [f"pb-{rare[i]:05d}" for i in np.argsort(-similarity)[:10]]

        hits = await rank(conn, query, labels={"team": "rare"}, max_results=10)
        assert [h.playbook_id for h in hits] == truth

        # The same ranking through the HNSW index alone, without the iterative scan, loses rows:
        # the trap this guards against.
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
                               "SET LOCAL hnsw.iterative_scan = off")
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN SELECT playbook_id FROM playbook_catalog WHERE labels @> '{\"team\": \"rare\"}' "
                "AND status = 'active' AND is_latest_version ORDER BY embedding <=> $1 LIMIT 10", query))
            assert "idx_playbook_catalog_embedding" in plan
            hnsw_query = ("SELECT playbook_id FROM playbook_catalog WHERE labels @> '{\"team\": \"rare\"}' "
                          "AND status = 'active' AND is_latest_version ORDER BY embedding <=> $1 LIMIT 10")
            assert len(await conn.fetch(hnsw_query, query)) < 10
            # What the iterative scan changes on that path: ten rows, not fewer.
            await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            assert len(await conn.fetch(hnsw_query, query)) == 10
