"""`/ui/login` and `/ui/logout`: a token typed once, kept in an HttpOnly, SameSite=Strict cookie."""

from urllib.parse import parse_qs

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.ui.auth import COOKIE, COOKIE_MAX_AGE_S, COOKIE_PATH, cookie_value, safe_next
from app.ui.rendering import PREFIX, PageError, Viewer, page

log = structlog.get_logger(__name__)

MAX_FORM_BYTES = 8 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the one field of the login page, and where to go next)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise PageError(415, "the login form is sent as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "the login form is larger than it can be")
    fields = parse_qs(body.decode(errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


@page
async def login_page(viewer: Viewer, request: Request) -> Response:
    target = safe_next(request.query_params.get("next"))
    if not viewer.tokens.required:
        return RedirectResponse(target, status_code=303)  # the API asks for no token either
    if request.method == "GET":
        if viewer.tokens.cookie_allowed(request.cookies.get(COOKIE, "")):
            return RedirectResponse(target, status_code=303)
        return viewer.render(request, "login.html", {"next": target, "error": None, "title": "Log in"})
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise PageError(403, "log in from the viewer's own login page")
    form = await read_form(request)
    token, target = form.get("token", "").strip(), safe_next(form.get("next"))
    if not viewer.tokens.token_allowed(token):
        log.info("ui_login_refused", client=request.client.host if request.client else None)
        context = {"next": target, "error": "That token is not one the service accepts.", "title": "Log in"}
        return viewer.render(request, "login.html", context, status=401)
    log.info("ui_login", client=request.client.host if request.client else None)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie_value(token),
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@page
async def logout(viewer: Viewer, request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/login" if viewer.tokens.required else f"{PREFIX}/", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response
