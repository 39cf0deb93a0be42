"""`datastorage run`: the whole service in one process tree, on embedded servers by default.

With no `DATASTORAGE_DATABASE_URL` it starts the embedded Postgres (data in
`<data_dir>/pgdata`), with no `DATASTORAGE_REDIS_URL` a private redis-server (AOF on, data in
`<data_dir>/redis`); it applies the migrations, then runs the service's parts (the audit consumer,
the HTTP API, partition upkeep, the daily retention run, /metrics) in this process until SIGINT or
SIGTERM, and stops what it started: the consumer first (its batch in hand is finished or left
pending), the servers last.
"""

import asyncio
import contextlib
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from app.api.app import create_app
from app.api.server import InProcessServer, uvicorn_config
from app.audit import retention
from app.audit.event import EventOutcome
from app.audit.integrity.keys import PRIVATE_KEY_FILE, Signer, generate_key_pair, load_signer
from app.audit.partitions import ensure_upcoming_partitions
from app.audit.self_audit import Action, Actor, operator_event
from app.catalog.importer import SAMPLE_CATALOG, import_sample_catalog
from app.cli.self_audit import write_event
from app.core.db import connect, create_database
from app.core.logs import mask_url
from app.core.metrics import start_metrics_server
from app.core.migrations import migrate_database
from app.core.settings import Settings
from app.local.embedded import EmbeddedPostgres, LocalRedis, ServerError
from app.local.state import read_state, remove_state, this_process, write_state
from app.ui.tail import end_live_tails
from consumers.audit import AuditConsumer

log = structlog.get_logger(__name__)

EMBEDDED_DATABASE = "datastorage"
PARTITION_CHECK_INTERVAL_S = 3600
# Retention runs daily: 24 h after the newest successful run (whoever made it: this process, a
# CronJob, an operator), not before RETENTION_FIRST_DELAY_S after start, and a failed run is
# tried again after RETENTION_RETRY_S.
RETENTION_INTERVAL = timedelta(hours=24)
RETENTION_FIRST_DELAY_S = 300.0
RETENTION_RETRY_S = 3600.0


def embedded(settings: Settings) -> bool:
    """Whether `run` starts a server of its own (then it publishes its state file)."""
    return settings.database_url is None or settings.redis_url is None


def start_embedded_servers(settings: Settings, stack: contextlib.ExitStack) -> Settings:
    """Starts what the settings leave unset; returns settings naming both URLs."""
    database_url, redis_url = settings.database_url, settings.redis_url
    if embedded(settings):
        running = read_state(settings.data_dir)
        if running is not None and running.alive():
            raise ServerError(
                f"a `datastorage run` (pid {running.pid}) is already up on {settings.data_dir}; "
                "use it, stop it, or give this one another DATASTORAGE_DATA_DIR"
            )
    if database_url is None:
        postgres = EmbeddedPostgres(settings.data_dir / "pgdata")
        postgres.start()
        stack.callback(postgres.close)
        database_url = asyncio.run(create_database(postgres.url(), EMBEDDED_DATABASE))
    if redis_url is None:
        redis_server = LocalRedis(settings.data_dir / "redis", settings.embedded_redis_port, appendonly=True)
        redis_server.start()
        stack.callback(redis_server.stop)
        redis_url = redis_server.url
    update: dict = {"database_url": database_url, "redis_url": redis_url}
    if settings.audit_signing_key_file is None and settings.database_url is None and settings.redis_url is None:
        update["audit_signing_key_file"] = embedded_signing_key(settings.data_dir / "keys")
    return settings.model_copy(update=update)


def embedded_signing_key(directory: Path) -> Path:
    """On embedded defaults the audit trail is sealed too: a key pair in the data folder, made
    once (docs/INTEGRITY.md; a real deployment keeps its key outside the machine's data)."""
    if not (directory / PRIVATE_KEY_FILE).exists():
        private_path, public_path = generate_key_pair(directory)
        log.info("audit_signing_key_created", private_key=str(private_path), public_key=str(public_path))
    return directory / PRIVATE_KEY_FILE


async def keep_partitions_ahead(settings: Settings, stop: asyncio.Event) -> None:
    """Creates next months' partitions as months pass; a failed check is retried next time."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), PARTITION_CHECK_INTERVAL_S)
        if stop.is_set():
            return
        try:
            conn = await connect(settings.require_database_url())
            try:
                await ensure_upcoming_partitions(conn, settings.partition_months_ahead)
            finally:
                await conn.close()
        except Exception:
            log.exception("partition_check_failed")


async def keep_applying_retention(settings: Settings, signer: Signer | None, stop: asyncio.Event) -> None:
    """The retention policy, applied daily inside `datastorage run` (app/audit/retention.py)."""
    soonest = RETENTION_FIRST_DELAY_S
    while not stop.is_set():
        delay = soonest
        with contextlib.suppress(Exception):  # Postgres away: try after the shortest wait
            conn = await connect(settings.require_database_url())
            try:
                last = (await retention.retention_figures(conn)).last_success
            finally:
                await conn.close()
            if last is not None:
                delay = max(soonest, (last + RETENTION_INTERVAL - datetime.now(UTC)).total_seconds())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        try:
            await apply_retention(settings, signer)
            soonest = RETENTION_FIRST_DELAY_S
        except Exception:
            log.exception("retention_run_failed")
            soonest = RETENTION_RETRY_S


async def apply_retention(settings: Settings, signer: Signer | None) -> retention.RetentionPlan:
    """One run of the policy, without prompts, recorded and self-audited (actor: this process's
    operating-system user, as a system actor)."""
    policy = retention.RetentionPolicy.from_settings(settings)
    if short := policy.below_floor():
        raise retention.RetentionRefused(
            f"{', '.join(short)} is below DATASTORAGE_RETENTION_FLOOR_DAYS: "
            "run `datastorage retention apply --allow-shorter` by hand if that is meant"
        )
    actor = Actor(Actor.of_cli().name, kind="system", via="schedule")
    policy_data = {"retention_days": policy.default_days, "category_days": dict(policy.category_days)}

    async def record(outcome: EventOutcome, data: dict) -> None:
        event = operator_event(
            Action.RETENTION_APPLIED, actor, resource_type="audit_partition", resource_id="audit_events",
            outcome=outcome, data=policy_data | data,
        )  # fmt: skip
        await write_event(settings, event)

    conn = await connect(settings.require_database_url())
    try:
        today = await retention.today_utc(conn)
        done = await retention.apply(
            conn, policy.due(today), today, signer, command="retention apply", actor=actor.name
        )
    except retention.RetentionFailed as failure:
        await record("failure", failure.done.as_json() | {"error": repr(failure.error)})
        raise
    finally:
        await conn.close()
    log.info("retention_applied", partitions=done.partitions, rows_dropped=done.rows_dropped,
             rows_archived=done.rows_archived)  # fmt: skip
    await record("success", done.as_json())
    return done


async def import_sample(settings: Settings) -> None:
    conn = await connect(settings.require_database_url())
    try:
        written = await import_sample_catalog(conn)
    finally:
        await conn.close()
    if written:
        log.info("sample_catalog_imported", versions=written, file=str(SAMPLE_CATALOG))


async def serve_until_stopped(
    settings: Settings, on_ready: Callable[[], None] = lambda: None, *, sample_catalog: bool = False
) -> int:
    """Runs the parts until SIGINT/SIGTERM or a fatal error of the consumer; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    applied = await migrate_database(
        settings.require_database_url(), settings.schema_dir, months_ahead=settings.partition_months_ahead
    )
    log.info(
        "service_ready",
        # Masked by the log processor too; said here so that no reader of this line wonders.
        database_url=mask_url(settings.require_database_url()),
        redis_url=mask_url(settings.require_redis_url()),
        migrations_applied=[m.version for m in applied],
    )
    if sample_catalog:
        await import_sample(settings)
    on_ready()
    signer = load_signer(settings.audit_signing_key_file)
    http = InProcessServer(uvicorn_config(settings, create_app(settings, signer)))
    consumer = AuditConsumer(settings, signer)
    async with consumer.app:
        http_task = asyncio.create_task(http.serve())
        log.info(
            "service_running",
            consumer=settings.consumer_name,
            http_port=settings.http_port,
            metrics_port=settings.metrics_port,
        )
        consumer_failed = asyncio.create_task(consumer.failed.wait())
        consumer_failed.add_done_callback(lambda _: stop.set())
        retention_task = asyncio.create_task(keep_applying_retention(settings, signer, stop))
        await keep_partitions_ahead(settings, stop)
        await retention_task
        consumer_failed.cancel()
        log.info("service_stopping")
        # The API first (no new writes accepted; the viewer's live tails end), then the consumer
        # (its batch in hand finishes).
        end_live_tails()
        http.should_exit = True
        await http_task
    return 1 if consumer.failed.is_set() else 0


def publish_state(given: Settings, settings: Settings, stack: contextlib.ExitStack) -> None:
    """On embedded servers: the state file the other commands find them by, removed on exit."""
    if not embedded(given):
        return
    state = this_process(
        database_url=settings.require_database_url(),
        redis_url=settings.require_redis_url(),
        http_port=settings.http_port,
        metrics_port=settings.metrics_port,
        audit_signing_key_file=str(settings.audit_signing_key_file) if settings.audit_signing_key_file else None,
    )
    path = write_state(settings.data_dir, state)
    stack.callback(remove_state, settings.data_dir, state.pid)
    log.info("run_state_written", path=str(path))


def run(settings: Settings, *, sample_catalog: bool = True) -> int:
    """`sample_catalog`: import the sample catalog into an empty catalog, on embedded defaults
    only (never into servers someone else gave)."""
    given = settings
    with contextlib.ExitStack() as stack:
        settings = start_embedded_servers(settings, stack)
        start_metrics_server(settings.metrics_port)
        code = asyncio.run(
            serve_until_stopped(
                settings,
                lambda: publish_state(given, settings, stack),
                sample_catalog=sample_catalog and given.database_url is None and given.redis_url is None,
            )
        )
    log.info("service_stopped", exit_code=code)
    return code
