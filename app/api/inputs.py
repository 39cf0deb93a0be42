"""What a request brings, validated by a pydantic model, or a 400 problem naming what is wrong.

The models (query parameters, bodies) are the single statement of each limit: the handlers
validate with them and the OpenAPI document (`app/api/openapi.py`) is generated from them.
"""

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.requests import Request

from app.api.problems import Problem
from app.audit.event import loads_exact

Model = TypeVar("Model", bound=BaseModel)


def _whole_number(value: Any) -> Any:
    # A query string carries text: "5" is a number, "5.0" or "five" is not (pydantic's lax mode
    # would take "5.0").
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
    return value


QueryInt = Annotated[int, BeforeValidator(_whole_number)]


_NAMED_MESSAGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")


def error_location(item: Any) -> tuple[str, str]:
    """(the field, the message) of one pydantic error. A model-level check has no location: its
    message names the field (`event_timestamp: is more than …`), so the field is taken from there."""
    name = ".".join(str(part) for part in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    if not name and (match := _NAMED_MESSAGE.match(message)):
        name, message = match[1], message[match.end() :]
    return name, message


def problem_from(error: ValidationError, *, unknown: str = "unknown field") -> Problem:
    """A 400 naming the first bad parameter or field, in words."""
    first = error.errors(include_url=False)[0]
    name, message = error_location(first)
    if first["type"] == "extra_forbidden":
        message = unknown
    return Problem(400, f"{name}: {message}" if name else message, parameter=name or None)


def query_values(request: Request) -> dict[str, str]:
    """The query parameters, each given once and free of NUL characters."""
    values = {}
    for name in request.query_params:
        given = request.query_params.getlist(name)
        if len(given) > 1:
            raise Problem(400, f"{name}: given more than once", parameter=name)
        if "\x00" in given[0]:
            raise Problem(400, f"{name}: must not contain NUL characters", parameter=name)
        values[name] = given[0]
    return values


def path_text(request: Request, name: str) -> str:
    """A path parameter, free of NUL characters (Postgres text cannot hold one: a 400, not a 500)."""
    value: str = request.path_params[name]
    if "\x00" in value:
        raise Problem(400, f"{name}: must not contain NUL characters", parameter=name)
    return value


def parse_query(model: type[Model], values: dict[str, Any]) -> Model:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise problem_from(error, unknown="unknown query parameter") from None


def parse_body(model: type[Model], body: Any) -> Model:
    """A JSON body: numbers must be numbers and texts texts (strict), unknown fields refused."""
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object", field="body")
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as error:
        raise problem_from(error) from None


async def read_json_body(request: Request, max_bytes: int) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(415, "the body must be JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(413, f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Problem(413, f"the body is larger than {max_bytes} bytes")
    try:
        return loads_exact(body)
    except json.JSONDecodeError as error:
        raise Problem(400, f"the body is not valid JSON ({error})", field="body") from None
