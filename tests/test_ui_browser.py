"""The viewer in a real browser: Debian's Chromium (/usr/bin/chromium, installed by
ops/dev/setup.sh), driven by Playwright for Python, against a real `datastorage serve` and a real
consumer process. Playwright downloads nothing here: it is pointed at that executable.

Screenshots go to DATASTORAGE_SCREENSHOT_DIR (a temporary folder unless set); the README shows two.
"""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright, expect

from app.audit.store import AuditStore
from tests.helpers import ServedApi, event, publish, submitted

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = {
    "html": "<script>alert('event_data')</script>",
    "url": "javascript:alert(1)",
    "img": '<img src=x onerror="alert(2)">',
}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: run ops/dev/setup.sh as root, or apt-get install chromium",
)


@pytest.fixture(scope="module")
async def playwright():
    driver = await async_playwright().start()
    yield driver
    await driver.stop()


@pytest.fixture
async def browser(playwright, tmp_path):
    """Opens Chromium contexts, each with a fresh profile folder of its own."""
    contexts: list[BrowserContext] = []

    async def open_context(*, javascript: bool = True, timezone_id: str = "UTC") -> BrowserContext:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{len(contexts)}"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            java_script_enabled=javascript,
            timezone_id=timezone_id,
            viewport={"width": 1360, "height": 860},
        )
        contexts.append(context)
        return context

    yield open_context
    for context in contexts:
        await context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DATASTORAGE_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def serve(database_url, redis_url, tmp_path):
    started = []

    def start(**settings):
        served = ServedApi(database_url, redis_url, tmp_path, **settings).start()
        started.append(served)
        return served.base_url

    yield start
    for served in started:
        served.stop()


@pytest.fixture
async def store(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    yield AuditStore(pool)
    await pool.close()


def watched(page: Page) -> list[str]:
    """What went wrong in the page: script errors, console errors (CSP refusals among them), and
    any dialog (an injected alert() would open one)."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("response", lambda response: problems.append(f"{response.status}: {response.url}")
            if response.status >= 400 else None)

    async def dismiss(dialog):
        problems.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", dismiss)
    return problems


async def save(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def remediation(start: datetime) -> list:
    """A remediation as services report it: a signal, an analysis, a workflow with steps, a notice."""
    signal = event(0, correlation_id="rem-42", service_name="gateway", event_type="signal.received",
                   event_category="gateway", resource_type="alert", resource_id="KubePodOOMKilled",
                   event_timestamp=start, event_data={"namespace": "shop", "pod": "cart-7d9f"})
    analysis = event(1, correlation_id="rem-42", service_name="ai-analysis", event_type="analysis.completed",
                     event_category="analysis", parent_event_id=signal.event_id, resource_type="incident",
                     resource_id="inc-42", event_timestamp=start + timedelta(seconds=3.2),
                     event_data={"playbook": "oom-recovery", "confidence": 0.82})
    workflow = event(2, correlation_id="rem-42", service_name="workflow", event_type="workflow.started",
                     event_category="workflow", event_outcome="pending", parent_event_id=analysis.event_id,
                     resource_type="workflow", resource_id="wf-42", event_timestamp=start + timedelta(seconds=4))
    steps = [event(3 + n, correlation_id="rem-42", service_name="executor", event_type=f"step.{name}",
                   event_category="workflow", event_outcome=outcome, parent_event_id=workflow.event_id,
                   resource_type="deployment", resource_id="cart", event_timestamp=start + timedelta(seconds=5 + 7 * n),
                   event_data={"step": n + 1, "action": name})
             for n, (name, outcome) in enumerate([("raise-limit", "failure"), ("raise-limit", "success"),
                                                  ("verify-rollout", "success")])]
    notice = event(9, correlation_id="rem-42", service_name="notification", event_type="notification.sent",
                   event_category="notification", parent_event_id=workflow.event_id, resource_type="notification",
                   resource_id="notif-42", event_timestamp=start + timedelta(seconds=27))
    return [signal, analysis, workflow, *steps, notice]


async def test_each_page_loads_filters_and_a_correlation_is_followed(serve, store, browser, screenshots):
    start = datetime.now(UTC) - timedelta(minutes=3)
    steps = remediation(start)
    noise = [event(20 + n, correlation_id=f"rem-{50 + n}", event_timestamp=start - timedelta(minutes=n + 1))
             for n in range(6)]
    await store.insert(submitted(steps + noise))
    base = serve()
    page = await (await browser()).new_page()
    problems = watched(page)

    await page.goto(f"{base}/ui/")
    await expect(page.locator("#events tbody tr")).to_have_count(len(steps) + len(noise))
    await expect(page.locator("#tail-state")).to_have_text("live")
    await save(page, screenshots, "events")

    await page.fill("input[name=service_name]", "executor")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#events tbody tr")).to_have_count(3)
    assert "service_name=executor" in page.url

    await page.click(f"#e-{steps[3].event_id} a.correlation")
    await page.wait_for_url("**/ui/correlations/rem-42")
    rows = page.locator("#timeline tbody tr")
    await expect(rows).to_have_count(len(steps))
    assert await rows.evaluate_all("rows => rows.map(r => r.id)") == [
        f"e-{e.event_id}" for e in steps[:3] + steps[3:6] + steps[6:]]
    assert await page.locator("tr.depth-3").count() == 4  # the steps and the notice, below the workflow
    await expect(page.locator("svg.axis circle")).to_have_count(len(steps))
    await expect(page.locator("svg.axis circle.outcome-failure")).to_have_count(1)
    details = page.locator(f"#e-{steps[4].event_id} details")
    await details.locator("summary").click()
    await expect(details.locator("pre")).to_contain_text('"action": "raise-limit"')
    await save(page, screenshots, "correlation")

    await page.click(f"#e-{steps[1].event_id} a.event")
    await expect(page.locator("h1")).to_contain_text("analysis.completed")
    await expect(page.locator("pre.json").first).to_contain_text('"playbook": "oom-recovery"')

    await page.goto(f"{base}/ui/dlq")
    await expect(page.locator("h1")).to_have_text("Dead letters")
    assert problems == []


async def test_a_newly_xadded_event_appears_in_the_live_tail_within_2_s(serve, consumers, client, browser, screenshots):
    await consumers()
    base = serve()
    await publish(client, [event(1, service_name="tail-test")])
    page = await (await browser()).new_page()
    problems = watched(page)
    await page.goto(f"{base}/ui/?service_name=tail-test")
    await expect(page.locator("#events tbody tr")).to_have_count(1, timeout=10_000)  # once consumed
    await expect(page.locator("#tail-state")).to_have_text("live")

    fresh = event(2, service_name="tail-test", event_type="workflow.completed")
    sent = time.monotonic()
    await publish(client, [fresh])
    await page.wait_for_selector(f"#e-{fresh.event_id}", timeout=2000)
    seconds = time.monotonic() - sent
    assert seconds < 2, seconds

    # Committed late with an older timestamp than the rows shown: it still arrives, marked late.
    late = event(3, service_name="tail-test", event_timestamp=datetime.now(UTC) - timedelta(minutes=10))
    ignored = event(4, service_name="someone-else")
    await publish(client, [late, ignored])
    await expect(page.locator(f"#e-{late.event_id}")).to_have_class("outcome-success arrived late", timeout=2000)
    assert await page.locator(f"#e-{ignored.event_id}").count() == 0
    await expect(page.locator("#events tbody tr").first).to_have_id(f"e-{late.event_id}")
    await save(page, screenshots, "live-tail")

    await page.click("#tail-toggle")
    await expect(page.locator("#tail-state")).to_have_text("paused")
    paused = event(5, service_name="tail-test")
    await publish(client, [paused])
    await page.wait_for_timeout(1500)
    assert await page.locator(f"#e-{paused.event_id}").count() == 0
    await page.click("#tail-toggle")  # resumes from its last mark: nothing is missed
    await page.wait_for_selector(f"#e-{paused.event_id}", timeout=3000)
    assert problems == []


async def test_hostile_values_render_as_text(serve, store, browser):
    hostile = event(1, event_data=HOSTILE, correlation_id="rem-<script>alert(3)</script>",
                    resource_id='"><img src=x onerror=alert(4)>', event_type="<b>bold</b>",
                    actor_id="javascript:alert(5)", event_timestamp=datetime.now(UTC) - timedelta(seconds=5))
    huge = event(2, event_data={"blob": "y" * 200_000}, correlation_id="rem-huge")
    await store.insert(submitted([hostile, huge]))
    base = serve()
    page = await (await browser()).new_page()
    problems = watched(page)

    await page.goto(f"{base}/ui/")
    row = page.locator(f"#e-{hostile.event_id}")
    await expect(row).to_contain_text("<b>bold</b>")
    await expect(row).to_contain_text('"><img src=x onerror=alert(4)>')
    await expect(row).to_contain_text("<script>alert('event_data')</script>")
    await row.locator("a.correlation").click()
    await expect(page.locator("h1")).to_contain_text("rem-<script>alert(3)</script>")
    await page.locator("details summary").first.click()
    await expect(page.locator("details pre").first).to_contain_text("javascript:alert(1)")
    await page.goto(f"{base}/ui/events/{hostile.event_id}")
    await expect(page.locator("dl.fields")).to_contain_text("javascript:alert(5)")
    for url in [f"{base}/ui/", f"{base}/ui/events/{hostile.event_id}", page.url]:
        await page.goto(url)
        assert await page.locator("main img, main b, main script").count() == 0
        assert await page.locator("a[href^='javascript:']").count() == 0
    await page.goto(f"{base}/ui/correlations/rem-huge")
    await expect(page.locator("#timeline tbody tr")).to_have_count(1)
    assert problems == []


async def test_the_list_and_the_timeline_work_without_javascript(serve, store, browser):
    start = datetime.now(UTC) - timedelta(minutes=3)
    steps = remediation(start)
    await store.insert(submitted(steps + [event(30 + n, event_timestamp=start - timedelta(seconds=n)) for n in range(4)]))
    base = serve()
    page = await (await browser(javascript=False)).new_page()
    await page.goto(f"{base}/ui/?limit=5")
    await expect(page.locator("#events tbody tr")).to_have_count(5)
    await expect(page.locator("#tail-state")).to_contain_text("needs JavaScript")
    assert (await page.locator("#events time").first.inner_text()).endswith(" UTC")
    await page.click("a[rel=next]")
    await expect(page.locator("#events tbody tr")).to_have_count(5)
    await page.goto(f"{base}/ui/")
    await page.select_option("select[name=event_outcome]", "failure")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#events tbody tr")).to_have_count(1)
    await page.click("a.correlation")
    await expect(page.locator("#timeline tbody tr")).to_have_count(len(steps))
    details = page.locator(f"#e-{steps[5].event_id} details")
    await details.locator("summary").click()
    await expect(details.locator("pre")).to_contain_text('"action": "verify-rollout"')


async def test_times_are_shown_in_the_viewers_zone_with_utc_on_hover(serve, store, browser):
    at = datetime(2026, 1, 15, 9, 30, 15, 250_000, tzinfo=UTC)
    await store.insert(submitted([event(1, event_timestamp=at)]))
    base = serve()
    page = await (await browser(timezone_id="Asia/Kolkata")).new_page()
    await page.goto(f"{base}/ui/?since=2026-01-01T00:00:00Z")
    time_element = page.locator("#events time").first
    await expect(time_element).to_have_text("2026-01-15 15:00:15.250 GMT+5:30")  # 09:30 UTC, in India
    assert await time_element.get_attribute("title") == "2026-01-15 09:30:15.250 UTC"


async def test_playbooks_are_searched_with_label_filters_and_show_their_versions(serve, catalog, browser):
    base = serve()
    page = await (await browser()).new_page()
    problems = watched(page)
    await page.goto(f"{base}/ui/playbooks")
    await expect(page.locator("section.playbook")).to_have_count(catalog.playbooks)
    await page.fill("input[name=query]", "container killed for exceeding its memory limit, exit code 137")
    await page.fill("input[name=labels]", "environment=production")
    await page.click("#search button[type=submit]")
    first = page.locator("li.result").first
    await expect(first.locator("h3 code")).to_have_text("oom-recovery", timeout=30_000)
    await first.locator("details summary").click()
    await expect(first.locator("table.versions tbody tr")).to_have_count(3)
    assert problems == []


async def test_a_token_typed_once_opens_every_page_and_the_live_tail(serve, store, browser, database_url):
    await store.insert(submitted([event(1, correlation_id="rem-login")]))
    base = serve(api_tokens="ui-secret-1")
    context = await browser()
    page = await context.new_page()
    problems = watched(page)
    await page.goto(f"{base}/ui/correlations/rem-login")
    assert "/ui/login?next=" in page.url
    await page.fill("input[name=token]", "wrong")
    await page.click("form.login button")
    await expect(page.locator(".error")).to_contain_text("not one the service accepts")
    await page.fill("input[name=token]", "ui-secret-1")
    await page.click("form.login button")
    await page.wait_for_url("**/ui/correlations/rem-login")
    [cookie] = await context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != "ui-secret-1"
    assert await page.evaluate("document.cookie") == ""  # no script reads it
    await page.goto(f"{base}/ui/")
    await expect(page.locator("#tail-state")).to_have_text("live")
    # A link from another site (localhost is another site than 127.0.0.1) still lands on the page.
    other_site = base.replace("127.0.0.1", "localhost")
    await page.goto(f"{other_site}/ui/login")
    await page.evaluate(f"location.href = {f'{base}/ui/correlations/rem-login'!r}")
    await page.wait_for_url(f"{base}/ui/correlations/rem-login")
    await expect(page.locator("#timeline tbody tr")).to_have_count(1)
    assert [p for p in problems if "401" not in p] == []  # the wrong token's answer aside
