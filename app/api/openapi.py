"""The OpenAPI 3.1 document of the HTTP API. Request bodies come from the event model itself;
tests validate real responses against this document and run schemathesis over it."""

from functools import lru_cache

from app.audit_query import FILTERS
from app.events import ACTOR_TYPES, EVENT_OUTCOMES, AuditEvent

JSON = "application/json"
PROBLEM = "application/problem+json"


def _text(max_length: int | None = None, nullable: bool = True) -> dict:
    schema: dict = {"type": ["string", "null"] if nullable else "string"}
    if max_length:
        schema["maxLength"] = max_length
    return schema


def _uuid(nullable: bool = False) -> dict:
    return {"type": ["string", "null"] if nullable else "string", "format": "uuid"}


AUDIT_EVENT_RECORD = {
    "type": "object",
    "required": ["event_id", "event_type", "event_category", "event_outcome", "event_timestamp",
                 "event_date", "service_name", "actor_type", "resource_type", "resource_id", "event_data"],
    "properties": {
        "event_id": _uuid(),
        "event_type": _text(100, nullable=False),
        "event_category": _text(50, nullable=False),
        "event_outcome": {"type": "string", "enum": list(EVENT_OUTCOMES)},
        "event_timestamp": {"type": "string", "format": "date-time"},
        "event_date": {"type": "string", "format": "date"},
        "service_name": _text(100, nullable=False),
        "service_version": _text(50),
        "actor_type": {"type": "string", "enum": list(ACTOR_TYPES)},
        "actor_id": _text(255),
        "actor_name": _text(255),
        "resource_type": _text(100, nullable=False),
        "resource_id": _text(255, nullable=False),
        "resource_name": _text(255),
        "event_data": {"type": "object"},
        "correlation_id": _text(255),
        "parent_event_id": _uuid(nullable=True),
        "trace_id": _text(255),
        "span_id": _text(255),
        "metadata": {"type": ["object", "null"]},
    },
    "additionalProperties": False,
}

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def _problem(description: str) -> dict:
    return {"description": description,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _list_parameters() -> list[dict]:
    parameters = []
    for name in FILTERS:
        if name == "parent_event_id":
            schema = {"type": "string", "format": "uuid"}
        elif name == "event_outcome":
            schema = {"type": "string", "enum": list(EVENT_OUTCOMES)}
        elif name == "actor_type":
            schema = {"type": "string", "enum": list(ACTOR_TYPES)}
        else:
            schema = {"type": "string", "maxLength": 255}
        parameters.append(_query(name, schema, f"exact match on {name}"))
    time_schema = {"type": "string", "pattern": r"^(\d{1,6}[smhdw]|\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2}))$"}
    parameters += [
        _query("since", time_schema, "inclusive lower bound: RFC 3339, or a duration back from now (15m, 24h, 7d)"),
        _query("until", time_schema, "exclusive upper bound, same forms as since"),
        _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"},
               "newest first (desc) or oldest first (asc, a correlation's timeline)"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size"),
        _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
    ]
    return parameters


@lru_cache(maxsize=2)
def openapi_document(auth: bool) -> dict:
    event_input = AuditEvent.model_json_schema(mode="validation")
    # The HTTP body carries event_data/metadata as JSON objects (the stream carries them as text).
    event_input["properties"]["event_data"] = {"type": "object"}
    event_input["properties"]["metadata"] = {"type": ["object", "null"]}
    event_input["additionalProperties"] = False
    api_security = [{"bearer": []}] if auth else []
    common_errors = {"400": _problem("a parameter or the body is not valid")}
    if auth:
        common_errors["401"] = _problem("no valid bearer token")

    document = {
        "openapi": "3.1.0",
        "info": {"title": "Data Storage Service", "version": "1.0.0",
                 "description": "The platform's audit trail and remediation-playbook catalog."},
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive",
                                 "responses": {"200": {"description": "alive", "content": {JSON: {"schema": {
                                     "type": "object", "properties": {"status": {"const": "ok"}}}}}}}}},
            "/readyz": {"get": {
                "operationId": "readyz", "summary": "Postgres and Redis answer and the schema is migrated",
                "responses": {
                    "200": {"description": "ready", "content": {JSON: {"schema": {"type": "object", "properties": {
                        "status": {"const": "ready"}, "checks": {"type": "object"}}}}}},
                    "503": _problem("a dependency is not ready (named in detail and checks)"),
                }}},
            "/api/v1/audit-events": {
                "get": {
                    "operationId": "listAuditEvents", "summary": "Query the audit trail",
                    "security": api_security,
                    "parameters": _list_parameters(),
                    "responses": {
                        "200": {"description": "a page of events", "content": {JSON: {"schema": {
                            "$ref": "#/components/schemas/AuditEventPage"}}}},
                        **common_errors,
                    },
                },
                "post": {
                    "operationId": "createAuditEvents",
                    "summary": "Write one event or up to 1000 (through the stream; straight to Postgres when Redis is down)",
                    "security": api_security,
                    "parameters": [{"name": "traceparent", "in": "header", "required": False,
                                    "schema": {"type": "string"},
                                    "description": "W3C trace context: fills trace_id and span_id when the body has none"}],
                    "requestBody": {"required": True, "content": {JSON: {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/AuditEventInput"},
                        {"type": "array", "minItems": 1, "maxItems": 1000,
                         "items": {"$ref": "#/components/schemas/AuditEventInput"}},
                    ]}}}},
                    "responses": {
                        "202": {"description": "accepted into the stream", "content": {JSON: {"schema": {
                            "$ref": "#/components/schemas/WriteResult"}}}},
                        "201": {"description": "Redis was down: stored in Postgres", "content": {JSON: {"schema": {
                            "$ref": "#/components/schemas/WriteResult"}}}},
                        **common_errors,
                        "413": _problem("the body is too large"),
                        "415": _problem("the body is not JSON"),
                        "503": _problem("neither Redis nor Postgres takes writes; see Retry-After"),
                    },
                },
            },
            "/api/v1/audit-events/{event_id}": {"get": {
                "operationId": "getAuditEvent", "summary": "One event by id",
                "security": api_security,
                "parameters": [{"name": "event_id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": {"description": "the event", "content": {JSON: {"schema": {
                        "$ref": "#/components/schemas/AuditEventRecord"}}}},
                    **common_errors,
                    "404": _problem("no event with this id"),
                },
            }},
        },
        "components": {
            "schemas": {
                "AuditEventInput": event_input,
                "AuditEventRecord": AUDIT_EVENT_RECORD,
                "AuditEventPage": {
                    "type": "object", "required": ["data", "pagination"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEventRecord"}},
                        "pagination": {"type": "object", "required": ["limit", "next_cursor", "has_more"],
                                       "properties": {"limit": {"type": "integer"},
                                                      "next_cursor": {"type": ["string", "null"]},
                                                      "has_more": {"type": "boolean"}}},
                    },
                },
                "WriteResult": {"type": "object", "required": ["status"], "properties": {
                    "event_id": {"type": "string", "format": "uuid"},
                    "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                    "status": {"type": "string", "enum": ["accepted", "stored"]},
                }},
                "Problem": PROBLEM_SCHEMA,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return document
