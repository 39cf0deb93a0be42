"""`DATASTORAGE_AUTH=kubernetes`: the cluster says who a bearer token is and what it may do.

A TokenReview (authentication.k8s.io/v1) turns the token into a user and groups; a
SubjectAccessReview (authorization.k8s.io/v1) asks whether that user may `get` (read), `create`
(write) or `update` (administer) the configured resource, so RBAC roles grant the service's rights
(ops/k8s/rbac.yaml). Kubernaut's Data Storage does the same with a verb per operation; its
resource is a real Service, ours by default a resource of our own group, so that granting
`update` to an administrator changes nothing else in the cluster.

Answers are reused for `DATASTORAGE_KUBERNETES_CACHE_S` (10 s): a client's steady traffic costs
the API server two reviews per client and period, not two per request. An API server that cannot
answer makes the request a 503 with Retry-After, never a 500.
"""

import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from cachetools import TTLCache

from app.api.access import ADMIN, AUDIT_READ, AUDIT_WRITE, PLAYBOOKS_READ, AuthUnavailable, Identity, Scope
from app.core import metrics
from app.core.settings import MissingSetting, Settings

log = structlog.get_logger(__name__)

# Tiered verbs, as Kubernaut's: reads get, writes create, administration update.
VERBS: dict[Scope, str] = {AUDIT_READ: "get", PLAYBOOKS_READ: "get", AUDIT_WRITE: "create", ADMIN: "update"}
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# The kubelet rotates a projected service-account token well before it expires; read it again
# this often (client-go does the same).
SERVICE_TOKEN_REREAD_S = 60.0
CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class ApiServer:
    url: str
    token_file: Path
    ca_file: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiServer":
        files = settings.kubernetes_token_file, settings.kubernetes_ca_file
        if settings.kubernetes_api_url:
            return cls(settings.kubernetes_api_url.rstrip("/"), *files)
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise MissingSetting(
                "DATASTORAGE_AUTH=kubernetes needs DATASTORAGE_KUBERNETES_API_URL, or to run in a pod "
                "(KUBERNETES_SERVICE_HOST and the service-account token)"
            )
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", *files)

    def verify(self) -> ssl.SSLContext | bool:
        if self.url.startswith("https://") and self.ca_file.is_file():
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


@dataclass(frozen=True)
class ReviewedResource:
    """The resource attributes of every SubjectAccessReview; the verb comes from the route."""

    group: str
    resource: str
    name: str
    namespace: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReviewedResource":
        return cls(
            settings.kubernetes_resource_group,
            settings.kubernetes_resource,
            settings.kubernetes_resource_name,
            settings.kubernetes_pod_namespace(),
        )

    def attributes(self, verb: str) -> dict[str, str]:
        attributes = {"namespace": self.namespace, "verb": verb, "group": self.group, "resource": self.resource}
        if self.name:
            attributes["name"] = self.name
        return attributes


class KubernetesReviews:
    """Authenticates with TokenReviews and authorises with SubjectAccessReviews, cached."""

    def __init__(self, server: ApiServer, resource: ReviewedResource, *, cache_s: float, timeout_s: float):
        self.server = server
        self.resource = resource
        self.client = httpx.AsyncClient(base_url=server.url, verify=server.verify(), timeout=timeout_s)
        # Keyed by the token's digest (the cache holds no token) and by (user, groups, verb).
        self.identities: TTLCache | None = TTLCache(CACHE_ENTRIES, cache_s) if cache_s > 0 else None
        self.decisions: TTLCache | None = TTLCache(CACHE_ENTRIES, cache_s) if cache_s > 0 else None
        self._service_token: str | None = None
        self._service_token_read_at = -SERVICE_TOKEN_REREAD_S

    @classmethod
    def from_settings(cls, settings: Settings) -> "KubernetesReviews":
        return cls(
            ApiServer.from_settings(settings),
            ReviewedResource.from_settings(settings),
            cache_s=settings.kubernetes_cache_s,
            timeout_s=settings.kubernetes_timeout_s,
        )

    async def authenticate(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).digest()
        if self.identities is not None and key in self.identities:
            metrics.KUBERNETES_REVIEW_CACHE_HITS.labels("tokenreview").inc()
            cached: Identity | None = self.identities[key]
            return cached
        status = await self._review(
            TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        )
        user = status.get("user") or {}
        identity = None
        if status.get("authenticated") is True and user.get("username"):
            identity = Identity(name=user["username"], kubernetes_user=user)
            metrics.KUBERNETES_REVIEWS.labels("tokenreview", "allowed").inc()
        else:
            log.info("kubernetes_token_rejected", error=status.get("error"))
            metrics.KUBERNETES_REVIEWS.labels("tokenreview", "denied").inc()
        if self.identities is not None:
            self.identities[key] = identity
        return identity

    async def authorize(self, identity: Identity, scope: Scope) -> dict[str, str] | None:
        """None when RBAC allows the scope's verb; otherwise what the 403 problem names."""
        verb = VERBS[scope]
        user = identity.kubernetes_user or {"username": identity.name}
        key = (user.get("username"), tuple(user.get("groups") or ()), verb)
        if self.decisions is not None and key in self.decisions:
            metrics.KUBERNETES_REVIEW_CACHE_HITS.labels("subjectaccessreview").inc()
            cached: dict[str, str] | None = self.decisions[key]
            return cached
        spec: dict[str, Any] = {"user": user.get("username"), "resourceAttributes": self.resource.attributes(verb)}
        for name in ("groups", "uid", "extra"):
            if user.get(name):
                spec[name] = user[name]
        status = await self._review(
            ACCESS_REVIEWS, {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        )
        allowed = status.get("allowed") is True and status.get("denied") is not True
        metrics.KUBERNETES_REVIEWS.labels("subjectaccessreview", "allowed" if allowed else "denied").inc()
        denial = None if allowed else {"scope": scope, "verb": verb}
        if denial:
            # RBAC's reason names roles and bindings: for the operator's log, not for the client.
            log.info(
                "kubernetes_access_denied",
                user=identity.name,
                verb=verb,
                reason=status.get("reason"),
                evaluation_error=status.get("evaluationError"),
            )
        if self.decisions is not None:
            self.decisions[key] = denial
        return denial

    async def _review(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        """POSTs a review and returns its `status`; AuthUnavailable if there is no answer."""
        kind = review["kind"].lower()
        token = self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self.client.post(path, json=review, headers=headers)
        except httpx.HTTPError as error:
            metrics.KUBERNETES_REVIEWS.labels(kind, "error").inc()
            log.warning("kubernetes_api_unreachable", url=self.server.url, review=review["kind"], error=repr(error))
            raise AuthUnavailable(f"the Kubernetes API server is unreachable ({type(error).__name__})") from None
        if response.status_code not in (200, 201):
            # 401/403 here: this service's own account lacks the RBAC of ops/k8s/rbac.yaml.
            metrics.KUBERNETES_REVIEWS.labels(kind, "error").inc()
            log.error(
                "kubernetes_review_refused",
                review=review["kind"],
                status=response.status_code,
                body=response.text[:300],
            )
            raise AuthUnavailable(f"the Kubernetes API server refused the {review['kind']} ({response.status_code})")
        try:
            status = response.json().get("status") or {}
        except (ValueError, AttributeError):
            metrics.KUBERNETES_REVIEWS.labels(kind, "error").inc()
            raise AuthUnavailable(f"the Kubernetes API server's {review['kind']} answer is not JSON") from None
        return status if isinstance(status, dict) else {}

    def _token(self) -> str | None:
        now = time.monotonic()
        if now - self._service_token_read_at >= SERVICE_TOKEN_REREAD_S:
            file = self.server.token_file
            self._service_token = file.read_text().strip() if file.is_file() else None
            self._service_token_read_at = now
        return self._service_token

    async def aclose(self) -> None:
        await self.client.aclose()
