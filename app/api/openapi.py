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


def _json_ref(name: str, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _path(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_TIME = {"type": ["string", "null"], "format": "date-time"}
_NUMBER = {"type": ["number", "null"]}
_INTEGER = {"type": ["integer", "null"]}
PLAYBOOK_RECORD = {
    "type": "object",
    "required": ["playbook_id", "version", "name", "description", "content", "content_hash", "labels",
                 "status", "is_latest_version", "created_at", "updated_at"],
    "properties": {
        "playbook_id": {"type": "string"}, "version": {"type": "string"}, "name": {"type": "string"},
        "description": {"type": "string"}, "owner": _text(), "maintainer": _text(),
        "content": {"type": "string"}, "content_hash": {"type": "string"},
        "labels": {"type": "object"},
        "status": {"type": "string", "enum": ["active", "disabled", "deprecated", "archived"]},
        "disabled_at": _TIME, "disabled_by": _text(), "disabled_reason": _text(),
        "is_latest_version": {"type": "boolean"}, "previous_version": _text(),
        "deprecation_notice": _text(), "version_notes": _text(), "change_summary": _text(),
        "approved_by": _text(), "approved_at": _TIME, "expected_success_rate": _NUMBER,
        "expected_duration_seconds": _INTEGER, "actual_success_rate": _NUMBER,
        "total_executions": _INTEGER, "successful_executions": _INTEGER,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "created_by": _text(), "updated_by": _text(),
    },
    "additionalProperties": False,
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
        _query("cursor", {"type": "string", "minLength": 1}, "next_cursor of the previous page"),
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
                "operationId": "readyz", "summary": "Postgres and Redis answer, the schema is migrated, the model is loaded",
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
            "/api/v1/playbooks/search": {
                "get": {
                    "operationId": "searchPlaybooksGet", "summary": "Rank playbooks for an incident description",
                    "security": api_security,
                    "parameters": [
                        {"name": "query", "in": "query", "required": True,
                         "schema": {"type": "string", "minLength": 1, "maxLength": 2000}},
                        _query("min_confidence", {"type": "number", "minimum": 0, "maximum": 1},
                               "cosine similarity threshold, 0 to 1"),
                        _query("max_results", {"type": "integer", "minimum": 1}, "at most 100 are returned"),
                    ],
                    "description": "Label filters: label.<name>=<value> query parameters (exact matches).",
                    "responses": {"200": _json_ref("SearchResult", "ranked playbooks"), **common_errors},
                },
                "post": {
                    "operationId": "searchPlaybooksPost", "summary": "Rank playbooks for an incident description",
                    "security": api_security,
                    "requestBody": {"required": True, "content": {JSON: {"schema": {
                        "$ref": "#/components/schemas/SearchRequest"}}}},
                    "responses": {"200": _json_ref("SearchResult", "ranked playbooks"), **common_errors,
                                  "413": _problem("the body is too large"), "415": _problem("the body is not JSON")},
                },
            },
            "/api/v1/playbooks/{playbook_id}": {"get": {
                "operationId": "getPlaybook", "summary": "The latest active version of a playbook",
                "security": api_security, "parameters": [_path("playbook_id")],
                "responses": {"200": _json_ref("Playbook", "the playbook"), **common_errors,
                              "404": _problem("no active version of this playbook")},
            }},
            "/api/v1/playbooks/{playbook_id}/versions": {"get": {
                "operationId": "listPlaybookVersions", "summary": "Every version, newest semantic version first",
                "security": api_security, "parameters": [_path("playbook_id")],
                "responses": {"200": _json_ref("PlaybookVersions", "the versions"), **common_errors,
                              "404": _problem("no such playbook")},
            }},
            "/api/v1/playbooks/{playbook_id}/versions/{version}": {"get": {
                "operationId": "getPlaybookVersion", "summary": "One version of a playbook",
                "security": api_security, "parameters": [_path("playbook_id"), _path("version")],
                "responses": {"200": _json_ref("Playbook", "the version"), **common_errors,
                              "404": _problem("no such playbook or version")},
            }},
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
                "SearchRequest": {
                    "type": "object", "required": ["query"], "additionalProperties": False,
                    "properties": {
                        "query": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "max_results": {"type": "integer", "minimum": 1},
                    },
                },
                "SearchResult": {
                    "type": "object", "required": ["playbooks", "total_results"],
                    "properties": {
                        "playbooks": {"type": "array", "items": {
                            "type": "object",
                            "required": ["playbook_id", "version", "name", "description", "confidence", "labels"],
                            "properties": {
                                "playbook_id": {"type": "string"}, "version": {"type": "string"},
                                "name": {"type": "string"}, "description": {"type": "string"},
                                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        }},
                        "total_results": {"type": "integer", "minimum": 0},
                    },
                },
                "Playbook": PLAYBOOK_RECORD,
                "PlaybookVersions": {
                    "type": "object", "required": ["playbook_id", "versions"],
                    "properties": {"playbook_id": {"type": "string"},
                                   "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Playbook"}}},
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return document
