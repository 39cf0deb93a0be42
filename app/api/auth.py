"""Authentication and authorisation of every request, in one middleware.

The route's requirement comes from `RouteAccess` (app/api/access.py): public, a known identity,
or a scope. The identity comes from the bearer token: the configured tokens (app/api/tokens.py)
or, with `DATASTORAGE_AUTH=kubernetes`, a TokenReview (app/api/kubernetes.py); the same component
then authorises the scope (the token's scopes, or a SubjectAccessReview). No or an unknown token
is a 401, a missing scope a 403 naming it in `scope`, an authoriser that cannot answer a 503 with
Retry-After. Denials are counted for the self-audit trail (app/api/denials.py).

Handlers read who is asking with `identity_of(request)` (e.g. `placed_by` of a legal hold).
Without tokens configured every request passes, as the client's address with every right.
"""

from typing import Protocol

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.access import AUTHENTICATED, PUBLIC, AuthUnavailable, Identity, RouteAccess, anonymous, client_address
from app.api.access import Scope as AccessScope
from app.api.denials import DeniedRequests
from app.api.kubernetes import KubernetesReviews
from app.api.problems import Problem, problem_response
from app.api.tokens import StaticTokens, load_grants
from app.core.settings import Settings

log = structlog.get_logger(__name__)

RETRY_AFTER_S = 5


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Identity | None:
        """The token's identity, or None for a token nobody knows."""

    async def authorize(self, identity: Identity, scope: AccessScope) -> dict[str, str] | None:
        """None when allowed; otherwise the extensions of the 403 problem (`scope`, …)."""

    async def aclose(self) -> None: ...


def authenticator_for(settings: Settings) -> Authenticator | None:
    """The configured authenticator; None when no token is configured (every request passes)."""
    if settings.auth == "kubernetes":
        return KubernetesReviews.from_settings(settings)
    grants = load_grants(settings.api_tokens, settings.api_tokens_file)
    return StaticTokens(grants) if grants else None


def identity_of(request: Request) -> Identity:
    """Who sent this request (set by the middleware for every request it passes)."""
    identity: Identity = request.scope.get("state", {}).get("identity") or anonymous(request.scope)
    return identity


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authorization:
    def __init__(self, app: ASGIApp, access: RouteAccess, authenticator: Authenticator | None, denials: DeniedRequests):
        self.app = app
        self.access = access
        self.authenticator = authenticator
        self.denials = denials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        requirement = self.access.requirement(scope)
        if self.authenticator is None or requirement == PUBLIC:
            await self._pass(anonymous(scope), scope, receive, send)
            return
        request = Request(scope)
        try:
            identity, denial = await self._check(request, requirement)
        except AuthUnavailable as error:
            problem = Problem(503, f"{error}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
            await problem_response(request, problem)(scope, receive, send)
            return
        if identity is None:
            self.denials.count(
                client_address(scope), False, 401, f"{request.method} {request.url.path}", client_address(scope)
            )
            problem = Problem(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="datastorage"'},
            )
            await problem_response(request, problem)(scope, receive, send)
            return
        if denial is not None:
            self.denials.count(
                identity.name,
                True,
                403,
                f"{request.method} {request.url.path}",
                client_address(scope),
                denial.get("scope"),
            )
            how = f" (Kubernetes RBAC verb {denial['verb']})" if "verb" in denial else ""
            detail = f"{identity.name} may not do this: it needs the scope {denial.get('scope')}{how}"
            problem = Problem(403, detail)
            problem.extensions.update(denial)
            await problem_response(request, problem)(scope, receive, send)
            return
        await self._pass(identity, scope, receive, send)

    async def _check(self, request: Request, requirement: str) -> tuple[Identity | None, dict[str, str] | None]:
        assert self.authenticator is not None
        token = bearer_token(request)
        identity = await self.authenticator.authenticate(token) if token else None
        if identity is None or requirement == AUTHENTICATED:
            return identity, None
        return identity, await self.authenticator.authorize(identity, requirement)  # type: ignore[arg-type]

    async def _pass(self, identity: Identity, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)
