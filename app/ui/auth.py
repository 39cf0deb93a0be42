"""Who may look: the API's tokens, typed once at `/ui/login` and kept in a cookie.

With no token configured (DATASTORAGE_API_TOKENS / DATASTORAGE_API_TOKENS_FILE unset) the viewer is
as open as the API and there is no login. Otherwise every page needs the cookie, which holds a
digest of the token rather than the token itself (a cookie that leaks from a browser is no bearer
token for the API), HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it)
and Path=/ui.
"""

import hashlib
import hmac
from html import escape
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.access import AUDIT_READ
from app.api.access import Scope as TokenScope
from app.api.tokens import TokenGrant

COOKIE = "datastorage_ui"
COOKIE_PATH = "/ui"
COOKIE_MAX_AGE_S = 12 * 3600
# The scope a token needs for the viewer (DATASTORAGE_API_TOKENS_FILE lines `TOKEN scope,…`).
REQUIRED_SCOPE = AUDIT_READ


def cookie_value(token: str) -> str:
    return hashlib.sha256(b"datastorage-ui-session\x00" + token.encode()).hexdigest()


class TokenCheck:
    """The configured static tokens (app/api/tokens.py), as the digests a cookie carries, with
    their scopes."""

    def __init__(self, grants: list[TokenGrant]):
        self._digests = [(cookie_value(grant.token).encode(), grant.identity()) for grant in grants]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def token_allowed(self, token: str, scope: TokenScope = REQUIRED_SCOPE) -> bool:
        return self.cookie_allowed(cookie_value(token), scope)

    def cookie_allowed(self, value: str, scope: TokenScope = REQUIRED_SCOPE) -> bool:
        # Compared with every digest, always: the time taken says nothing about which matched.
        presented = value.encode()
        matches = [identity for digest, identity in self._digests if hmac.compare_digest(presented, digest)]
        return any(identity.allows(scope) for identity in matches)


def safe_next(target: str | None, default: str = COOKIE_PATH + "/") -> str:
    """Where to go after logging in: a path of the viewer's own, never another site."""
    if not target or not target.startswith(COOKIE_PATH + "/") or target.startswith("//") or "\\" in target:
        return default
    return target


class ViewerAuth:
    """With tokens configured: no valid cookie, no page (the login page and static files aside)."""

    def __init__(self, app: ASGIApp, tokens: TokenCheck, open_paths: tuple[str, ...]):
        self.app = app
        self.tokens = tokens
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.tokens.required or path.startswith(self.open_paths):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.tokens.cookie_allowed(request.cookies.get(COOKIE, "")):
            await self.app(scope, receive, send)
            return
        await self.refusal(request)(scope, receive, send)

    def refusal(self, request: Request) -> Response:
        if request.url.path == COOKIE_PATH + "/tail" or request.method != "GET":
            return PlainTextResponse("log in at /ui/login first", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"{COOKIE_PATH}/login?{urlencode({'next': target})}"
        if request.headers.get("sec-fetch-site") == "cross-site":
            # A link followed from another site (an alert, a chat): the browser withheld the
            # SameSite=Strict cookie. A navigation this page starts itself is same-site, so the
            # cookie goes along and the login page sends a logged-in viewer straight on.
            return HTMLResponse(
                '<!doctype html><meta charset=utf-8><link rel=icon href="data:,"><title>Opening…</title>'
                f'<a href="{escape(login)}">continue</a>',
                headers={"Refresh": f"0; url={login}"},
            )
        return RedirectResponse(login, status_code=303)
