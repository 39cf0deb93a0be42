"""What the viewer's pages share: the templates, the settings they use, and one way to fail.

Every page handler is wrapped by `page`: a problem with the request is a 4xx page naming it, a
store that does not answer is a 503 page, and anything else a 500 page that says it is logged;
never a stack trace, and never the API's JSON in a browser.
"""

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from app.api.problems import Problem
from app.core.settings import Settings
from app.core.sqlstate import ErrorKind, classify
from app.ui.auth import TokenCheck
from app.ui.format import FILTERS, query_string

log = structlog.get_logger(__name__)

PREFIX = "/ui"
STATUS_TITLES = {
    400: "Bad request",
    401: "Log in first",
    403: "Not allowed",
    404: "Not found",
    413: "Too large",
    415: "Not a form",
    500: "Something failed",
    503: "Unavailable",
}


class PageError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


@dataclass
class TailSlots:
    """The live tails open in this process, at most `limit` at once."""

    limit: int
    open: int = 0

    def try_take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("app.ui", "templates"),
        autoescape=True,  # every template, whatever its name: values are text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(prefix=PREFIX, query_string=query_string)
    return env


@dataclass
class Viewer:
    settings: Settings
    tokens: TokenCheck
    templates: Jinja2Templates = field(default_factory=lambda: Jinja2Templates(env=_environment()))
    tails: TailSlots = field(init=False)

    def __post_init__(self) -> None:
        self.tails = TailSlots(self.settings.ui_tail_max_clients)

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        context = {"auth": self.tokens.required, "page_name": name.removesuffix(".html"), **context}
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def fragment(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(**context)

    def error(self, request: Request, status: int, message: str) -> Response:
        title = STATUS_TITLES.get(status, "Error")
        return self.render(request, "error.html", {"title": title, "message": message, "status": status}, status)


Handler = Callable[[Viewer, Request], Awaitable[Response]]


def page(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(viewer: Viewer, request: Request) -> Response:
        try:
            return await handler(viewer, request)
        except PageError as error:
            return viewer.error(request, error.status, error.message)
        except Problem as problem:  # the API's parsing of the same parameters
            return viewer.error(request, problem.status, problem.detail)
        except Exception as error:
            if store_unavailable(error):
                log.warning("ui_store_unavailable", path=request.url.path, error=str(error))
                return viewer.error(request, 503, "Postgres or Redis did not answer; try again in a moment.")
            log.exception("ui_unexpected_error", path=request.url.path)
            return viewer.error(request, 500, "The viewer failed to show this page; the error is logged.")

    return guarded


def store_unavailable(error: BaseException) -> bool:
    """A connection lost or refused, Postgres shutting down, a timeout: the stores' trouble, not
    the page's (SQLAlchemy wraps the driver's error, which the service's classification knows)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if classify(seen) is ErrorKind.TRANSIENT:
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False
