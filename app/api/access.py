"""Who may do what: the scopes, the identity of a request, and the scope each route needs.

A route's scope is declared next to it: on its `Operation` in the route's module (which also
documents it in the OpenAPI document), or, for a route outside the document (`/openapi.json`,
the viewer's pages), as a `METHOD /path` entry given to `RouteAccess`. The auth middleware
matches a request to its route the way the router will, and asks this table; an undeclared route
needs `admin`, so a route added without a declaration is closed rather than open.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from starlette.routing import BaseRoute, Match
from starlette.types import Scope as ASGIScope

Scope = Literal["audit:read", "audit:write", "playbooks:read", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
AUDIT_READ: Scope = "audit:read"
AUDIT_WRITE: Scope = "audit:write"
PLAYBOOKS_READ: Scope = "playbooks:read"
# Legal holds, verification, export, and everything else; it implies every scope.
ADMIN: Scope = "admin"

# What a route needs besides a scope: nothing (health, the document), or only a known identity
# (an unknown `/api/` path: a 404 is no answer for a stranger).
PUBLIC: Literal["public"] = "public"
AUTHENTICATED: Literal["authenticated"] = "authenticated"
Requirement = Scope | Literal["public", "authenticated"]


@dataclass(frozen=True)
class Identity:
    """Who sent a request: a token's NAME, a Kubernetes user, or (without auth) the client address.

    `scopes` None means every right: a token without scopes, or a service without auth."""

    name: str
    scopes: frozenset[str] | None = None
    authenticated: bool = True
    # Kubernetes mode: the TokenReview's `status.user`, passed back in each SubjectAccessReview.
    kubernetes_user: dict[str, Any] | None = field(default=None, compare=False)

    def allows(self, scope: Scope) -> bool:
        return self.scopes is None or ADMIN in self.scopes or scope in self.scopes


class AuthUnavailable(Exception):
    """What decides who may do what (the Kubernetes API server) cannot answer now: a 503."""


def client_address(scope: ASGIScope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def anonymous(scope: ASGIScope) -> Identity:
    """A request's identity when nothing authenticates it: its client address (uvicorn puts the
    forwarded address there for the proxies it trusts, FORWARDED_ALLOW_IPS)."""
    return Identity(name=client_address(scope), authenticated=False)


def parse_scopes(text: str) -> frozenset[Scope]:
    """`audit:read,audit:write` → the scopes; an unknown name is an error (a typo must not grant
    or withhold rights silently)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCOPES]
    if unknown or not names:
        raise ValueError(f"unknown scope {', '.join(unknown) or text!r}; scopes are {', '.join(SCOPES)}")
    return frozenset(name for name in names if name in SCOPES)


class RouteAccess:
    """The requirement of each route, keyed `METHOD /template` like `Operation.route`.

    The method may be `*` (any), and a template ending in `*` covers every route below it, e.g.
    `GET /ui*` for the viewer's pages. HEAD is read as GET (Starlette answers HEAD on GET routes).
    """

    def __init__(self, routes: Sequence[BaseRoute], declarations: Mapping[str, Requirement]):
        self.routes = routes
        self.exact: dict[tuple[str, str], Requirement] = {}
        self.prefixes: list[tuple[str, str, Requirement]] = []
        for key, requirement in declarations.items():
            method, _, template = key.partition(" ")
            if requirement not in (*SCOPES, PUBLIC, AUTHENTICATED) or not template.startswith("/"):
                raise ValueError(f"access declaration {key!r}: {requirement!r}")
            if template.endswith("*"):
                self.prefixes.append((method.upper(), template[:-1], requirement))
            else:
                self.exact[method.upper(), template] = requirement
        # The longest prefix decides.
        self.prefixes.sort(key=lambda entry: len(entry[1]), reverse=True)

    @classmethod
    def of(cls, routes: Sequence[BaseRoute], operations: Iterable, extra: Mapping[str, Requirement]) -> "RouteAccess":
        """From the OpenAPI operations (their `scope`, or public) and `extra` declarations."""
        declared: dict[str, Requirement] = {op.route: PUBLIC if op.public else (op.scope or ADMIN) for op in operations}
        return cls(routes, {**declared, **extra})

    def requirement(self, scope: ASGIScope) -> Requirement:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        route = self._route(scope)
        if route is None:
            # No route answers: a 404 for everyone, but only after a token on the API.
            return AUTHENTICATED if scope["path"].startswith("/api/") else PUBLIC
        template, full = route
        if not full:
            return AUTHENTICATED  # the path exists, the method does not: a 405 after a token
        for key in ((method, template), ("*", template)):
            if key in self.exact:
                return self.exact[key]
        for declared_method, prefix, requirement in self.prefixes:
            if declared_method in (method, "*") and template.startswith(prefix):
                return requirement
        return ADMIN

    def _route(self, scope: ASGIScope) -> tuple[str, bool] | None:
        """The template of the route the router will pick (the first full match, else the first
        partial one), and whether the match is full."""
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            path = getattr(route, "path", "")
            if match is Match.FULL:
                return path, True
            if match is Match.PARTIAL and partial is None:
                partial = path
        return (partial, False) if partial is not None else None
