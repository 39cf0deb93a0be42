"""The playbook API over HTTP: search (GET and POST), versions, and the errors of each."""

import pytest

from tests.helpers import assert_problem

SEARCH = "/api/v1/playbooks/search"


async def test_get_search_ranks_with_label_filters(api, catalog):
    response = await api.get(SEARCH, params={"query": "container OOMKilled exit code 137",
                                             "label.environment": "production", "max_results": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_results"] == len(body["playbooks"]) <= 3
    first = body["playbooks"][0]
    assert (first["playbook_id"], first["version"]) == ("oom-recovery", "v1.10.0")
    assert set(first) == {"playbook_id", "version", "name", "description", "confidence", "labels", "why"}
    assert {"vector", "text", "labels", "score"} <= set(first["why"])
    assert 0 <= first["confidence"] <= 1
    assert (body["mode"], body["degraded"]) == ("hybrid", False)
    assert all(p["labels"]["environment"] == "production" for p in body["playbooks"])


async def test_post_search_takes_a_labels_object(api, catalog):
    response = await api.post(SEARCH, json={"query": "something broke", "labels": {"environment": "staging"},
                                            "min_confidence": 0})
    assert [p["playbook_id"] for p in response.json()["playbooks"]] == ["crashloop-config"]


async def test_get_and_post_search_agree(api, catalog):
    by_get = (await api.get(SEARCH, params={"query": "disk almost full", "min_confidence": 0})).json()
    by_post = (await api.post(SEARCH, json={"query": "disk almost full", "min_confidence": 0})).json()
    assert by_get == by_post


async def test_max_results_is_clamped_to_100(api, catalog):
    response = await api.get(SEARCH, params={"query": "x", "max_results": 5000, "min_confidence": 0})
    assert response.status_code == 200
    assert response.json()["total_results"] == 5


@pytest.mark.parametrize("params,name", [
    ({"query": ""}, "query"), ({"query": "   "}, "query"), ({}, "query"),
    ({"query": "x", "max_results": 0}, "max_results"), ({"query": "x", "max_results": -3}, "max_results"),
    ({"query": "x", "max_results": "ten"}, "max_results"),
    ({"query": "x", "min_confidence": 1.5}, "min_confidence"),
    ({"query": "x", "min_confidence": -0.1}, "min_confidence"),
    ({"query": "x", "min_confidence": "nan"}, "min_confidence"),
    ({"query": "x", "top_k": 3}, "top_k"), ({"query": "x" * 2001}, "query"),
])
async def test_bad_search_parameters_are_400(api, params, name):
    body = assert_problem(await api.get(SEARCH, params=params), 400, name)
    assert body["parameter"] == name


@pytest.mark.parametrize("payload,name", [
    ({"query": ""}, "query"), ({"query": 7}, "query"), ({"query": "x", "labels": {"a": 1}}, "labels"),
    ({"query": "x", "labels": ["a"]}, "labels"), ({"query": "x", "max_results": 0}, "max_results"),
    ({"query": "x", "max_results": True}, "max_results"), ({"query": "x", "extra": 1}, "extra"),
])
async def test_bad_search_bodies_are_400(api, payload, name):
    assert_problem(await api.post(SEARCH, json=payload), 400, name)


async def test_an_empty_catalog_answers_an_empty_ranking(api, embedder):
    response = await api.get(SEARCH, params={"query": "anything"})
    assert response.json() == {"playbooks": [], "total_results": 0, "mode": "hybrid", "degraded": False}


async def test_versions_newest_first_and_the_latest_active(api, catalog):
    versions = (await api.get("/api/v1/playbooks/oom-recovery/versions")).json()
    assert [v["version"] for v in versions["versions"]] == ["v1.10.0", "v1.9.0", "v1.0.0"]
    assert "embedding" not in versions["versions"][0]
    latest = (await api.get("/api/v1/playbooks/oom-recovery")).json()
    assert latest["version"] == "v1.10.0" and latest["is_latest_version"]
    one = (await api.get("/api/v1/playbooks/oom-recovery/versions/v1.9.0")).json()
    assert one["version"] == "v1.9.0" and not one["is_latest_version"]


async def test_unknown_playbooks_and_versions_are_404(api, catalog):
    assert_problem(await api.get("/api/v1/playbooks/nope"), 404, "nope")
    assert (await api.get("/api/v1/playbooks/dns-failure")).json()["status"] == "disabled"  # latest, whatever its status
    assert_problem(await api.get("/api/v1/playbooks/nope/versions"), 404)
    assert_problem(await api.get("/api/v1/playbooks/oom-recovery/versions/v9.9.9"), 404, "v9.9.9")
