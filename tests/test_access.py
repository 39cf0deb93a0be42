"""Scoped access on the real Postgres and Redis: token files with scopes and names, the scope each
route needs (and its place in the OpenAPI document), and the Kubernetes mode against a stand-in
API server that speaks TokenReview and SubjectAccessReview."""

import hashlib

import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from app.api.access import ADMIN, AUDIT_READ, AUTHENTICATED, PUBLIC, RouteAccess
from app.api.app import api_document
from app.api.kubernetes import ApiServer
from app.api.tokens import TokenFileError, default_name, load_grants
from app.core.settings import MissingSetting
from tests.helpers import EVENTS, KubernetesStandIn, assert_problem, body_of, client_for, event

SEARCH = "/api/v1/playbooks/search"
TOKEN_FILE = """\
# scopes and names
r3ader   audit:read                  reader
wr1ter   audit:write                 writer
b00ks    playbooks:read              analysis
0ps      admin                       on-call
both     audit:read,audit:write
legacy

"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_file_lines_give_scopes_and_names(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    grants = {g.token: g for g in load_grants("env-token", path)}
    assert set(grants) == {"env-token", "r3ader", "wr1ter", "b00ks", "0ps", "both", "legacy"}
    assert grants["r3ader"].scopes == {"audit:read"} and grants["r3ader"].name == "reader"
    assert grants["both"].scopes == {"audit:read", "audit:write"}
    # Without scopes (the file's bare line, every DATASTORAGE_API_TOKENS token): every right.
    assert grants["legacy"].scopes is None and grants["env-token"].scopes is None
    # Without a name: a short hash, never the token.
    assert grants["both"].name == "token-" + hashlib.sha256(b"both").hexdigest()[:12] == default_name("both")
    assert "legacy" not in grants["legacy"].name


@pytest.mark.parametrize("line", ["t0ken audit:reed reader", "t0ken audit:read,  name extra", "t0ken , x"])
def test_a_bad_token_line_refuses_the_file_naming_the_line_not_the_token(tmp_path, line):
    path = tmp_path / "tokens"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(TokenFileError, match="line 2") as refused:
        load_grants(None, path)
    assert "t0ken" not in str(refused.value)


def test_the_same_token_with_two_rights_is_refused(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("same audit:read a\nsame admin b\n")
    with pytest.raises(TokenFileError, match="twice"):
        load_grants(None, path)


async def test_scopes_refuse_and_allow_as_stated(settings, tmp_path, catalog):
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    secured = settings.model_copy(update={"api_tokens": "env-token", "api_tokens_file": path})
    async with client_for(secured) as api:
        written = event(1)
        one = f"{EVENTS}/{written.event_id}"

        # audit:read: list and get, nothing else.
        assert (await api.get(EVENTS, headers=bearer("r3ader"))).status_code == 200
        assert (await api.get(one, headers=bearer("r3ader"))).status_code == 404
        refused = assert_problem(await api.post(EVENTS, json=body_of(written), headers=bearer("r3ader")), 403)
        assert refused["scope"] == "audit:write" and "reader" in refused["detail"]
        assert assert_problem(await api.get(SEARCH, params={"query": "disk full"}, headers=bearer("r3ader")),
                              403)["scope"] == "playbooks:read"

        # audit:write: write only.
        assert (await api.post(EVENTS, json=body_of(written), headers=bearer("wr1ter"))).status_code == 202
        assert assert_problem(await api.get(EVENTS, headers=bearer("wr1ter")), 403)["scope"] == "audit:read"

        # playbooks:read: search (GET and POST) and versions, no audit.
        assert (await api.get(SEARCH, params={"query": "disk full"}, headers=bearer("b00ks"))).status_code == 200
        assert (await api.post(SEARCH, json={"query": "disk full"}, headers=bearer("b00ks"))).status_code == 200
        assert (await api.get("/api/v1/playbooks/oom-recovery/versions", headers=bearer("b00ks"))).status_code == 200
        assert assert_problem(await api.get(EVENTS, headers=bearer("b00ks")), 403)["scope"] == "audit:read"

        # admin implies every scope; no scopes keeps every right.
        for token in ("0ps", "legacy", "env-token"):
            assert (await api.get(EVENTS, headers=bearer(token))).status_code == 200, token
            assert (await api.post(EVENTS, json=body_of(event(2)), headers=bearer(token))).status_code == 202
            assert (await api.get(SEARCH, params={"query": "x y"}, headers=bearer(token))).status_code == 200
        assert (await api.get(EVENTS, headers=bearer("both"))).status_code == 200

        # 401 stays for no or an unknown token, on routes that exist or not.
        for headers in ({}, bearer("nobody")):
            assert_problem(await api.get(EVENTS, headers=headers), 401, "bearer token")
            assert_problem(await api.get("/api/v1/nothing-here", headers=headers), 401)
        # A known token learns that a path or method does not exist, whatever its scopes.
        assert_problem(await api.get("/api/v1/nothing-here", headers=bearer("wr1ter")), 404)
        assert_problem(await api.delete(EVENTS, headers=bearer("b00ks")), 405)
        # Health and the document stay open.
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await api.get(path)).status_code == 200, path


def test_every_route_declares_its_scope_next_to_it_and_the_document_states_it():
    document = api_document(auth=True)
    scopes = {(method.upper(), path): operation.get("x-required-scope")
              for path, methods in document["paths"].items() for method, operation in methods.items()}
    assert scopes == {
        ("GET", "/healthz"): None, ("GET", "/readyz"): None,
        ("GET", EVENTS): "audit:read", ("POST", EVENTS): "audit:write",
        ("GET", EVENTS + "/{event_id}"): "audit:read",
        ("GET", SEARCH): "playbooks:read", ("POST", SEARCH): "playbooks:read",
        ("GET", "/api/v1/playbooks/{playbook_id}"): "playbooks:read",
        ("GET", "/api/v1/playbooks/{playbook_id}/versions"): "playbooks:read",
        ("GET", "/api/v1/playbooks/{playbook_id}/versions/{version}"): "playbooks:read",
        ("GET", EVENTS + "/{event_id}/proof"): "audit:read", ("GET", EVENTS + "/export"): "admin",
        ("POST", "/api/v1/audit/verify"): "admin",
        ("GET", "/api/v1/audit/legal-holds"): "admin", ("GET", "/api/v1/audit/legal-holds/{correlation_id}"): "admin",
        ("POST", "/api/v1/audit/legal-holds/{correlation_id}"): "admin",
        ("DELETE", "/api/v1/audit/legal-holds/{correlation_id}"): "admin",
    }
    post = document["paths"][EVENTS]["post"]
    assert post["security"] == [{"bearer": ["audit:write"]}]
    assert {"401", "403", "429"} <= set(post["responses"])
    assert api_document(auth=False)["paths"][EVENTS]["get"]["x-required-scope"] == "audit:read"


def test_an_undeclared_route_needs_admin_and_later_routes_declare_in_one_line():
    async def page(request):
        return PlainTextResponse("")

    routes = [Route("/api/v1/audit/legal-holds/{correlation_id}", page, methods=["POST", "DELETE"]),
              Route("/api/v1/audit-events/export", page), Mount("/ui", routes=[Route("/", page)]),
              Route("/healthz", page)]
    access = RouteAccess(routes, {"GET /ui*": AUDIT_READ, "GET /healthz": PUBLIC})

    def needs(method: str, path: str) -> str:
        return access.requirement({"type": "http", "method": method, "path": path, "root_path": "",
                                   "headers": []})

    assert needs("POST", "/api/v1/audit/legal-holds/rem-1") == ADMIN
    assert needs("GET", "/api/v1/audit-events/export") == ADMIN
    assert needs("GET", "/ui/") == AUDIT_READ and needs("HEAD", "/ui/") == AUDIT_READ
    assert needs("GET", "/healthz") == PUBLIC
    assert needs("GET", "/api/v1/audit/legal-holds/rem-1") == AUTHENTICATED  # a 405, after a token
    assert needs("GET", "/api/v1/nothing") == AUTHENTICATED and needs("GET", "/nothing") == PUBLIC
    with pytest.raises(ValueError):
        RouteAccess(routes, {"GET /ui*": "audit:reed"})


# --- DATASTORAGE_AUTH=kubernetes ----------------------------------------------------------------


SERVICE_TOKEN = "service-account-token-of-datastorage"
USERS = {"gw-token": ("system:serviceaccount:platform:gateway", ["system:serviceaccounts"]),
         "ai-token": ("system:serviceaccount:platform:analysis", ["system:serviceaccounts", "datastorage-readers"]),
         "nobody-token": ("system:serviceaccount:platform:nobody", [])}
GRANTS = {("system:serviceaccount:platform:gateway", "create"), ("datastorage-readers", "get")}


@pytest.fixture
def kubernetes(tmp_path):
    stand_in = KubernetesStandIn(SERVICE_TOKEN, USERS, GRANTS)
    (tmp_path / "token").write_text(SERVICE_TOKEN + "\n")
    (tmp_path / "namespace").write_text("platform")
    yield stand_in
    stand_in.close()


def kubernetes_settings(settings, tmp_path, url: str, **extra):
    return settings.model_copy(update={"auth": "kubernetes", "kubernetes_api_url": url,
                                       "kubernetes_token_file": tmp_path / "token", **extra})


async def test_kubernetes_mode_allows_and_denies_by_rbac_verb(settings, tmp_path, kubernetes):
    async with client_for(kubernetes_settings(settings, tmp_path, kubernetes.url)) as api:
        assert (await api.post(EVENTS, json=body_of(event(1)), headers=bearer("gw-token"))).status_code == 202
        token_review, access_review = kubernetes.reviews
        assert token_review["spec"] == {"token": "gw-token"}
        assert access_review["spec"]["user"] == "system:serviceaccount:platform:gateway"
        assert access_review["spec"]["groups"] == ["system:serviceaccounts"]
        assert access_review["spec"]["resourceAttributes"] == {
            "namespace": "platform", "verb": "create", "group": "datastorage.dev", "resource": "datastorage"}

        # Reads are `get`: the gateway has none.
        denied = assert_problem(await api.get(EVENTS, headers=bearer("gw-token")), 403)
        assert (denied["scope"], denied["verb"]) == ("audit:read", "get")
        # A group's grant counts (groups travel from the TokenReview to the SubjectAccessReview).
        assert (await api.get(EVENTS, headers=bearer("ai-token"))).status_code == 200
        denied = assert_problem(await api.post(EVENTS, json=body_of(event(2)), headers=bearer("ai-token")), 403)
        assert (denied["scope"], denied["verb"]) == ("audit:write", "create")

        # The token the cluster does not know: 401; no token: 401 without asking.
        asked = len(kubernetes.reviews)
        assert_problem(await api.get(EVENTS, headers=bearer("stolen")), 401, "bearer token")
        assert_problem(await api.get(EVENTS), 401)
        assert kubernetes.kinds()[asked:] == ["TokenReview"]
        assert (await api.get("/healthz")).status_code == 200


async def test_kubernetes_answers_are_cached_for_a_short_time(settings, tmp_path, kubernetes):
    async with client_for(kubernetes_settings(settings, tmp_path, kubernetes.url, kubernetes_cache_s=60)) as api:
        for _ in range(5):
            assert (await api.get(EVENTS, headers=bearer("ai-token"))).status_code == 200
            assert_problem(await api.get(EVENTS, headers=bearer("nobody-token")), 403)
        assert kubernetes.kinds() == ["TokenReview", "SubjectAccessReview"] * 2
    kubernetes.reviews.clear()
    async with client_for(kubernetes_settings(settings, tmp_path, kubernetes.url, kubernetes_cache_s=0)) as api:
        for _ in range(3):
            assert (await api.get(EVENTS, headers=bearer("ai-token"))).status_code == 200
        assert kubernetes.kinds() == ["TokenReview", "SubjectAccessReview"] * 3


async def test_an_unreachable_or_refusing_api_server_is_a_503_with_retry_after(settings, tmp_path, kubernetes):
    kubernetes.close()  # nothing listens there any more
    async with client_for(kubernetes_settings(settings, tmp_path, kubernetes.url)) as api:
        response = await api.get(EVENTS, headers=bearer("ai-token"))
        assert_problem(response, 503, "Kubernetes API server is unreachable")
        assert int(response.headers["retry-after"]) > 0
        assert (await api.get("/healthz")).status_code == 200

    # The API server answers, but not to this service's account (its RBAC is missing): 503 too.
    stand_in = KubernetesStandIn("another-service-token", USERS, GRANTS)
    try:
        async with client_for(kubernetes_settings(settings, tmp_path, stand_in.url)) as api:
            response = await api.get(EVENTS, headers=bearer("ai-token"))
            assert_problem(response, 503, "refused the TokenReview (401)")
            assert "retry-after" in response.headers
    finally:
        stand_in.close()


def test_in_cluster_the_api_server_is_found_from_the_service_account_environment(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    server = ApiServer.from_settings(settings.model_copy(update={"auth": "kubernetes"}))
    assert server.url == "https://10.96.0.1:443"
    assert str(server.token_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert str(server.ca_file) == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert ApiServer.from_settings(settings).url == "https://[fd00::1]:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(MissingSetting, match="DATASTORAGE_KUBERNETES_API_URL"):
        ApiServer.from_settings(settings)
    # The namespace reviewed: the setting, else the pod's own, else default.
    (tmp_path / "namespace").write_text("observability\n")
    in_pod = settings.model_copy(update={"kubernetes_token_file": tmp_path / "token"})
    assert in_pod.kubernetes_pod_namespace() == "observability"
    assert in_pod.model_copy(update={"kubernetes_namespace": "ops"}).kubernetes_pod_namespace() == "ops"
    assert settings.kubernetes_pod_namespace() == "default"
