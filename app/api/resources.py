"""What the API's handlers share, created once per process by the app's lifespan."""

from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from app.audit.integrity.checked_chain import CheckedChain
from app.audit.integrity.keys import Verifier
from app.audit.writer import AuditWriter
from app.catalog.embedding import EmbedderLoader
from app.catalog.text_index import TextIndexCache
from app.core.read_replicas import ReadRouter
from app.core.redis_client import RedisClient
from app.core.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    # SQLAlchemy for audit queries built from filters; asyncpg (`pool`) for the catalog (vectors)
    # and for audit writes when Redis is down.
    engine: AsyncEngine
    pool: asyncpg.Pool
    redis: RedisClient
    writer: AuditWriter
    embedder_loader: EmbedderLoader
    # Where audit queries and playbook searches read: a read replica that keeps up, else the
    # primary (`engine`/`pool` above). Writes never go through it.
    reads: ReadRouter
    # The playbook search's term statistics, reloaded when the catalog changes.
    text_index: TextIndexCache
    # The public key of the signing key: what verification checks against (None: none configured).
    verifier: Verifier | None = None
    # The seal chain as the viewer's integrity statuses last checked it, kept per process.
    checked_chain: CheckedChain = field(default_factory=CheckedChain)


def resources(request: Request) -> Resources:
    found: Resources = request.app.state.resources
    return found
