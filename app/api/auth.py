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

from typing import Protocol, cast

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
        decision = await self._decide(self.authenticator, request, requirement)
        if isinstance(decision, Problem):
            await problem_response(request, decision)(scope, receive, send)
            return
        await self._pass(decision, scope, receive, send)

    async def _decide(self, authenticator: Authenticator, request: Request, requirement: str) -> Identity | Problem:
        """The request's identity if it may go on; otherwise the problem that answers it."""
        try:
            token = bearer_token(request)
            identity = await authenticator.authenticate(token) if token else None
            denial = None
            if identity is not None and requirement != AUTHENTICATED:
                denial = await authenticator.authorize(identity, cast(AccessScope, requirement))
        except AuthUnavailable as error:
            return Problem(503, f"{error}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        where, client = f"{request.method} {request.url.path}", client_address(request.scope)
        if identity is None:
            self.denials.count(client, False, 401, where, client)
            return Problem(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="datastorage"'},
            )
        if denial is not None:
            self.denials.count(identity.name, True, 403, where, client, denial["scope"])
            how = f" (Kubernetes RBAC verb {denial['verb']})" if "verb" in denial else ""
            problem = Problem(403, f"{identity.name} may not do this: it needs the scope {denial['scope']}{how}")
            problem.extensions.update(denial)
            return problem
        return identity

    async def _pass(self, identity: Identity, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)
