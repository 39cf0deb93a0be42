"""The README's examples work as written."""

import re
import subprocess
import sys

import redis.asyncio as aioredis

from app.audit.wire import decode_entry
from app.core.settings import PROJECT_ROOT
from tests.helpers import STREAM

README = (PROJECT_ROOT / "README.md").read_text()


def example(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n```python\n(.*?)```\n<!-- /{name} -->", README, re.S)
    assert match, f"the README has no {name} block"
    return match[1]


async def test_the_producer_example_queues_an_event_as_written(redis_url):
    code = example("producer-example")
    assert "redis://127.0.0.1:6380/0" in code  # the embedded Redis of `datastorage run`
    result = subprocess.run(
        [sys.executable, "-c", code.replace("redis://127.0.0.1:6380/0", redis_url)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    client = aioredis.from_url(redis_url)
    [(entry_id, fields)] = await client.xrange(STREAM)
    await client.aclose()
    event = decode_entry(STREAM, entry_id.decode(), fields)
    assert (event.event_type, event.correlation_id) == ("notification.sent", "rem-42")
    assert f"event {event.event_id} queued as {entry_id.decode()}" in result.stdout


def test_the_producer_module_exports_exactly_its_public_api():
    import app.producer as producer

    assert set(producer.__all__) == {name for name in dir(producer) if name in producer.__all__}
    for name in ("AuditProducer", "AuditEvent", "new_audit_event", "notification_audit_event"):
        assert name in producer.__all__
