"""The viewer as one Mount at `/ui`: its pages, the live tail, login, static files, and the two
middlewares every viewer response goes through (auth, then the security headers)."""

from functools import partial

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.api.tokens import TokenGrant
from app.core.settings import Settings
from app.ui.auth import TokenCheck, ViewerAuth
from app.ui.correlations import correlation_page
from app.ui.dlq import dlq_page
from app.ui.events import event_list, event_page
from app.ui.headers import SecurityHeaders
from app.ui.login import login_page, logout
from app.ui.playbooks import playbooks_page
from app.ui.rendering import PREFIX, PageError, Viewer, page
from app.ui.tail import tail

STATIC = f"{PREFIX}/static/"


@page
async def not_found(viewer: Viewer, request: Request) -> Response:
    raise PageError(404, f"The viewer has no page at {request.url.path}.")


def viewer_mount(settings: Settings, grants: list[TokenGrant]) -> Mount:
    """The viewer; `grants` are the API's static tokens (none: no login, as the API asks none)."""
    viewer = Viewer(settings, TokenCheck(grants))
    routes = [
        Route("/", partial(event_list, viewer)),
        Route("/events/{event_id}", partial(event_page, viewer)),
        Route("/correlations/{correlation_id:path}", partial(correlation_page, viewer)),
        Route("/playbooks", partial(playbooks_page, viewer)),
        Route("/dlq", partial(dlq_page, viewer)),
        Route("/tail", partial(tail, viewer)),
        Route("/login", partial(login_page, viewer), methods=["GET", "POST"]),
        Route("/logout", partial(logout, viewer), methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("app.ui", "static")])),
        Route("/{anything:path}", partial(not_found, viewer)),
    ]
    return Mount(
        PREFIX,
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders, static_prefix=STATIC),
            Middleware(ViewerAuth, tokens=viewer.tokens, open_paths=(f"{PREFIX}/login", STATIC)),
        ],
    )
