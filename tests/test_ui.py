"""The audit viewer at /ui/ over HTTP (no browser): pages, filters, paging, the timeline, escaping,
headers, login, the dead letters, playbooks and the live tail's stream. tests/test_ui_browser.py
drives the same pages in a real Chromium."""

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from app.api.app import create_app
from app.audit.integrity.checked_chain import CheckedChain
from app.audit.integrity.checkpoints import CHECKPOINT_STREAM, Checkpointer, published_checkpoints
from app.audit.integrity.verify import Window, verify
from app.audit.partitions import ensure_partitions
from app.audit.query import FILTERS
from app.audit.store import AuditStore
from app.core.settings import PROJECT_ROOT
from app.local.embedded import free_port
from app.ui.auth import COOKIE
from app.ui.integrity import _status
from app.ui.playbooks import explanation
from app.ui.timeline import build_timeline, tree_order
from tests.helpers import (
    DLQ,
    audit_row,
    client_for,
    event,
    insert_audit_row,
    start_run,
    stop_with_ctrl_c,
    submitted,
    wait_for_event,
)

HOSTILE = {
    "html": "<script>alert('event_data')</script>",
    "url": "javascript:alert(1)",
    "img": '<img src=x onerror="alert(2)">',
    "quote": "\"'><svg onload=alert(3)>",
}


@pytest.fixture
async def store(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield AuditStore(pool)
    await pool.close()


class Page(HTMLParser):
    """What a test needs to know of a page: its tags with their attributes, and its text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]

    def links(self) -> list[str]:
        return [a["href"] for a in self.all("a") if a.get("href")]


def assert_html(response: httpx.Response, status: int = 200) -> Page:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text and "SELECT" not in response.text
    return Page(response.text)


# --- the event list ----------------------------------------------------------------------------


async def test_the_list_shows_events_newest_first_with_every_filter_of_the_api_as_a_form(api, store):
    written = [event(n, correlation_id="rem-1", event_timestamp=datetime.now(UTC) - timedelta(minutes=10 - n))
               for n in range(3)]
    await store.insert(submitted(written))
    page = assert_html(await api.get("/ui/"))
    rows = [tr["id"] for tr in page.all("tr") if tr.get("id")]
    assert rows == [f"e-{e.event_id}" for e in reversed(written)]
    names = {field["name"] for field in page.all("input") + page.all("select")}
    assert set(FILTERS) | {"since", "until", "order", "limit"} <= names
    links = page.links()
    assert f"/ui/events/{written[0].event_id}" in links
    assert "/ui/correlations/rem-1" in links
    times = page.all("time")
    assert times and all(t["title"].endswith(" UTC") and t["datetime"].endswith("Z") for t in times)


async def test_filters_from_the_form_select_like_the_api_and_empty_fields_are_ignored(api, store):
    await store.insert(submitted([event(1, service_name="gateway"), event(2, service_name="planner", event_outcome="failure")]))
    page = assert_html(await api.get("/ui/", params={"service_name": "planner", "event_type": "", "actor_type": ""}))
    assert len([tr for tr in page.all("tr") if tr.get("id")]) == 1
    assert "planner" in "".join(page.text)
    page = assert_html(await api.get("/ui/", params={"event_outcome": "success"}))
    assert len([tr for tr in page.all("tr") if tr.get("id")]) == 1


@pytest.mark.parametrize("params, named", [
    ({"limit": "0"}, "limit"), ({"since": "yesterday"}, "since"), ({"event_outcome": "great"}, "event_outcome"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"nonsense": "1"}, "nonsense"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
])
async def test_a_bad_filter_is_a_400_page_naming_it(api, params, named):
    page = assert_html(await api.get("/ui/", params=params), 400)
    assert named in "".join(page.text)


async def test_cursor_pages_walk_the_list_without_repeating_a_row(api, store):
    await store.insert(submitted([event(n, event_timestamp=datetime.now(UTC) - timedelta(seconds=n)) for n in range(5)]))
    seen, url = [], "/ui/?limit=2&service_name=gateway"
    while url:
        page = assert_html(await api.get(url))
        seen += [tr["id"] for tr in page.all("tr") if tr.get("id")]
        following = [a["href"] for a in page.all("a") if a.get("rel") == "next"]
        url = following[0] if following else None
        if url:
            assert parse_qs(urlsplit(url).query)["service_name"] == ["gateway"]  # the filters go along
    assert len(seen) == 5 == len(set(seen))


async def test_the_first_page_carries_the_live_tail_and_later_pages_do_not(api, store):
    await store.insert(submitted([event(n) for n in range(3)]))
    page = assert_html(await api.get("/ui/", params={"service_name": "gateway", "limit": "1"}))
    [tail] = [p for p in page.all("p") if p.get("id") == "tail"]
    query = parse_qs(urlsplit(tail["data-tail-url"]).query)
    assert query["service_name"] == ["gateway"] and "limit" not in query
    assert re.fullmatch(r"\d+:\d+:[\d,]*", query["mark"][0])
    [following] = [a["href"] for a in page.all("a") if a.get("rel") == "next"]
    assert not [p for p in assert_html(await api.get(following)).all("p") if p.get("id") == "tail"]


# --- one event, one correlation ----------------------------------------------------------------


async def test_an_event_page_shows_every_field_its_parent_and_children(api, store):
    parent = event(1, correlation_id="rem-9", metadata={"source": "test"}, trace_id="trace-1")
    child = event(2, correlation_id="rem-9", parent_event_id=parent.event_id)
    await store.insert(submitted([parent, child]))
    page = assert_html(await api.get(f"/ui/events/{parent.event_id}"))
    text = "".join(page.text)
    assert str(parent.event_id) in text and "trace-1" in text and '"source": "test"' in text
    assert f"/ui/events/{child.event_id}" in page.links()
    child_page = assert_html(await api.get(f"/ui/events/{child.event_id}"))
    assert f"/ui/events/{parent.event_id}" in child_page.links()
    assert "unknown" in "".join(child_page.text)  # integrity: no signing key, nothing to check against


async def test_each_event_shows_its_integrity_status_from_the_seals(settings, signer, database_url, db):
    """Sealed rows say `sealed`; a row changed behind the service's back says `tampered` on the
    timeline and on its own page; without a signing key the status is `unknown` (above)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    steps = [event(n, correlation_id="rem-sealed", event_timestamp=datetime.now(UTC) - timedelta(minutes=5 - n))
             for n in range(3)]
    try:
        await AuditStore(pool, signer).insert(submitted(steps))
    finally:
        await pool.close()
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")  # past the append-only trigger
        await db.execute("UPDATE audit_events SET event_outcome = 'failure' WHERE event_id = $1", steps[1].event_id)
    async with client_for(settings, signer) as api:
        timeline = assert_html(await api.get("/ui/correlations/rem-sealed"))
        statuses = [attrs["class"].split()[-1] for attrs in timeline.all("span")
                    if "integrity" in (attrs.get("class") or "").split()]
        assert statuses == ["integrity-sealed", "integrity-tampered", "integrity-sealed"]
        page = assert_html(await api.get(f"/ui/events/{steps[1].event_id}"))
        assert "tampered" in "".join(page.text)


def integrity_column(page) -> list[str]:
    return [attrs["class"].split()[-1].removeprefix("integrity-") for attrs in page.all("span")
            if "integrity" in (attrs.get("class") or "").split()]


def chain_seals_checked() -> float:
    return REGISTRY.get_sample_value("datastorage_viewer_chain_seals_checked_total") or 0.0


async def tamper(db, statement: str, *args) -> None:
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")  # past the append-only triggers
        await db.execute(statement, *args)


async def test_each_view_checks_the_pages_rows_and_the_chain_is_checked_once(
    settings, signer, database_url, db, client, redis_server
):
    """The chain of seals and its checkpoints do not depend on the page: a process checks them
    once, then only the seals added since. The page's rows are checked on every view: a row
    changed after the first view shows `tampered` on the next one, the untouched ones `sealed`."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    store = AuditStore(pool, signer)
    start = datetime.now(UTC) - timedelta(minutes=10)
    steps = [event(n, correlation_id="rem-viewed", event_timestamp=start + timedelta(minutes=n)) for n in range(4)]
    try:
        for step in steps[:3]:  # a seal each, and seals of another remediation
            await store.insert(submitted([step]))
        await store.insert(submitted([event(10 + n, correlation_id="rem-other") for n in range(5)]))
        checkpointer = Checkpointer(pool, client, signer, settings)
        await checkpointer.checkpoint_once()
        async with client_for(settings, signer) as api:
            before = chain_seals_checked()
            first = assert_html(await api.get("/ui/correlations/rem-viewed"))
            assert integrity_column(first) == ["sealed", "sealed", "sealed"]
            assert chain_seals_checked() - before == 4  # the whole chain

            await tamper(db, "UPDATE audit_events SET resource_id = 'elsewhere' WHERE event_id = $1", steps[1].event_id)
            again = assert_html(await api.get("/ui/correlations/rem-viewed"))
            assert integrity_column(again) == ["sealed", "tampered", "sealed"]
            page = assert_html(await api.get(f"/ui/events/{steps[0].event_id}"))
            assert integrity_column(page) == ["sealed"]
            assert chain_seals_checked() - before == 4  # not again

            await store.insert(submitted([steps[3]]))
            await checkpointer.checkpoint_once()
            later = assert_html(await api.get("/ui/correlations/rem-viewed"))
            assert integrity_column(later) == ["sealed", "tampered", "sealed", "sealed"]
            assert chain_seals_checked() - before == 5  # the new seal alone

            redis_server.stop()  # no checkpoints to check against: as before, nothing is said
            away = assert_html(await api.get("/ui/correlations/rem-viewed"))
            assert integrity_column(away) == ["unknown"] * 4
    finally:
        await pool.close()


@pytest.mark.parametrize("altered", ["the page's seal", "a new checkpoint", "the newest seal"])
async def test_a_seal_or_checkpoint_altered_after_the_chain_was_checked_vouches_for_no_row(
    settings, signer, database_url, db, client, altered
):
    """As `datastorage audit verify` would find it: a seal or checkpoint that is not as signed
    breaks the chain, which then vouches for no row (`unknown`), though the chain was checked
    (and found intact) before. The page's seals are checked on every view, the newest seal checked
    and what was added since when a seal or checkpoint is added. (An older seal off the page
    altered after the check goes unseen until the process checks the whole chain again: `audit
    verify` checks every seal every time.)"""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    store = AuditStore(pool, signer)
    start = datetime.now(UTC) - timedelta(minutes=10)
    try:
        await store.insert(submitted([event(n, correlation_id="rem-altered", event_timestamp=start + timedelta(minutes=n))
                                      for n in range(2)]))  # fmt: skip
        await store.insert(submitted([event(5, correlation_id="rem-other")]))
        checkpointer = Checkpointer(pool, client, signer, settings)
        [checkpoint] = [await checkpointer.checkpoint_once()]
        assert checkpoint is not None
        async with client_for(settings, signer) as api:
            checked = assert_html(await api.get("/ui/correlations/rem-altered"))
            assert integrity_column(checked) == ["sealed", "sealed"]
            if altered == "the page's seal":
                await tamper(db, "UPDATE audit_seals SET details = '{\"note\": 1}' WHERE chain_index = 1")
            elif altered == "a new checkpoint":
                forged = replace(checkpoint, checkpoint_index=checkpoint.checkpoint_index + 1, rows_total=99)
                await client.xadd(CHECKPOINT_STREAM, {k: str(v) for k, v in forged.as_json().items()})
            else:  # then a seal is added after it, as the service adds them
                await tamper(db, "UPDATE audit_seals SET sealed_at = sealed_at - interval '1 day' WHERE chain_index = 2")
                await store.insert(submitted([event(6, correlation_id="rem-other")]))
            after = assert_html(await api.get("/ui/correlations/rem-altered"))
            assert integrity_column(after) == ["unknown", "unknown"]
    finally:
        await pool.close()


TAMPERINGS = {
    "a column changed": "UPDATE audit_events SET event_outcome = 'failure' WHERE event_id = $1",
    "re-dated": "UPDATE audit_events SET event_date = event_date - 1, event_timestamp = event_timestamp - interval '1 day' "
    "WHERE event_id = $1",
    "its salt changed": "UPDATE audit_events SET integrity_salt = decode(md5('salt'), 'hex') WHERE event_id = $1",
    "naming a seal the chain lacks": "UPDATE audit_events SET seal_id = 999999 WHERE event_id = $1",
    "naming another seal": "UPDATE audit_events SET seal_id = (SELECT min(seal_id) FROM audit_seals) WHERE event_id = $1",
    "its seal's leaves rewritten": "UPDATE audit_seals SET leaves = leaves || leaves "
    "WHERE seal_id = (SELECT seal_id FROM audit_events WHERE event_id = $1)",
    "inserted without a seal an hour ago": timedelta(hours=1),
    "inserted without a seal just now": timedelta(0),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
async def test_the_statuses_are_those_a_whole_verify_of_the_correlation_gives(
    settings, signer, database_url, db, client, tampering
):
    """Whatever was done behind the service's back after the chain was checked, each event's
    status is the one `verify --correlation-id` (the whole chain, every row and seal of the
    correlation) gives it, on the timeline and on the event's page. But for one difference: a
    page checks its own rows' seals, not every seal of the correlation, so a row whose own seal
    is intact is `sealed` on its own page though another seal's leaves were rewritten (the
    timeline, which shows that seal's row, says `unknown` for all)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    start = datetime.now(UTC) - timedelta(minutes=10)
    steps = [event(n, correlation_id="rem-x", event_timestamp=start + timedelta(minutes=n)) for n in range(3)]
    try:
        for step in steps:
            await AuditStore(pool, signer).insert(submitted([step]))
        await Checkpointer(pool, client, signer, settings).checkpoint_once()
    finally:
        await pool.close()
    async with client_for(settings, signer) as api:
        assert integrity_column(assert_html(await api.get("/ui/correlations/rem-x"))) == ["sealed"] * 3
        change = TAMPERINGS[tampering]
        if isinstance(change, timedelta):
            await insert_audit_row(db, audit_row(datetime.now(UTC) - change, event_id=uuid.uuid4(), correlation_id="rem-x"))
        else:
            await ensure_partitions(db, [start.date() - timedelta(days=1)])  # re-dated: yesterday's month
            await tamper(db, change, steps[1].event_id)
        report = await verify(db, signer.verifier, await published_checkpoints(client), Window(correlation_id="rem-x"),
                              sealing_bound=timedelta(seconds=settings.audit_sealing_bound_s))  # fmt: skip
        named = {f.event_id: f.kind for f in report.findings if f.event_id}
        broken = any(f.event_id is None and f.kind not in ("no_checkpoint", "seal_not_checkpointed")
                     for f in report.findings)  # fmt: skip
        rows = await db.fetch("SELECT event_id, seal_id FROM audit_events_all WHERE correlation_id = 'rem-x'")
        verified = {r["event_id"]: _status(str(r["event_id"]), named, r["seal_id"] is not None, broken) for r in rows}
        assert set(verified.values()) != {"sealed"}  # the tampering is seen
        timeline = integrity_column(assert_html(await api.get("/ui/correlations/rem-x")))
        assert sorted(timeline) == sorted(verified.values())
        for event_id, status in verified.items():
            own_seal_intact = tampering == "its seal's leaves rewritten" and event_id != steps[1].event_id
            expected = "sealed" if own_seal_intact else status
            assert integrity_column(assert_html(await api.get(f"/ui/events/{event_id}"))) == [expected], event_id


async def test_an_older_seal_altered_after_the_check_is_seen_by_the_next_whole_check(
    settings, signer, database_url, db, client
):
    """Seals older than the newest one checked are checked again, the whole chain, in the
    background every WHOLE_CHECK_EVERY_S (here: after every view); views keep the check they have
    meanwhile."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    try:
        store = AuditStore(pool, signer)
        for n in range(3):
            await store.insert(submitted([event(n, correlation_id=f"rem-{n}")]))
        await Checkpointer(pool, client, signer, settings).checkpoint_once()
        chain = CheckedChain(whole_every_s=0)
        assert not (await chain.current(pool, client, signer.verifier)).broken
        await chain.rechecked()
        await tamper(db, "UPDATE audit_seals SET row_count = 2 WHERE chain_index = 1")
        kept = await chain.current(pool, client, signer.verifier)  # nothing added: no seal checked now
        assert not kept.broken and chain.rechecking
        await chain.rechecked()
        rechecked = await chain.current(pool, client, signer.verifier)
        assert ("seal_changed", 1) in {(f.kind, f.seal) for f in rechecked.findings}
        await chain.rechecked()
    finally:
        await pool.close()


async def test_an_unknown_or_malformed_event_id_is_a_404_or_400_page(api):
    assert_html(await api.get(f"/ui/events/{uuid.uuid4()}"), 404)
    assert_html(await api.get("/ui/events/not-a-uuid"), 400)
    assert_html(await api.get("/ui/no/such/page"), 404)


async def test_a_correlation_is_a_timeline_oldest_first_nested_by_parent(api, store):
    start = datetime.now(UTC) - timedelta(minutes=5)
    root = event(0, correlation_id="rem-t", service_name="gateway", event_timestamp=start)
    child = event(1, correlation_id="rem-t", service_name="planner", parent_event_id=root.event_id,
                  event_timestamp=start + timedelta(seconds=2), event_outcome="failure")
    grandchild = event(2, correlation_id="rem-t", service_name="executor", parent_event_id=child.event_id,
                       event_timestamp=start + timedelta(seconds=2, milliseconds=500))
    other = event(3, correlation_id="rem-other")
    await store.insert(submitted([grandchild, other, child, root]))
    page = assert_html(await api.get("/ui/correlations/rem-t"))
    steps = [tr for tr in page.all("tr") if tr.get("id")]
    assert [s["id"] for s in steps] == [f"e-{e.event_id}" for e in (root, child, grandchild)]
    assert [s["class"].split()[1] for s in steps] == ["depth-0", "depth-1", "depth-2"]
    text = "".join(page.text)
    assert "+2.0 s" in text and "+500 ms" in text  # durations between steps
    assert {"gateway", "planner", "executor"} <= set(text.split())  # services involved
    circles = page.all("circle")
    assert len(circles) == 3 and "outcome-failure" in circles[1]["class"]
    assert float(circles[0]["cx"]) < float(circles[1]["cx"]) < float(circles[2]["cx"])
    assert len(page.all("details")) == 3  # event_data expandable, without JavaScript
    assert str(other.event_id) not in page_text(page)


def page_text(page: Page) -> str:
    return "".join(page.text) + " ".join(str(v) for _, attrs in page.tags for v in attrs.values())


async def test_a_correlation_id_with_a_slash_or_unknown(api, store):
    await store.insert(submitted([event(1, correlation_id="team/rem 1")]))
    page = assert_html(await api.get("/ui/"))
    [link] = [href for href in page.links() if href.startswith("/ui/correlations/")]
    assert link == "/ui/correlations/team%2Frem%201"
    assert len([tr for tr in assert_html(await api.get(link)).all("tr") if tr.get("id")]) == 1
    assert_html(await api.get("/ui/correlations/nothing-here"), 404)
    assert_html(await api.get("/ui/correlations/" + "x" * 300), 400)


async def test_a_correlation_of_more_than_a_page_continues_with_a_cursor(api, db):
    start = datetime.now(UTC) - timedelta(hours=1)
    for n in range(1003):
        await insert_audit_row(db, audit_row(start + timedelta(seconds=n), event_id=uuid.uuid4(), correlation_id="rem-big"))
    page = assert_html(await api.get("/ui/correlations/rem-big"))
    assert len([tr for tr in page.all("tr") if tr.get("id")]) == 1000
    [following] = [a["href"] for a in page.all("a") if a.get("rel") == "next"]
    rest = assert_html(await api.get("/ui/correlations/rem-big" + following))
    assert len([tr for tr in rest.all("tr") if tr.get("id")]) == 3


def _event(n: int, parent=None, seconds: float = 0) -> dict:
    return {"event_id": n, "parent_event_id": parent, "service_name": f"s{n % 2}", "event_outcome": "success",
            "event_timestamp": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds or n)}


def test_the_tree_places_every_event_once_whatever_the_parents_say():
    events = [_event(1), _event(2, parent=1), _event(3, parent=99), _event(4, parent=5), _event(5, parent=4),
              _event(6, parent=6), _event(7, parent=2)]
    order = [(e["event_id"], depth) for e, depth in tree_order(events)]
    assert sorted(n for n, _ in order) == [1, 2, 3, 4, 5, 6, 7]
    assert order[:3] == [(1, 0), (2, 1), (7, 2)]  # children follow their parent, deeper
    assert (3, 0) in order and (6, 0) in order  # a missing parent, or itself: a root
    assert {(4, 0), (5, 1)} <= set(order)  # a cycle: the oldest of it starts a tree


def test_a_thousand_deep_chain_is_no_recursion_and_positions_span_the_axis():
    chain = [_event(0)] + [_event(n, parent=n - 1) for n in range(1, 1000)]
    timeline = build_timeline(chain)
    assert [s.depth for s in timeline.steps] == list(range(1000))
    assert timeline.steps[0].position == 0 and timeline.steps[-1].position == 1
    assert timeline.steps[-1].drawn_depth == 12
    assert timeline.services == [("s0", 500), ("s1", 500)]


# --- safe by construction ------------------------------------------------------------------------


async def test_hostile_values_are_text_on_every_page(api, store):
    hostile = event(1, event_data=HOSTILE, resource_id="<script>alert('resource')</script>",
                    correlation_id='"><script>alert(4)</script>', actor_id="javascript:alert(5)",
                    event_type="<b>bold</b>", metadata={"x": "</pre><script>alert(6)</script>"})
    await store.insert(submitted([hostile]))
    pages = [await api.get("/ui/"), await api.get(f"/ui/events/{hostile.event_id}"),
             await api.get("/ui/correlations/" + '"><script>alert(4)<%2Fscript>'.replace('"', "%22"))]
    for response in pages:
        page = assert_html(response)
        assert all(script.get("src", "").startswith("/ui/static/") for script in page.all("script"))
        assert not [attrs for _, attrs in page.tags for name in attrs if name.startswith("on")]
        assert not [href for href in page.links() if href.lower().startswith("javascript:")]
        assert "<b>bold</b>" not in response.text and "&lt;b&gt;bold&lt;/b&gt;" in response.text
        assert "<script>alert" not in response.text
        assert not page.all("img") and not page.all("b")


async def test_huge_values_are_cut_in_lists_and_whole_on_the_event_page(api, store):
    huge = event(1, event_data={"blob": "x" * 200_000}, correlation_id="rem-huge")
    await store.insert(submitted([huge]))
    listing = await api.get("/ui/")
    assert len(listing.text) < 50_000 and "more characters" in listing.text
    timeline = await api.get("/ui/correlations/rem-huge")
    assert len(timeline.text) < 50_000 and "more characters" in timeline.text
    whole = await api.get(f"/ui/events/{huge.event_id}")
    assert "x" * 200_000 in whole.text


async def test_every_viewer_response_has_the_security_headers_and_no_inline_script(api, store):
    await store.insert(submitted([event(1, correlation_id="rem-1")]))
    first = (await api.get("/ui/")).text
    event_id = re.search(r'id="e-([0-9a-f-]{36})"', first)[1]
    for path in ["/ui/", f"/ui/events/{event_id}", "/ui/correlations/rem-1", "/ui/dlq", "/ui/login",
                 "/ui/missing", "/ui/static/viewer.js", "/ui/?limit=0"]:
        response = await api.get(path, follow_redirects=False)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        if response.headers.get("content-type", "").startswith("text/html"):
            page = Page(response.text)
            assert all(script.get("src") for script in page.all("script")), path
            assert not [attrs for _, attrs in page.tags if "style" in attrs], path
            assert not page.all("style"), path
            assert response.headers["cache-control"] == "no-store"


# --- login ---------------------------------------------------------------------------------------


@pytest.fixture
async def guarded(settings):
    async with client_for(settings.model_copy(update={"api_tokens": "viewer-token-1,other-token"})) as client:
        yield client


async def test_with_tokens_a_page_asks_for_login_and_a_token_typed_once_opens_them(guarded):
    response = await guarded.get("/ui/correlations/rem-1?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fcorrelations%2Frem-1%3Fx%3D1"
    assert (await guarded.get("/ui/tail")).status_code == 401
    login = assert_html(await guarded.get("/ui/login?next=/ui/dlq"))
    assert [i["value"] for i in login.all("input") if i.get("name") == "next"] == ["/ui/dlq"]

    refused = await guarded.post("/ui/login", data={"token": "wrong", "next": "/ui/dlq"}, follow_redirects=False)
    assert_html(refused, 401)
    assert "set-cookie" not in refused.headers

    accepted = await guarded.post("/ui/login", data={"token": "viewer-token-1", "next": "/ui/dlq"},
                                  follow_redirects=False)
    assert accepted.status_code == 303 and accepted.headers["location"] == "/ui/dlq"
    cookie = accepted.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "viewer-token-1" not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
    assert_html(await guarded.get("/ui/dlq"))
    # The cookie opens the viewer, not the API: that still wants the bearer token.
    assert (await guarded.get("/api/v1/audit-events")).status_code == 401
    assert (await guarded.get("/ui/login", follow_redirects=False)).headers["location"] == "/ui/"

    out = await guarded.post("/ui/logout", follow_redirects=False)
    assert out.status_code == 303 and 'Max-Age=0' in out.headers["set-cookie"]
    guarded.cookies.clear()
    assert (await guarded.get("/ui/", follow_redirects=False)).status_code == 303


async def test_login_sends_nowhere_but_the_viewer_and_refuses_other_sites(guarded):
    for target in ["https://evil.example/", "//evil.example/ui/", "/api/v1/audit-events", "/ui\\..\\x"]:
        response = await guarded.post("/ui/login", data={"token": "other-token", "next": target},
                                      follow_redirects=False)
        assert response.headers["location"] == "/ui/", target
    cross = await guarded.post("/ui/login", data={"token": "other-token"}, headers={"sec-fetch-site": "cross-site"},
                               follow_redirects=False)
    assert cross.status_code == 403


async def test_a_link_from_another_site_is_reopened_from_this_one(guarded):
    # The browser withholds a SameSite=Strict cookie on a navigation from another site.
    response = await guarded.get("/ui/correlations/rem-1", headers={"sec-fetch-site": "cross-site"},
                                 follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["refresh"] == "0; url=/ui/login?next=%2Fui%2Fcorrelations%2Frem-1"


async def test_without_tokens_there_is_no_login(api):
    response = await api.get("/ui/login", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    assert (await api.get("/ui/", follow_redirects=False)).status_code == 200


# --- dead letters, playbooks -----------------------------------------------------------------------


async def test_dead_letters_are_shown_by_reason_with_their_errors(api, client):
    for n in range(3):
        await client.xadd(DLQ, {"event_type": f"bad.{n}", "service_name": "gateway", "correlation_id": "rem-d",
                                "dlq_reason": "validation", "dlq_error": f"event_outcome: not one of the outcomes {n}",
                                "source_stream": "audit_events", "source_id": f"1-{n}", "delivery_count": "1",
                                "failed_at": "2026-01-01T00:00:00+00:00", "event_data": HOSTILE["html"]})
    await client.xadd(DLQ, {"dlq_reason": "max_deliveries", "dlq_error": "delivered 6 times", "source_id": "2-0"})
    page = assert_html(await api.get("/ui/dlq"))
    text = "".join(page.text)
    assert "4 in the dead-letter stream" in " ".join(text.split())
    assert text.index("validation") < text.index("max_deliveries")  # the largest group first
    assert "event_outcome: not one of the outcomes 2" in text and "delivered 6 times" in text
    assert "/ui/correlations/rem-d" in page.links()
    assert "<script>alert" not in (await api.get("/ui/dlq")).text
    only = assert_html(await api.get("/ui/dlq", params={"reason": "max_deliveries"}))
    assert "validation" not in "".join(only.text).split("reason")[0] and "outcomes 2" not in "".join(only.text)
    assert_html(await api.get("/ui/dlq", params={"replay": "all"}), 400)


async def test_the_playbook_page_lists_the_catalog_by_playbook_with_every_version(api, catalog):
    page = assert_html(await api.get("/ui/playbooks"))
    text = "".join(page.text)
    assert "oom-recovery" in text
    versions = re.findall(r"v1\.(?:0|9|10)\.0", text)
    assert {"v1.0.0", "v1.9.0", "v1.10.0"} <= set(versions)
    assert text.index("v1.10.0") < text.index("v1.9.0") < text.index("v1.0.0", text.index("oom-recovery"))
    by_label = assert_html(await api.get("/ui/playbooks", params={"labels": "environment=staging"}))
    assert "crashloop-config" in "".join(by_label.text) and "oom-recovery" not in "".join(by_label.text)


async def test_a_search_ranks_like_the_api_with_label_filters_and_versions(api, catalog):
    params = {"query": "pod killed out of memory exit code 137", "labels": "environment=production"}
    response = await api.get("/ui/playbooks", params=params)
    assert_html(response)
    ranked = re.findall(r'<li class="result">\s*<h3><code>([^<]+)</code>', response.text)
    api_answer = (await api.get("/api/v1/playbooks/search", params={"query": params["query"],
                                                                   "label.environment": "production"})).json()
    assert ranked == [hit["playbook_id"] for hit in api_answer["playbooks"]]
    assert ranked[0] == "oom-recovery"
    assert "v1.10.0" in response.text and "v1.0.0" in response.text  # its versions
    assert_html(await api.get("/ui/playbooks", params={"query": "x", "labels": "environment"}), 400)
    assert_html(await api.get("/ui/playbooks", params={"query": "x", "max_results": "0"}), 400)


def test_an_explanation_is_shown_whatever_shape_the_search_gives_it():
    class Hit:
        def __init__(self, why):
            self.why = why

    assert explanation(object()) is None  # hits without `why` (before hybrid search) show none
    assert explanation(Hit({"semantic": 0.71, "labels": ["environment"]})) == [
        ("semantic", "0.71"), ("labels", '["environment"]')]
    assert explanation(Hit("matched the signal_type label")) == [("", "matched the signal_type label")]


# --- the live tail, over a real HTTP connection ----------------------------------------------------


@pytest.fixture
async def served(settings):
    """The app on a real uvicorn (a stream needs one: an in-memory transport buffers it)."""
    started = []

    async def start(**overrides) -> str:
        port = free_port()
        app = create_app(settings.model_copy(update={"ui_tail_poll_interval_s": 0.1, **overrides}))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
        task = asyncio.create_task(server.serve())
        started.append((server, task))
        while not server.started:
            await asyncio.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in started:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


class EventStream:
    """The messages of a server-sent event stream, read as they come (heartbeats left out)."""

    def __init__(self, response: httpx.Response):
        self.lines = response.aiter_lines()

    async def next(self, wanted: int, timeout: float = 10) -> list[tuple[str, str, str]]:
        """(event, id, data) of the next `wanted` messages."""
        found = []

        async def read():
            fields = {"event": "message", "id": "", "data": []}
            async for line in self.lines:
                if not line:
                    if fields["event"] != "heartbeat" and (fields["data"] or fields["event"] != "message"):
                        found.append((fields["event"], fields["id"], "\n".join(fields["data"])))
                        if len(found) >= wanted:
                            return
                    fields = {"event": "message", "id": "", "data": []}
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    fields["data"].append(value)
                elif name in ("event", "id"):
                    fields[name] = value

        await asyncio.wait_for(read(), timeout)
        return found


async def test_the_tail_sends_rows_committed_after_the_page_even_with_an_older_timestamp(served, api, store, db):
    base = await served()
    await store.insert(submitted([event(1, service_name="tailed")]))
    page = assert_html(await api.get("/ui/", params={"service_name": "tailed"}))
    [tail] = [p for p in page.all("p") if p.get("id") == "tail"]
    late = audit_row(datetime.now(UTC) - timedelta(minutes=20), event_id=uuid.uuid4(), service_name="tailed")
    unrelated = audit_row(datetime.now(UTC), event_id=uuid.uuid4(), service_name="other")
    await insert_audit_row(db, late)  # committed after the page, dated before what it shows
    await insert_audit_row(db, unrelated)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http, http.stream("GET", tail["data-tail-url"]) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        (ready, mark, _), (kind, next_mark, rows) = await EventStream(response).next(2)
    assert ready == "ready" and kind == "events"
    assert f'id="e-{late["event_id"]}"' in rows and str(unrelated["event_id"]) not in rows
    assert next_mark and next_mark != mark
    # Reconnecting from the last mark sends nothing again; a new row comes.
    newer = audit_row(datetime.now(UTC), event_id=uuid.uuid4(), service_name="tailed")
    await insert_audit_row(db, newer)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http, http.stream(
            "GET", "/ui/tail?service_name=tailed", headers={"Last-Event-ID": next_mark}) as response:
        (_, _, _), (_, _, rows) = await EventStream(response).next(2)
    assert str(newer["event_id"]) in rows and str(late["event_id"]) not in rows


async def test_a_flood_is_sent_in_bounded_messages_without_a_gap(served, db, database_url):
    base = await served()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http, http.stream("GET", "/ui/tail") as response:
        stream = EventStream(response)
        [(ready, _, _)] = await stream.next(1)
        conn = await asyncpg.connect(database_url)
        try:
            now = datetime.now(UTC)
            rows = [audit_row(now - timedelta(seconds=n), event_id=uuid.uuid4()) for n in range(1250)]
            columns = list(rows[0])
            await conn.copy_records_to_table("audit_events", records=[tuple(r.values()) for r in rows], columns=columns)
        finally:
            await conn.close()
        messages = await stream.next(13, timeout=20)
    sent = [m for kind, _, data in messages for m in re.findall(r'id="e-([0-9a-f-]{36})"', data)]
    assert sorted(sent) == sorted(str(r["event_id"]) for r in rows)
    assert max(len(re.findall(r"<tr ", data)) for _, _, data in messages) == 100


async def test_tails_are_limited_per_process_and_a_closed_one_frees_its_place(served):
    base = await served(ui_tail_max_clients=1)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with http.stream("GET", "/ui/tail") as first:
            assert (await EventStream(first).next(1))[0][0] == "ready"
            async with http.stream("GET", "/ui/tail") as second:
                [(kind, _, data)] = await EventStream(second).next(1)
                assert kind == "busy" and "1 live tails are open" in data
        await asyncio.sleep(0.5)  # the server notices the closed stream
        async with http.stream("GET", "/ui/tail") as third:
            assert (await EventStream(third).next(1))[0][0] == "ready"


@pytest.mark.faults
async def test_the_tail_says_when_postgres_is_gone_and_goes_on_without_a_gap(served, db, database_url, postgres_server):
    base = await served()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http, http.stream("GET", "/ui/tail") as response:
        stream = EventStream(response)
        [(ready, _, _)] = await stream.next(1)
        before = audit_row(datetime.now(UTC), event_id=uuid.uuid4())
        await insert_audit_row(db, before)
        [(_, _, rows)] = await stream.next(1)
        assert str(before["event_id"]) in rows
        postgres_server.stop()
        try:
            [(trouble, _, message)] = await stream.next(1, timeout=30)
            assert trouble == "trouble" and "Postgres" in message
        finally:
            postgres_server.start()
        conn = await asyncpg.connect(database_url)
        try:
            after = audit_row(datetime.now(UTC) - timedelta(minutes=5), event_id=uuid.uuid4())
            await insert_audit_row(conn, after)
        finally:
            await conn.close()
        kinds = []
        while not kinds or kinds[-1] != "events":
            [(kind, _, data)] = await stream.next(1, timeout=30)
            kinds.append(kind)
    assert [kind for kind in kinds if kind != "trouble"] == ["ready", "events"]  # live again, then the row
    assert str(after["event_id"]) in data


async def test_the_tail_refuses_what_the_list_refuses(served):
    base = await served()
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for params in [{"limit": "5"}, {"event_outcome": "great"}, {"mark": "1:2;drop"}, {"since": "soon"}]:
            response = await http.get("/ui/tail", params=params)
            assert response.status_code == 400, params


# --- served by the commands, and packaged -----------------------------------------------------------


def test_datastorage_run_serves_the_viewer(tmp_path, database_url, redis_url):
    port = free_port()
    process = start_run({"DATASTORAGE_DATA_DIR": str(tmp_path), "DATASTORAGE_DATABASE_URL": database_url,
                         "DATASTORAGE_REDIS_URL": redis_url, "DATASTORAGE_HTTP_PORT": str(port),
                         "DATASTORAGE_METRICS_PORT": "0"})
    try:
        wait_for_event(process, "service_running")
        for _ in range(100):
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/ui/")
                break
            except httpx.TransportError:
                asyncio.run(asyncio.sleep(0.1))
        assert response.status_code == 200 and "Audit events" in response.text
        assert httpx.get(f"http://127.0.0.1:{port}/ui/static/viewer.css").status_code == 200
        # A live tail left open does not hold the shutdown (uvicorn waits for open connections).
        tail = socket.create_connection(("127.0.0.1", port))
        tail.sendall(b"GET /ui/tail HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        tail.settimeout(10)
        received = b""
        while b"event: ready" not in received:
            received += tail.recv(4096)
    finally:
        started = time.monotonic()
        assert stop_with_ctrl_c(process) == 0
    assert time.monotonic() - started < 20
    tail.close()


def test_a_wheel_carries_the_templates_and_static_files(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    for folder in ("app", "consumers"):
        shutil.copytree(PROJECT_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("datastorage-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    ui = PROJECT_ROOT / "app" / "ui"
    expected = {str(p.relative_to(PROJECT_ROOT)) for folder in ("templates", "static") for p in (ui / folder).iterdir()}
    assert expected and expected <= names
