"""The stream wire format: what a producer XADDs, what the consumer makes of it."""

import uuid
from datetime import UTC, datetime

import pytest

from app.audit.wire import InvalidEntry, decode_entry, derived_event_id, encode_event
from app.producer import ai_analysis_audit_event, notification_audit_event, workflow_audit_event

MINIMAL = {
    b"event_type": b"notification.sent",
    b"event_category": b"notification",
    b"event_outcome": b"success",
    b"service_name": b"gateway",
    b"actor_type": b"service",
    b"resource_type": b"notification",
    b"resource_id": b"notif-1",
}


def test_a_missing_event_id_and_timestamp_come_from_the_entry_id():
    event = decode_entry("audit_events", "1764091800123-7", MINIMAL)
    assert event.event_id == derived_event_id("audit_events", "1764091800123-7")
    assert event.event_timestamp == datetime(2025, 11, 25, 17, 30, 0, 123000, tzinfo=UTC)
    # The same entry read again maps to the same row.
    assert decode_entry("audit_events", "1764091800123-7", MINIMAL).event_id == event.event_id
    assert decode_entry("audit_events", "1764091800123-8", MINIMAL).event_id != event.event_id


def test_the_operator_example_of_the_design_decodes():
    fields = {**MINIMAL, b"correlation_id": b"rem-42", b"event_data": b'{"channel":"email"}'}
    event = decode_entry("audit_events", "1764091800123-0", fields)
    assert event.correlation_id == "rem-42"
    assert event.event_data == {"channel": "email"}


@pytest.mark.parametrize("factory", [
    lambda: notification_audit_event("notif-9", "failed", "ops@example.com", "slack",
                                     {"attempt": 3}, correlation_id="rem-1"),
    lambda: workflow_audit_event("wf-2", "started", "running", trace_id="abc", metadata={"k": "v"}),
    lambda: ai_analysis_audit_event("an-3", "root_cause", {"confidence": 0.93},
                                    parent_event_id=uuid.uuid4(), service_version="v1.2.3"),
])
def test_encode_then_decode_gives_the_same_event(factory):
    event = factory()
    fields = {k.encode(): v.encode() for k, v in encode_event(event).items()}
    assert all(isinstance(v, str) for v in encode_event(event).values())
    assert decode_entry("audit_events", "1764091800123-0", fields) == event


def test_notification_status_sets_type_and_outcome():
    event = notification_audit_event("n-1", "failed", "a@b.c", "email")
    assert (event.event_type, event.event_outcome, event.event_category) == (
        "notification.failed", "failure", "notification")


@pytest.mark.parametrize("fields,message", [
    ({**MINIMAL, b"data": b"{}"}, "data: field name reserved"),
    ({**MINIMAL, b"colour": b"red"}, "colour: unknown field"),
    ({**MINIMAL, b"resource_id": b"\xff\xfe"}, "resource_id: value is not valid UTF-8"),
    ({**MINIMAL, b"\xffname": b"x"}, "a field name is not valid UTF-8"),
    ({**MINIMAL, b"event_outcome": b"maybe"}, "event_outcome: Input should be"),
    ({**MINIMAL, b"event_timestamp": b"2026-13-45T00:00:00Z"}, "event_timestamp:"),
    ({**MINIMAL, b"event_data": b"[]"}, "event_data: must be a JSON object"),
    ({**MINIMAL, b"event_data": b"null"}, "event_data: Input should be a valid dictionary"),
    ({**MINIMAL, b"event_data": b'{"a": {"b": 1e400}}'}, "event_data: is not valid JSON"),
    ({**MINIMAL, b"event_data": b'{"n": 18446744073709551616}'}, "event_data: holds an integer beyond 64 bits"),
    ({k: v for k, v in MINIMAL.items() if k != b"service_name"}, "service_name: Field required"),
])
def test_entries_that_can_never_be_stored_say_why(fields, message):
    with pytest.raises(InvalidEntry) as caught:
        decode_entry("audit_events", "1764091800123-0", fields)
    assert message in str(caught.value)


def test_metadata_sent_as_json_null_is_no_metadata():
    assert decode_entry("audit_events", "1764091800123-0", {**MINIMAL, b"metadata": b"null"}).metadata is None
