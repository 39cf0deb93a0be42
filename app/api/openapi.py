"""The OpenAPI 3.1 document, generated from the routes' operations and their pydantic models.

Each route module lists its `operations` next to its routes: the query-parameter model, the body
model and a model per response. A limit is stated once, in a model, and both the handler and this
document read it there. Tests validate real responses against the document and run schemathesis
over it.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from app.api.access import ADMIN, Scope
from app.api.problems import ProblemDocument

JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Reply:
    """A response: its description and JSON body (a model, or a schema); none for a problem."""

    description: str
    model: type[BaseModel] | None = None
    schema: dict[str, Any] | None = None
    media_type: str = JSON


@dataclass(frozen=True)
class Operation:
    """`route` is the method and path, e.g. `GET /api/v1/playbooks/{playbook_id}`; each `{name}` in
    the path is a text parameter unless `path_formats` gives it a format (e.g. uuid)."""

    route: str
    operation_id: str
    summary: str
    responses: dict[int, Reply]
    description: str | None = None
    query: type[BaseModel] | None = None
    path_formats: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    # Families of query parameters named by a pattern (`event_data.<key>`): listed in the
    # extension x-query-parameter-patterns, since OpenAPI has no parameter with a variable name.
    query_patterns: dict[str, str] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    # Open to everyone (health): no bearer token, no 400 for bad parameters.
    public: bool = False
    # The scope a token needs (app/api/access.py); the auth middleware reads it from here.
    # Unset on a route that is not public: admin.
    scope: Scope | None = None

    @property
    def method(self) -> str:
        return self.route.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.route.split(" ", 1)[1]

    def path_parameters(self) -> dict[str, dict[str, Any]]:
        names = re.findall(r"{(\w+)}", self.path)
        return {
            name: {"type": "string", **({"format": self.path_formats[name]} if name in self.path_formats else {})}
            for name in names
        }


def openapi_document(
    operations: Iterable[Operation], *, auth: bool, extra_schemas: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    operations = list(operations)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ProblemDocument, "serialization")]
    for operation in operations:
        if operation.body is not None:
            models.append((operation.body, "validation"))
        models += [(reply.model, "serialization") for reply in operation.responses.values() if reply.model]
    refs, definitions = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)

    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation, refs, auth)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Data Storage Service",
            "version": "1.0.0",
            "description": "The platform's audit trail and remediation-playbook catalog.",
        },
        "paths": paths,
        "components": {
            "schemas": {**definitions.get("$defs", {}), **extra_schemas},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(operation: Operation, refs: dict, auth: bool) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in operation.path_parameters().items()
    ]
    parameters += [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in operation.headers.items()
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    responses = {str(status): _response(reply, refs) for status, reply in sorted(operation.responses.items())}
    document: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    if operation.description:
        document["description"] = operation.description
    if not operation.public:
        # The scope as the bearer requirement's role (OpenAPI 3.1 allows role names for any
        # scheme) and, whether or not this service asks for tokens, as x-required-scope.
        scope = operation.scope or ADMIN
        document["x-required-scope"] = scope
        document["security"] = [{"bearer": [scope]}] if auth else []
        responses.setdefault("400", _response(Reply("a parameter or the body is not valid"), refs))
        if auth:
            responses.setdefault("401", _response(Reply("no valid bearer token"), refs))
            responses.setdefault("403", _response(Reply(f"the token lacks the scope {scope} (named in scope)"), refs))
        responses.setdefault("429", _response(Reply("rate limit exceeded; see Retry-After"), refs))
        # Any route may find a store (or the Kubernetes authoriser) away: a problem with Retry-After.
        responses.setdefault("503", _response(Reply("a store or the authoriser is unavailable; see Retry-After"), refs))
    if parameters:
        document["parameters"] = parameters
    if operation.query_patterns:
        document["x-query-parameter-patterns"] = [
            {"name": name, "in": "query", "schema": {"type": "string"}, "description": text}
            for name, text in operation.query_patterns.items()
        ]
    if operation.body is not None:
        # Every JSON body is read by app/api/inputs.py:read_json_body, which answers these.
        responses.setdefault("413", _response(Reply("the body is too large"), refs))
        responses.setdefault("415", _response(Reply("the body is not JSON"), refs))
        document["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": refs[(operation.body, "validation")]}},
        }
    document["responses"] = dict(sorted(responses.items()))
    return document


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation", ref_template=REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, property_schema in schema["properties"].items():
        property_schema = dict(property_schema)
        description = property_schema.pop("description", None)
        property_schema.pop("title", None)
        # A query parameter is given or absent, never null.
        variants = property_schema.pop("anyOf", None)
        if variants:
            property_schema.update(next(v for v in variants if v.get("type") != "null"))
        if property_schema.get("default", "") is None:
            del property_schema["default"]
        parameter = {"name": name, "in": "query", "required": name in required, "schema": property_schema}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _response(reply: Reply, refs: dict) -> dict[str, Any]:
    if reply.model is not None:
        content = {reply.media_type: {"schema": refs[(reply.model, "serialization")]}}
    elif reply.schema is not None:
        content = {reply.media_type: {"schema": reply.schema}}
    else:
        content = {PROBLEM: {"schema": refs[(ProblemDocument, "serialization")]}}
    return {"description": reply.description, "content": content}
