"""The event model: what it accepts, what it refuses, and that every refusal names the field."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from app.audit.event import AuditEvent, ValidationLimits, describe_validation_error, parse_rfc3339

VALID = {
    "event_type": "workflow.started",
    "event_category": "workflow",
    "event_outcome": "success",
    "service_name": "workflow-execution-controller",
    "actor_type": "controller",
    "resource_type": "workflow",
    "resource_id": "wf-1",
}


def refusal(**changes) -> str:
    data = {**VALID, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    with pytest.raises(ValidationError) as caught:
        AuditEvent.model_validate(data)
    return describe_validation_error(caught.value)


def test_a_minimal_event_gets_an_id_a_timestamp_and_empty_data():
    event = AuditEvent.model_validate(VALID)
    assert isinstance(event.event_id, uuid.UUID)
    assert event.event_timestamp.tzinfo is not None
    assert event.event_data == {}
    assert event.metadata is None


@pytest.mark.parametrize("field", ["event_type", "event_category", "event_outcome", "service_name",
                                   "actor_type", "resource_type", "resource_id"])
def test_every_required_field_is_required(field):
    assert refusal(**{field: ...}).startswith(f"{field}: Field required")


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_or_blank_event_type_is_refused(value):
    assert refusal(event_type=value).startswith("event_type:")


def test_enums_are_the_database_checks():
    assert refusal(event_outcome="maybe").startswith("event_outcome: Input should be 'success'")
    assert refusal(actor_type="robot").startswith("actor_type:")
    for outcome in ("success", "failure", "pending", "skipped"):
        AuditEvent.model_validate({**VALID, "event_outcome": outcome})


@pytest.mark.parametrize("field,limit", [("event_type", 100), ("event_category", 50),
                                         ("service_version", 50), ("resource_id", 255),
                                         ("correlation_id", 255), ("trace_id", 255)])
def test_lengths_are_the_varchar_sizes(field, limit):
    AuditEvent.model_validate({**VALID, field: "x" * limit})
    assert refusal(**{field: "x" * (limit + 1)}).startswith(f"{field}: String should have at most {limit}")


def test_lengths_count_characters_not_bytes():
    AuditEvent.model_validate({**VALID, "event_type": "é" * 100})


def test_uuid_fields_must_be_uuids():
    assert refusal(event_id="not-a-uuid").startswith("event_id:")
    assert refusal(parent_event_id="12345").startswith("parent_event_id:")


def test_event_data_must_be_a_json_object():
    assert refusal(event_data=[1, 2]) == "event_data: must be a JSON object"
    assert refusal(event_data='{"as": "text"}') == "event_data: must be a JSON object"
    assert refusal(metadata=42) == "metadata: must be a JSON object"


def test_stream_entries_carry_json_as_text():
    text = ValidationLimits(json_as_text=True)
    event = AuditEvent.model_validate({**VALID, "event_data": '{"a": 1}'}, context=text)
    assert event.event_data == {"a": 1}
    for bad, message in (("[1, 2]", "must be a JSON object"), ("{nope", "is not valid JSON"),
                         ('{"x": NaN}', "is not valid JSON")):
        with pytest.raises(ValidationError, match=message):
            AuditEvent.model_validate({**VALID, "event_data": bad}, context=text)


def test_integers_beyond_64_bits_are_refused_by_name_never_rounded():
    """Stored they would come back as 1.2345678901234568e+29: refused on both paths instead."""
    wide = 123456789012345678901234567890
    assert refusal(event_data={"count": wide}).startswith("event_data: holds an integer beyond 64 bits")
    assert refusal(metadata={"n": [-wide]}).startswith("metadata: holds an integer beyond 64 bits")
    text = ValidationLimits(json_as_text=True)
    with pytest.raises(ValidationError, match="holds an integer beyond 64 bits"):
        AuditEvent.model_validate({**VALID, "event_data": f'{{"a": {{"b": {wide}}}}}'}, context=text)
    # What fits in 64 bits, and a float written as one, stay as they are.
    event = AuditEvent.model_validate(
        {**VALID, "event_data": '{"u": 18446744073709551615, "i": -9223372036854775808, "f": 1e30}'}, context=text
    )
    assert event.event_data == {"u": 2**64 - 1, "i": -(2**63), "f": 1e30}


def test_json_payloads_are_size_and_depth_limited():
    limits = ValidationLimits(max_json_bytes=2048, max_json_depth=5)
    big = {"blob": "x" * 4096}
    with pytest.raises(ValidationError, match="larger than 2048 bytes"):
        AuditEvent.model_validate({**VALID, "event_data": big}, context=limits)
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    with pytest.raises(ValidationError, match="nested deeper than 5 levels"):
        AuditEvent.model_validate({**VALID, "event_data": deep}, context=limits)


def test_nul_characters_are_refused_anywhere():
    assert "NUL" in refusal(resource_name="a\x00b")
    assert "NUL" in refusal(event_data={"k": ["ok", "a\x00b"]})
    assert "NUL" in refusal(event_data={"k\x00": 1})


def test_timestamps_are_rfc3339_with_an_offset():
    event = AuditEvent.model_validate({**VALID, "event_timestamp": "2026-11-25T17:30:00.123+02:00"})
    assert event.event_timestamp == datetime(2026, 11, 25, 15, 30, 0, 123000, tzinfo=UTC)
    assert refusal(event_timestamp="2026-11-25T17:30:00") == "event_timestamp: must carry a UTC offset (Z or ±hh:mm)"
    assert "RFC 3339" in refusal(event_timestamp="2026-11-25")
    assert "RFC 3339" in refusal(event_timestamp=1764091800)
    assert "RFC 3339" in refusal(event_timestamp="yesterday at noon")


def test_event_date_is_the_utc_date():
    event = AuditEvent.model_validate({**VALID, "event_timestamp": "2025-12-01T01:00:00+02:00"})
    assert event.event_date.isoformat() == "2025-11-30"


def test_timestamps_far_in_the_future_or_before_2000_are_refused():
    soon = datetime.now(UTC) + timedelta(minutes=30)
    AuditEvent.model_validate({**VALID, "event_timestamp": soon})
    later = datetime.now(UTC) + timedelta(hours=2)
    assert "in the future" in refusal(event_timestamp=later)
    assert "before 2000-01-01" in refusal(event_timestamp="1970-01-01T00:00:00Z")
    strict = ValidationLimits(max_future_skew=timedelta(minutes=10))
    with pytest.raises(ValidationError, match="in the future"):
        AuditEvent.model_validate({**VALID, "event_timestamp": soon}, context=strict)


def test_old_timestamps_are_accepted():
    AuditEvent.model_validate({**VALID, "event_timestamp": "2019-03-04T05:06:07Z"})


def test_unknown_fields_are_refused_by_name():
    assert refusal(corelation_id="typo") == "corelation_id: Extra inputs are not permitted"


def test_several_errors_are_all_named():
    message = refusal(event_outcome="maybe", actor_type="robot")
    assert "event_outcome:" in message and "actor_type:" in message


def test_parse_rfc3339_accepts_z_and_lowercase():
    assert parse_rfc3339("2026-11-25t17:30:00z") == datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
