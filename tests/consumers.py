"""Real `datastorage consume` processes for the tests, and waiting for what they should do."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATASTORAGE = str(Path(sys.executable).parent / "datastorage")

# Fast clocks so that claiming, trimming and retries happen within a test's patience.
TEST_CONSUMER_SETTINGS = {
    "DATASTORAGE_BATCH_WAIT_MS": "50",
    "DATASTORAGE_CLAIM_IDLE_MS": "2000",
    "DATASTORAGE_CLAIM_INTERVAL_S": "0.5",
    "DATASTORAGE_HYGIENE_INTERVAL_S": "0.5",
    "DATASTORAGE_RETRY_INITIAL_S": "0.2",
    "DATASTORAGE_RETRY_MAX_S": "1",
    "DATASTORAGE_METRICS_PORT": "0",
    "DATASTORAGE_LOG_FORMAT": "json",
}


class ConsumerProcess:
    def __init__(self, database_url: str, redis_url: str, name: str, log_dir: Path, **settings: str):
        self.name = name
        self.log_path = log_dir / f"consumer-{name}-{time.monotonic_ns()}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATASTORAGE_")},
            **TEST_CONSUMER_SETTINGS,
            "DATASTORAGE_DATABASE_URL": database_url,
            "DATASTORAGE_REDIS_URL": redis_url,
            "DATASTORAGE_CONSUMER_NAME": name,
            **{f"DATASTORAGE_{key.upper()}": str(value) for key, value in settings.items()},
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> "ConsumerProcess":
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [DATASTORAGE, "consume"], env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        return self

    async def wait_started(self, timeout: float = 30) -> None:
        await wait_for(lambda: "consumer_starting" in self.log() or self.process.poll() is not None,
                       timeout, f"consumer {self.name} to start")
        assert self.process.poll() is None, self.log()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 40) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


async def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Polls `condition` (a function, sync or async) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
