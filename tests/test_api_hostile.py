"""No 500 from client input (issue 12, item 4): the parsers, property-tested over the shapes that
broke them (durations reaching before year 1, years 1 and 9999 with an offset, cursors decoding to
out-of-range times or wrong types, NUL characters), then the same inputs over HTTP, and on the
real server: a URL over 64 KB, and errors that keep the keep-alive connection."""

import base64
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.inputs import query_values
from app.audit.event import AuditEvent, ValidationLimits, parse_rfc3339
from app.audit.query import Cursor, parse_time_bound
from tests.helpers import EVENTS, ServedApi, assert_problem, raw_http

PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def _usable(moment: datetime) -> None:
    """What the query code does with a parsed time: it must not raise."""
    assert moment.tzinfo is not None
    moment.astimezone(UTC).date()


def rfc3339_texts():
    offsets = st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"),
                        st.integers(0, 23), st.integers(0, 59))
    return st.builds(
        lambda y, mo, d, h, mi, s, frac, zone: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{zone}",
        st.sampled_from([1, 2, 1999, 2026, 9998, 9999]) | st.integers(1, 9999),
        st.integers(1, 12), st.integers(1, 31), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59),
        st.sampled_from(["", ".5", ".123456", ".1234567890"]),
        st.sampled_from(["Z", "z", "+00:00"]) | offsets,
    )


@PROPERTIES
@given(st.integers(0, 999999), st.sampled_from("smhdw"))
def test_a_duration_is_a_usable_time_or_a_value_error(amount, unit):
    try:
        moment = parse_time_bound(f"{amount}{unit}")
    except ValueError:
        return
    _usable(moment)


@PROPERTIES
@given(rfc3339_texts() | st.text(max_size=40))
@example("0001-01-01T00:00:00+01:00")
@example("9999-12-31T23:59:59-00:01")
def test_an_rfc3339_text_is_a_usable_time_or_a_value_error(text):
    for parse in (parse_rfc3339, parse_time_bound):
        try:
            moment = parse(text)
        except ValueError:
            continue
        _usable(moment)


def test_the_shapes_that_broke_the_parsers_are_value_errors():
    for text in ("999999d", "999999w", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(ValueError):
            parse_time_bound(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def _encoded(value) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@PROPERTIES
@given(st.text(max_size=80)
       | json_values.map(_encoded)
       | st.tuples(rfc3339_texts(), st.uuids().map(str)).map(list).map(_encoded)
       | st.tuples(json_values, json_values).map(list).map(_encoded))
@example(_encoded(["0001-01-01T00:30:00+01:00", "6a1f0c4e-8d7b-4e59-9a8c-0f3e2d1c4b5a"]))
def test_a_cursor_is_usable_or_a_value_error(text):
    try:
        cursor = Cursor.decode(text)
    except ValueError:
        return
    _usable(cursor.event_timestamp)
    assert isinstance(cursor.event_id, uuid.UUID)


@PROPERTIES
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4))
def test_query_values_are_texts_without_nul_or_a_400(params):
    from starlette.requests import Request

    from app.api.problems import Problem

    query = "&".join(f"{k}={v}" for k, v in params.items()).encode("utf-8", "surrogatepass")
    try:
        values = query_values(Request({"type": "http", "query_string": query, "headers": []}))
    except Problem as problem:
        assert problem.status == 400 and "parameter" in problem.extensions
        return
    assert all("\x00" not in value for value in values.values())


@PROPERTIES
@given(st.text(max_size=30) | st.integers().map(str))
def test_a_query_number_is_a_whole_number_or_a_value_error(text):
    from app.api.inputs import _whole_number

    try:
        value = _whole_number(text)
    except ValueError:
        return
    assert isinstance(value, int)


def test_json_limits_of_a_stream_entry_count_bytes_not_characters():
    """200,000 four-byte characters are 800 KB: over the 256 KiB limit, as over HTTP."""
    limits = ValidationLimits(max_json_bytes=256 * 1024, json_as_text=True)
    fields = {"event_type": "t", "event_category": "c", "event_outcome": "success", "service_name": "s",
              "actor_type": "service", "resource_type": "r", "resource_id": "1"}
    four_bytes = orjson.dumps({"x": "\U0001F600" * 200_000}).decode()
    assert len(four_bytes) < limits.max_json_bytes < len(four_bytes.encode())
    for name in ("event_data", "metadata"):
        with pytest.raises(ValidationError, match=f"(?s){name}.*larger than {limits.max_json_bytes} bytes"):
            AuditEvent.model_validate({**fields, name: four_bytes}, context=limits)
    fits = orjson.dumps({"x": "\U0001F600" * 60_000}).decode()  # 240 KB
    assert AuditEvent.model_validate({**fields, "event_data": fits}, context=limits).event_data["x"][0] == "\U0001F600"


# --- over HTTP: 400s naming the parameter -----------------------------------------------------


@pytest.mark.parametrize("params,name", [
    ({"since": "999999d"}, "since"),
    ({"since": "999999w"}, "since"),
    ({"until": "999999w"}, "until"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ({"cursor": _encoded(["0001-01-01T00:00:00+01:00", str(uuid.uuid4())])}, "cursor"),
    ({"cursor": _encoded(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())])}, "cursor"),
    ({"cursor": _encoded([1, 2])}, "cursor"),
    ({"cursor": _encoded(["2026-01-01T00:00:00Z", 5])}, "cursor"),
    ({"cursor": _encoded({"a": 1, "b": 2})}, "cursor"),
    ({"cursor": _encoded([[], {}])}, "cursor"),
])
async def test_out_of_range_times_and_odd_cursors_are_400_naming_the_parameter(api, params, name):
    body = assert_problem(await api.get(EVENTS, params=params), 400, name)
    assert body["parameter"] == name


async def test_years_1_and_9999_in_utc_are_fine(api):
    response = await api.get(EVENTS, params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path,name", [
    ("/api/v1/playbooks/a%00b", "playbook_id"),
    ("/api/v1/playbooks/a%00b/versions", "playbook_id"),
    ("/api/v1/playbooks/oom/versions/v1%00", "version"),
    ("/api/v1/playbooks/a%00/versions/v1", "playbook_id"),
    (f"{EVENTS}/%00", "event_id"),
])
async def test_nul_characters_in_path_parameters_are_400_naming_them(api, path, name):
    body = assert_problem(await api.get(path), 400, name)
    assert body["parameter"] == name


# --- on the real server ------------------------------------------------------------------------


@pytest.fixture
def served(database_url, redis_url, tmp_path):
    with ServedApi(database_url, redis_url, tmp_path) as served:
        yield served


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode()


def test_errors_keep_the_keep_alive_connection(served):
    """Each error answer is followed, on the same connection, by a /healthz that is answered."""
    errors = [
        _get(f"{EVENTS}?since=999999w"),                        # was a 500: uvicorn closed the connection
        _get(f"{EVENTS}?cursor={_encoded([1, 2])}"),
        _get("/api/v1/playbooks/a%00b"),                        # was a 500 (Postgres refuses NUL)
        _get(f"{EVENTS}/not-a-uuid"),
        _get("/nowhere"),
        b"POST " + EVENTS.encode() + b" HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 7\r\n\r\n{oops}!",
    ]
    requests = [item for error in errors for item in (error, _get("/healthz"))]
    answers = raw_http(served.port, requests)
    for n in range(0, len(requests), 2):
        status = answers[n].split(b" ", 2)[1] if answers[n] else b"(closed)"
        assert status in (b"400", b"404"), (requests[n], answers[n][:300])
        assert answers[n + 1].startswith(b"HTTP/1.1 200"), (requests[n], answers[n + 1][:200])


def test_a_url_over_64_kb_is_a_400_naming_the_parameter(served):
    long_value = "x" * (70 * 1024)
    [answer, after] = raw_http(served.port, [_get(f"{EVENTS}?event_type={long_value}"), _get("/healthz")])
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:500]
    assert body.startswith(b"{"), answer[:500]
    assert orjson.loads(body)["parameter"] == "event_type"
    assert after.startswith(b"HTTP/1.1 200")
    [answer, after] = raw_http(served.port, [_get(f"/api/v1/playbooks/{long_value}/versions"), _get("/healthz")])
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head, answer[:300]
    assert orjson.loads(body)["parameter"] == "playbook_id"
    assert after.startswith(b"HTTP/1.1 200")
